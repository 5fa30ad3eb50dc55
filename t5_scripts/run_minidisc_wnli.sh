#!/usr/bin/env bash
# wnli: choose the assistant and distil a ${TARGET}S student (default 90S). Settings: common.sh (EncT5 over bert_scripts/common.sh).
source "$(dirname "$0")/common.sh" && minidisc wnli "$@"
