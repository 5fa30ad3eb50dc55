# Shared settings and stage functions of the per-task scripts; sourced, never run.
#
#   bert_scripts/run_{finetuning,sparsification,distillation,maxidisc,minidisc}_{task}.sh [FLAGS...]
#
# t5_scripts/common.sh sources this file too, after defining family_settings (the EncT5 model type,
# base model and the reference's T5 hyperparameters) and SCRIPTS_NAME=t5_scripts.
#
# Each per-task script is one call into a function below. FLAGS are appended last, so any of
# them overrides a default here (argparse keeps the last value of a repeated flag).
#
# Environment (defaults in brackets):
#   PYTHON        interpreter [the repository's .venv/bin/python if present, else python3]
#   DATA_DIR      prepared data root, holding {task}/ [REPO/datasets]
#   OUTPUT_ROOT   runs go to OUTPUT_ROOT/{task}/{stage} [REPO/outputs]
#   MODEL         pretrained model fine-tuned by run_finetuning_* [bert-base-uncased; conll: bert-base-cased]
#   FAMILY        decoder: MODEL is a decoder LLM (Llama, Mistral, Qwen2/3, Phi-3): sparsedecoder_* model types
#                 (task lm: sparsedecoder_lm, the only family it takes) [bert]
#   TEACHER_PATH  teacher of the stage [the previous stage's output, see below]
#   STUDENT       run_distillation_*: student spec, kL or sS [90S]
#   TA_PATH       run_maxidisc_*: assistant chain ending in the student [80,90S]
#   TARGET        run_minidisc_*: target sparsity of the student [90]
#   OBJECTIVE     distillation objective, hidden_kd or kd [the scripts' default, hidden_kd]
#   SUFFIX        free-form label recorded as --model_suffix [none]
#   DRY_RUN=1     print the python command instead of running it
#   OMP_WAIT_POLICY  [PASSIVE]; OMP_NUM_THREADS limits torch's CPU threads
#
# The stages chain through OUTPUT_ROOT/{task}/:
#   finetune/best  ->  sparsify/model  ->  distil_{STUDENT}/, maxidisc_{TA_PATH}/, minidisc_{TARGET}S/

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPTS_NAME="${SCRIPTS_NAME:-bert_scripts}"
PYTHON_FROM_ENV="${PYTHON:+1}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then PYTHON="$REPO_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
DATA_DIR="${DATA_DIR:-$REPO_ROOT/datasets}"
OUTPUT_ROOT="${OUTPUT_ROOT:-$REPO_ROOT/outputs}"
# OpenMP threads that sleep instead of spinning between parallel regions: on a CPU shared with
# other jobs, spinning threads starve each other (measured on 2 busy cores, MiniLM 16×48
# forward+backward: 7-16 s/step spinning, 2.9 s/step passive).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

die() { echo "error: $*" >&2; exit 1; }
announce() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Hyperparameters shared by every task and stage: the reference's bert_scripts (spec §1.3/§4.4):
# max length 128, eval batch 32, weight decay 0.01, patience 5 epochs, warmup 0.1, gradient
# clipping 5.0, seed 776; 10 training epochs (train_args' argument).
SHARED_ARGS=(--max_length 128 --per_device_eval_batch_size 32)
IMPORTANCE_ARGS=()
TRAIN_ARGS=(--weight_decay 0.01 --num_patience_epochs 5 --warmup_proportion 0.1 --max_grad_norm 5.0 --seed 776)

