#!/usr/bin/env bash
# mrpc: sparsify the fine-tuned teacher into $OUTPUT_ROOT/mrpc/sparsify. Settings: common.sh (EncT5 over bert_scripts/common.sh).
source "$(dirname "$0")/common.sh" && sparsify mrpc "$@"
