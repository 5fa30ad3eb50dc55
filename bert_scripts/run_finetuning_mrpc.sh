#!/usr/bin/env bash
# mrpc: fine-tune the teacher from $MODEL into $OUTPUT_ROOT/mrpc/finetune. Settings: common.sh.
source "$(dirname "$0")/common.sh" && finetune mrpc "$@"
