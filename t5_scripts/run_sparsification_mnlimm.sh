#!/usr/bin/env bash
# mnlimm: sparsify the fine-tuned teacher into $OUTPUT_ROOT/mnlimm/sparsify. Settings: common.sh (EncT5 over bert_scripts/common.sh).
source "$(dirname "$0")/common.sh" && sparsify mnlimm "$@"
