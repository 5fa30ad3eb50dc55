#!/usr/bin/env bash
# sst2: fine-tune the teacher from $MODEL into $OUTPUT_ROOT/sst2/finetune. Settings: common.sh (EncT5 over bert_scripts/common.sh).
source "$(dirname "$0")/common.sh" && finetune sst2 "$@"
