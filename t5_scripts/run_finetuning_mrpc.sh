#!/usr/bin/env bash
# mrpc: fine-tune the teacher from $MODEL into $OUTPUT_ROOT/mrpc/finetune. Settings: common.sh (EncT5 over bert_scripts/common.sh).
source "$(dirname "$0")/common.sh" && finetune mrpc "$@"
