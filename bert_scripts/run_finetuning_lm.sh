#!/usr/bin/env bash
# lm (FAMILY=decoder): continue pretraining the language model on the corpus. Settings: common.sh.
source "$(dirname "$0")/common.sh" && finetune lm "$@"
