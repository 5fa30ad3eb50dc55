#!/usr/bin/env bash
# cola: sparsify the fine-tuned teacher into $OUTPUT_ROOT/cola/sparsify. Settings: common.sh (EncT5 over bert_scripts/common.sh).
source "$(dirname "$0")/common.sh" && sparsify cola "$@"
