#!/usr/bin/env bash
# wnli: sparsify the fine-tuned teacher into $OUTPUT_ROOT/wnli/sparsify. Settings: common.sh.
source "$(dirname "$0")/common.sh" && sparsify wnli "$@"
