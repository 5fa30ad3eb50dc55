# EncT5 settings of the per-task scripts; sourced, never run. Everything else, and the meaning of
# every environment variable, is bert_scripts/common.sh's:
#
#   t5_scripts/run_{finetuning,sparsification,distillation,maxidisc,minidisc}_{task}.sh [FLAGS...]
#
# The reference's t5_scripts (spec: MRPC and QQP on T5-3B as EncT5): batch 32, learning rate 2e-4
# (MRPC) / 1e-4 (QQP); importance scored with eval batch 16; everything else as for BERT. Other
# tasks keep BERT's per-task settings. MODEL defaults to t5-3b (the paper's billion-parameter run;
# MODEL=t5-small or a folder for a small one); runs go to OUTPUT_ROOT [REPO/outputs/t5].

OUTPUT_ROOT="${OUTPUT_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/outputs/t5}"
SCRIPTS_NAME=t5_scripts

# family_settings TASK: called by task_settings after BERT's per-task choices.
family_settings() {
  MODEL_TYPE="${MODEL_TYPE/sparsebert/sparseenct5}" DATA_TYPE="${DATA_TYPE/bert/enct5}" BASE_MODEL=t5-3b
  IMPORTANCE_ARGS=(--per_device_eval_batch_size 16)
  case "$1" in
    mrpc) BATCH=32 LR=2e-4 ;;
    qqp) BATCH=32 LR=1e-4 ;;
  esac
}

source "$(dirname "${BASH_SOURCE[0]}")/../bert_scripts/common.sh"
