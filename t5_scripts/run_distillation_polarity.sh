#!/usr/bin/env bash
# polarity: distil the sparsified teacher into a $STUDENT student (default 90S). Settings: common.sh (EncT5 over bert_scripts/common.sh).
source "$(dirname "$0")/common.sh" && distil polarity "$@"
