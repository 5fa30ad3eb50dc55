#!/usr/bin/env bash
# sst2: sparsify the fine-tuned teacher into $OUTPUT_ROOT/sst2/sparsify. Settings: common.sh (EncT5 over bert_scripts/common.sh).
source "$(dirname "$0")/common.sh" && sparsify sst2 "$@"
