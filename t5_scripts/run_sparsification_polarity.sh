#!/usr/bin/env bash
# polarity: sparsify the fine-tuned teacher into $OUTPUT_ROOT/polarity/sparsify. Settings: common.sh (EncT5 over bert_scripts/common.sh).
source "$(dirname "$0")/common.sh" && sparsify polarity "$@"
