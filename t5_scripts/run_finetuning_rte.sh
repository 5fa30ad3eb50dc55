#!/usr/bin/env bash
# rte: fine-tune the teacher from $MODEL into $OUTPUT_ROOT/rte/finetune. Settings: common.sh (EncT5 over bert_scripts/common.sh).
source "$(dirname "$0")/common.sh" && finetune rte "$@"
