#!/usr/bin/env bash
# qqp: sparsify the fine-tuned teacher into $OUTPUT_ROOT/qqp/sparsify. Settings: common.sh (EncT5 over bert_scripts/common.sh).
source "$(dirname "$0")/common.sh" && sparsify qqp "$@"
