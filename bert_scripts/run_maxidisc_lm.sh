#!/usr/bin/env bash
# lm (FAMILY=decoder): distil through the assistant chain $TA_PATH (default 80,90S). Settings: common.sh.
source "$(dirname "$0")/common.sh" && maxidisc lm "$@"
