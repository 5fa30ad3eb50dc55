#!/usr/bin/env bash
# lm (FAMILY=decoder): distil a $STUDENT student (default 90S) with the per-token KL. Settings: common.sh.
source "$(dirname "$0")/common.sh" && distil lm "$@"