# task_settings TASK: the per-task choices.
task_settings() {
  MODEL_TYPE=sparsebert_cls DATA_TYPE=bert_cls BASE_MODEL=bert-base-uncased
  SELECTION="" FT_EPOCHS=10 PREDICT=--do_infer
  case "$1" in
    # The reference's bert_scripts: MRPC, QQP and CoNLL-2003 (CoNLL fine-tuning: 3 epochs, cased BERT).
    mrpc) BATCH=16 LR=3e-5 LOG_INTERVAL=10 SELECTION=acc_and_f1 ;;
    qqp) BATCH=32 LR=2e-5 LOG_INTERVAL=3000 SELECTION=acc_and_f1 ;;
    conll) BATCH=32 LR=2e-5 LOG_INTERVAL=100 SELECTION=f1 FT_EPOCHS=3 PREDICT=--do_test
           MODEL_TYPE=sparsebert_ner DATA_TYPE=bert_ner BASE_MODEL=bert-base-cased ;;
    # The reference's teacher fine-tuning script for RTE (StarK).
    rte) BATCH=16 LR=3e-5 LOG_INTERVAL=10 ;;
    # Ours, by analogy (spec §4.4): small tasks like MRPC/RTE; large ones like QQP, evaluating
    # a few times per epoch (SST-2 ~2,100 steps/epoch, QNLI ~3,300, MNLI ~12,300).
    cola | stsb | wnli) BATCH=16 LR=3e-5 LOG_INTERVAL=10 ;;
    sst2) BATCH=32 LR=2e-5 LOG_INTERVAL=500 ;;
    qnli) BATCH=32 LR=2e-5 LOG_INTERVAL=1000 ;;
    mnli | mnlimm) BATCH=32 LR=2e-5 LOG_INTERVAL=3000 ;;
    # Ours: the offline Pang & Lee corpus (3,200 training sentences, test labels kept).
    polarity) BATCH=16 LR=3e-5 LOG_INTERVAL=50 PREDICT=--do_test ;;
    # Ours: a decoder LLM compressed as a language model on plain text (python -m data.prepare lm).
    lm) BATCH=8 LR=1e-4 LOG_INTERVAL=100 PREDICT=--do_test FT_EPOCHS=1
        [[ "${FAMILY:-bert}" == decoder ]] || die "task lm is for decoder LLMs: set FAMILY=decoder"
        MODEL_TYPE=sparsedecoder_lm DATA_TYPE=decoder_lm BASE_MODEL=HuggingFaceTB/SmolLM2-135M ;;
    *) die "unknown task '$1'" ;;
  esac
  if [[ "${FAMILY:-bert}" == decoder ]]; then
    MODEL_TYPE="${MODEL_TYPE/sparsebert/sparsedecoder}" DATA_TYPE="${DATA_TYPE/bert/decoder}"
  elif [[ "${FAMILY:-bert}" != bert ]]; then
    die "FAMILY=$FAMILY: expected bert or decoder (T5: use t5_scripts/)"
  fi
  if declare -F family_settings >/dev/null; then family_settings "$1"; fi
}

# task_args TASK: the data and training flags of TASK (into the array ARGS).
task_args() {
  task_settings "$1"
  ARGS=(--model_type "$MODEL_TYPE" --task_name "$1" --data_type "$DATA_TYPE" --data_dir "$DATA_DIR"
        "${SHARED_ARGS[@]}")
  if [[ -n "${SUFFIX:-}" ]]; then ARGS+=(--model_suffix "$SUFFIX"); fi
}

# train_args EPOCHS: the training flags of the task last set by task_args (appended to ARGS).
train_args() {
  ARGS+=("${TRAIN_ARGS[@]}" --num_train_epochs "$1" --per_device_train_batch_size "$BATCH"
         --learning_rate "$LR" --log_interval "$LOG_INTERVAL")
  if [[ -n "$SELECTION" ]]; then ARGS+=(--selection_metric "$SELECTION"); fi
}

# gives_flag FLAG ARGS...: whether the user's flags set FLAG (then its default is not checked).
gives_flag() {
  local flag=$1; shift
  local given
  for given in "$@"; do [[ "$given" == "$flag" || "$given" == "$flag="* ]] && return 0; done
  return 1
}

# need_teacher DIR WHAT HINT USER_FLAGS...: a clear error when the previous stage has not run.
need_teacher() {
  local dir=$1 what=$2 hint=$3; shift 3
  [[ "${DRY_RUN:-}" == 1 ]] || gives_flag --teacher_model_path "$@" || [[ -d "$dir" ]] ||
    die "no $what teacher at $dir: run $SCRIPTS_NAME/$hint first (or set TEACHER_PATH=DIR)"
}

