"""benchmarks/gpu_check.py, the script a CUDA machine runs, smoke-tested on the CPU with tiny models: every
model, step kind and CPU precision runs, and bf16 agrees with fp32."""

import json
import os
import subprocess
import sys

from tests.helpers import REPO_ROOT


def test_gpu_check_runs_on_the_cpu_with_tiny_models():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
                           "--steps", "1", "--seq_len", "16"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert {(r["model"], r["step"], r["precision"]) for r in rows} == {
        (m, s, p) for m in ("bert-tiny", "llama-tiny") for s in ("fine-tuning", "sandwich 0/50/90S")
        for p in ("fp32", "bf16")}
    assert all(r["agrees"] for r in rows)


def test_gpu_check_refuses_fsdp_without_several_processes():
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
                           "--fsdp"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--fsdp needs several processes" in done.stderr
