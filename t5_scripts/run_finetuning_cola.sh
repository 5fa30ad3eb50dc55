#!/usr/bin/env bash
# cola: fine-tune the teacher from $MODEL into $OUTPUT_ROOT/cola/finetune. Settings: common.sh (EncT5 over bert_scripts/common.sh).
source "$(dirname "$0")/common.sh" && finetune cola "$@"
