#!/usr/bin/env bash
# lm (FAMILY=decoder): choose the assistant and distil a ${TARGET}S student (default 90S). Settings: common.sh.
source "$(dirname "$0")/common.sh" && minidisc lm "$@"
