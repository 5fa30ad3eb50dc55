#!/usr/bin/env bash
# mnlimm: fine-tune the teacher from $MODEL into $OUTPUT_ROOT/mnlimm/finetune. Settings: common.sh (EncT5 over bert_scripts/common.sh).
source "$(dirname "$0")/common.sh" && finetune mnlimm "$@"
