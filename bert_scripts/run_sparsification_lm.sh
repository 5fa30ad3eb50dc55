#!/usr/bin/env bash
# lm (FAMILY=decoder): score importance through the language-model loss and write the sparsity map. Settings: common.sh.
source "$(dirname "$0")/common.sh" && sparsify lm "$@"
