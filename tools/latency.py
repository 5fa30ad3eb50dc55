"""What the export check and the report time with: the batches (random or a task's first dev examples), the
clock (interleaved medians), and the timing setup recorded beside the numbers."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from utils.errors import UserError

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class BatchError(UserError):
    """A task split that gives no batch to time; one line."""


def spin_policy() -> dict:
    """How idle intra-op threads wait, the same for both runtimes: ``{"omp_wait_policy", "allow_spinning"}``.

    PyTorch's OpenMP threads follow ``OMP_WAIT_POLICY``, read once when torch loads; ONNX Runtime's are
    told to spin (``session.intra_op.allow_spinning``) only when OpenMP's do too (``ACTIVE``, or unset:
    libgomp then spins a while before sleeping). Under ``PASSIVE`` neither spins, which on a CPU shared
    with other processes keeps the two from starving each other's cores.
    """
    policy = os.environ.get("OMP_WAIT_POLICY", "").upper() or "unset"
    return {"omp_wait_policy": policy, "allow_spinning": policy != "PASSIVE"}


def timing_setup(threads: int) -> dict:
    """What both runtimes were timed with (recorded beside the numbers and on the model card)."""
    return {"threads": {"pytorch": threads, "onnxruntime": threads}, **spin_policy()}


def describe_setup(setup: dict) -> str:
    """:func:`timing_setup` in words, for the model card and the summary."""
    threads = setup["threads"]
    return (f"PyTorch {threads['pytorch']} and ONNX Runtime {threads['onnxruntime']} intra-op threads, "
            f"OMP_WAIT_POLICY {setup['omp_wait_policy']} and ONNX Runtime spinning "
            f"{'on' if setup['allow_spinning'] else 'off'}")


def hardware() -> str:
    """The CPU's model name and the threads torch uses."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {torch.get_num_threads()} threads"


def random_batches(vocab_size: int, batch_size: int, length: int, count: int = 1, seed: int = 0) -> list[dict]:
    """``count`` batches of random tokens; every second row is padded from 2/3 of ``length`` on."""
    generator, batches = torch.Generator().manual_seed(seed), []
    for _ in range(count):
        input_ids = torch.randint(5, vocab_size, (batch_size, length), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[1::2, max(1, 2 * length // 3):] = 0
        batches.append({"input_ids": input_ids * attention_mask, "attention_mask": attention_mask,
                        "token_type_ids": torch.zeros_like(input_ids)})
    return batches


def random_batch(vocab_size: int, batch_size: int, seq_length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fixed random batch: ``input_ids`` ``[batch, seq]`` in ``[1, vocab)``, all-ones attention mask."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, vocab_size, (batch_size, seq_length), generator=g)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "token_type_ids": torch.zeros_like(input_ids)}


def dev_batches(task_name: str, data_dir: str, tokenizer, max_length: int, batch_size: int,
                num_batches: int) -> list[dict[str, torch.Tensor]]:
    """The first ``num_batches`` dev batches of a task, in file order, each padded to its longest example."""
    from data.pipelines import collate, encode_dataset
    from data.readers import read_examples
    from data.tasks import get_task

    task = get_task(task_name)
    examples = read_examples(task, data_dir, "dev")[: batch_size * num_batches]
    if not examples:
        raise BatchError(f"the dev split of {task_name} in {data_dir} is empty")
    dataset = encode_dataset(task, examples, tokenizer, max_length)
    features = [dataset[i] for i in range(len(dataset))]
    batches = []
    for start in range(0, len(features), batch_size):
        batch = collate(features[start:start + batch_size], tokenizer.pad_token_id)
        batches.append({key: batch[key] for key in INPUT_KEYS})
    return batches[:num_batches]


def measure_latency(models: Mapping[str, torch.nn.Module], batches: Sequence[Mapping[str, torch.Tensor]],
                    warmup: int = 2, repeats: int = 10) -> dict[str, float]:
    """Median milliseconds per batch of each model's forward pass over ``batches``.

    Every repeat times one pass of each model in turn (interleaved, so a slow spell from other
    processes falls on all of them); ``warmup`` untimed passes come first.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    timings: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model.eval()
    with torch.inference_mode():
        for repeat in range(warmup + repeats):
            for name, model in models.items():
                start = time.perf_counter()
                for batch in batches:
                    model(**batch)
                if repeat >= warmup:
                    timings[name].append((time.perf_counter() - start) * 1000 / len(batches))
    return {name: statistics.median(values) for name, values in timings.items()}
