#!/usr/bin/env bash
# conll: sparsify the fine-tuned teacher into $OUTPUT_ROOT/conll/sparsify. Settings: common.sh (EncT5 over bert_scripts/common.sh).
source "$(dirname "$0")/common.sh" && sparsify conll "$@"
