#!/usr/bin/env bash
# mnli: sparsify the fine-tuned teacher into $OUTPUT_ROOT/mnli/sparsify. Settings: common.sh (EncT5 over bert_scripts/common.sh).
source "$(dirname "$0")/common.sh" && sparsify mnli "$@"
