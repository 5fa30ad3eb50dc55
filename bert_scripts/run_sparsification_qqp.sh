#!/usr/bin/env bash
# qqp: sparsify the fine-tuned teacher into $OUTPUT_ROOT/qqp/sparsify. Settings: common.sh.
source "$(dirname "$0")/common.sh" && sparsify qqp "$@"