# run_python SCRIPT ARGS...: run (or, with DRY_RUN=1, print) one entry script.
run_python() {
  local script=$1; shift
  if [[ "${DRY_RUN:-}" == 1 ]]; then
    printf '%q ' "$PYTHON" "$REPO_ROOT/$script" "$@"
    printf '\n'
    return 0
  fi
  announce "$script $*"
  "$PYTHON" "$REPO_ROOT/$script" "$@"
}

finetune() {
  local task=$1; shift
  task_args "$task"; train_args "$FT_EPOCHS"
  ARGS+=(--model_name_or_path "${MODEL:-$BASE_MODEL}"
         --output_dir "$OUTPUT_ROOT/$task/finetune" --do_train "$PREDICT")
  run_python run_finetuning.py "${ARGS[@]}" "$@"
}

sparsify() {
  local task=$1; shift
  local teacher="${TEACHER_PATH:-$OUTPUT_ROOT/$task/finetune/best}"
  need_teacher "$teacher" fine-tuned "run_finetuning_$task.sh" "$@"
  task_args "$task"
  run_python run_sparsification.py "${ARGS[@]}" "${IMPORTANCE_ARGS[@]}" --teacher_model_path "$teacher" \
    --output_dir "$OUTPUT_ROOT/$task/sparsify" "$@"
}

# distil_stage TASK SCRIPT FLAG VALUE RUN_NAME USER_FLAGS...: a distillation-type stage from the
# sparsified teacher.
distil_stage() {
  local task=$1 script=$2 flag=$3 value=$4 name=$5; shift 5
  local teacher="${TEACHER_PATH:-$OUTPUT_ROOT/$task/sparsify/model}"
  need_teacher "$teacher" sparsified "run_sparsification_$task.sh" "$@"
  task_args "$task"; train_args 10
  if [[ -n "${OBJECTIVE:-}" ]]; then ARGS+=(--objective "$OBJECTIVE"); fi
  run_python "$script" "${ARGS[@]}" --teacher_model_path "$teacher" "$flag" "$value" \
    --output_dir "$OUTPUT_ROOT/$task/$name" --do_train "$PREDICT" "$@"
}

distil() {
  local student="${STUDENT:-90S}"
  distil_stage "$1" run_distillation.py --layer_or_sparsity "$student" "distil_$student" "${@:2}"
}

maxidisc() {
  local path="${TA_PATH:-80,90S}"
  distil_stage "$1" run_maxidisc.py --layer_or_sparsity_path "$path" "maxidisc_${path//;/+}" "${@:2}"
}

minidisc() {
  local target="${TARGET:-90}"
  distil_stage "$1" run_minidisc.py --target_sparsity "$target" "minidisc_${target}S" "${@:2}"
}

# ensure_venv REQUIREMENTS: create REPO/.venv if missing and install REQUIREMENTS into it when the
# requirement files changed since the last install; sets PYTHON. Skipped when PYTHON was given.
ensure_venv() {
  local venv="$REPO_ROOT/.venv" requirements="$REPO_ROOT/$1"
  if [[ -n "$PYTHON_FROM_ENV" ]]; then
    announce "PYTHON=$PYTHON is set: using it as it is (no virtualenv set-up)"
    return 0
  fi
  command -v python3 >/dev/null || die "python3 not found: install Python 3.10 or newer"
  if [[ ! -x "$venv/bin/python" ]]; then
    announce "creating the virtualenv $venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (Debian/Ubuntu: apt-get install python3-venv)"
  fi
  # A stamp per requirements file holds the digest of all of them at its last install; the dev
  # file includes requirements.txt, so its stamp covers both.
  local stamp="$venv/.installed-$(basename "$1")" wanted
  wanted="$(cat "$REPO_ROOT"/requirements*.txt | sha256sum | cut -d' ' -f1)"
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$wanted" &&
        "$(cat "$venv/.installed-requirements-dev.txt" 2>/dev/null)" != "$wanted" ]]; then
    announce "installing $1 into $venv (first run: a few minutes)"
    "$venv/bin/python" -m pip install -q -r "$requirements" ||
      die "pip install -r $1 failed: is the package index (PyPI) reachable?"
    echo "$wanted" >"$stamp"
  fi
  PYTHON="$venv/bin/python"
}
