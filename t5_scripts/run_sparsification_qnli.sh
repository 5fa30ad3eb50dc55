#!/usr/bin/env bash
# qnli: sparsify the fine-tuned teacher into $OUTPUT_ROOT/qnli/sparsify. Settings: common.sh (EncT5 over bert_scripts/common.sh).
source "$(dirname "$0")/common.sh" && sparsify qnli "$@"
