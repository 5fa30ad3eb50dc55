#!/usr/bin/env bash
# The GPU check: fp32/bf16/fp16 fine-tuning and MiniDisc sandwich steps of a BERT-base-sized and a
# ~1.1 B-parameter decoder (random init) on one GPU, then, with two or more GPUs, the same sharded
# with FSDP2 (--fsdp). Prints one JSON line per run: step time, peak GPU memory, and whether the first
# loss agrees with fp32's within 5%. Under 8 minutes on one recent GPU. Exit status 1 if any disagrees.
#
#   bash benchmarks/gpu_check.sh            # PYTHON to choose the interpreter [.venv/bin/python, else python3]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA device visible')"
gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
status=0
echo "== one GPU" >&2
"$PYTHON" benchmarks/gpu_check.py --device cuda --steps 5 || status=1
if (( gpus >= 2 )); then
  echo "== FSDP2 over $gpus GPUs" >&2
  "$PYTHON" -m torch.distributed.run --nproc_per_node "$gpus" benchmarks/gpu_check.py --device cuda --steps 5 --fsdp ||
    status=1
fi
exit $status
