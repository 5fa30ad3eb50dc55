#!/usr/bin/env bash
# conll: distil through the assistant chain $TA_PATH (default 80,90S). Settings: common.sh (EncT5 over bert_scripts/common.sh).
source "$(dirname "$0")/common.sh" && maxidisc conll "$@"
