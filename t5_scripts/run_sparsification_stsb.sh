#!/usr/bin/env bash
# stsb: sparsify the fine-tuned teacher into $OUTPUT_ROOT/stsb/sparsify. Settings: common.sh (EncT5 over bert_scripts/common.sh).
source "$(dirname "$0")/common.sh" && sparsify stsb "$@"
