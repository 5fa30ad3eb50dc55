#!/usr/bin/env bash
# rte: sparsify the fine-tuned teacher into $OUTPUT_ROOT/rte/sparsify. Settings: common.sh (EncT5 over bert_scripts/common.sh).
source "$(dirname "$0")/common.sh" && sparsify rte "$@"
