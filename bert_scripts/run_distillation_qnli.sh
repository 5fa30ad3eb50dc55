#!/usr/bin/env bash
# qnli: distil the sparsified teacher into a $STUDENT student (default 90S). Settings: common.sh.
source "$(dirname "$0")/common.sh" && distil qnli "$@"
