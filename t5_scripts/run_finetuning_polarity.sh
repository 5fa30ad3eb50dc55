#!/usr/bin/env bash
# polarity: fine-tune the teacher from $MODEL into $OUTPUT_ROOT/polarity/finetune. Settings: common.sh (EncT5 over bert_scripts/common.sh).
source "$(dirname "$0")/common.sh" && finetune polarity "$@"
