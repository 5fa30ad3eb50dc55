#!/usr/bin/env bash
# wnli: sparsify the fine-tuned teacher into $OUTPUT_ROOT/wnli/sparsify. Settings: common.sh (EncT5 over bert_scripts/common.sh).
source "$(dirname "$0")/common.sh" && sparsify wnli "$@"
