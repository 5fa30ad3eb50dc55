"""Every family's numbers on a fixed seed, recorded so that a refactor of the model layer or the engine can
prove it changed nothing.

:func:`compute` builds tiny models of one family (``bert``, ``enct5``: gated-GELU T5, ``llama``: grouped-query
heads as whole KV groups, ``qwen3``: QK-norm, query heads within groups) and runs the five scripts on a tiny
SST-2 task, all on one thread from fixed seeds, and returns what they produce: task-model outputs (plain,
masked, reordered, sliced, densified, layer-dropped; cls and ner), importance scores, the sparsity map and
the reordered weights, and the losses and dev scores of short fine-tuning, distillation, MaxiDisc and
MiniDisc runs. Large tensors are recorded as the SHA-256 of their bytes, small ones as values, so the
comparison is bit for bit. ``tests/test_reference_numbers.py`` compares :func:`compute` with the recorded
files ``tests/fixtures/reference_{family}.json``. BERT's was recorded before the model layer became one
prunable core shared by every family, the others before the engine's redesign.

Record again (only when a change of a family's numbers is intended, and say why in the commit)::

    python -m tests.reference_numbers --family llama --write
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tests.helpers import (
    distill_args,
    finetune_args,
    padded_batch,
    read_jsonl,
    save_tiny_decoder_pretrained,
    save_tiny_t5_pretrained,
    save_tiny_teacher,
    schedule_args,
    sparsify_args,
    tiny_model,
    write_sst2_task,
)

FIXTURES = Path(__file__).parent / "fixtures"
# Keys of metrics.jsonl and results.json that depend on the clock or the folder, not on the numbers.
UNTIMED = ("time", "second", "per_sec", "path", "dir", "date", "elapsed", "key")


@dataclass(frozen=True)
class Family:
    """How to build a family's tiny models and a user's pretrained checkpoint of it."""

    prefix: str  # the model types are {prefix}_cls and {prefix}_ner
    overrides: dict = field(default_factory=dict)  # config overrides of its tiny models
    pretrained: Callable[[Path], Path] = None  # saves a checkpoint the scripts start from
    sparsify_options: tuple[str, ...] = ()
    # BERT's record reorders by random permutations; a grouped-query row must keep its groups whole, so the
    # other families reorder by the order their blocks give to random scores.
    permutations: bool = False


FAMILIES = {
    "bert": Family("sparsebert", pretrained=lambda d: save_tiny_teacher(d, seed=4), permutations=True),
    "enct5": Family("sparseenct5", {"gated": True}, lambda d: save_tiny_t5_pretrained(d, gated=True, seed=4)),
    "llama": Family("sparsedecoder", {"family": "llama"}, lambda d: save_tiny_decoder_pretrained(d, "llama", seed=4)),
    "qwen3": Family("sparsedecoder", {"family": "qwen3", "head_unit": "query"},
                    lambda d: save_tiny_decoder_pretrained(d, "qwen3", seed=4), ("--head_unit", "query")),
}


def record_path(family: str) -> Path:
    return FIXTURES / f"reference_{family}.json"


def digest(tensor: torch.Tensor) -> str:
    """SHA-256 of the tensor's bytes (contiguous, on the CPU): equal digests mean bitwise-equal tensors."""
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _outputs(model, batch, **masks) -> dict:
    model.eval()
    with torch.no_grad():
        out = model(**batch, **masks)
    return {"logits": out.logits.flatten().tolist(),
            "hidden_states": [digest(h) for h in out.hidden_states]}


def _orders(model, family: Family, generator: torch.Generator) -> dict:
    orders = {}
    for kind, (rows, entries) in model.mask_shape().items():
        if family.permutations:
            orders[f"{kind}_order"] = torch.stack([torch.randperm(entries, generator=generator) for _ in range(rows)])
        else:
            orders[f"{kind}_order"] = model.unit_orders(kind, torch.rand(rows, entries, generator=generator))
    return orders


def _model_numbers(family: Family) -> dict:
    generator = torch.Generator().manual_seed(11)
    batch = padded_batch(generator, 3, 10, {1: 6, 2: 3})
    result = {}
    for model_type, labels in ((f"{family.prefix}_cls", 3), (f"{family.prefix}_ner", 5)):
        model = tiny_model(model_type, labels, levels=(0, 30, 60, 90), seed=2, **family.overrides)
        entry = {"full": _outputs(model, batch)}
        (head_rows, heads), (neuron_rows, neurons) = model.mask_shape()["head"], model.mask_shape()["neuron"]
        masks = {"head_mask": (torch.rand(head_rows, heads, generator=generator) > 0.4).float(),
                 "neuron_mask": torch.rand(neuron_rows, neurons, generator=generator)}
        entry["masked"] = _outputs(model, batch, **masks)
        model.reorder(**_orders(model, family, generator))
        entry["reordered"] = _outputs(model, batch)
        model.sparsify(60)
        entry["sliced_60"] = _outputs(model, batch)
        entry["sliced_60_counts"] = model.count_parameters()
        entry["sliced_60_cost"] = model.training_cost(10)
        model.densify()
        entry["densified_60"] = _outputs(model, batch)
        entry["densified_60_weights"] = {name: digest(p) for name, p in model.state_dict().items()}
        model.sparsify(90)
        entry["sliced_90"] = _outputs(model, batch)
        entry["widths_90"] = model.kept_widths()
        entry["sliced_90_cost"] = model.training_cost(10)
        model.drop_layers(2)
        entry["dropped_2"] = _outputs(model, batch)
        entry["dropped_2_counts"] = model.count_parameters()
        result[model_type] = entry
    return result


def _numbers(record, root: Path):
    """``record`` without its clock-dependent keys, and with ``root`` written ``<root>`` in its strings."""
    if isinstance(record, dict):
        return {key: _numbers(value, root) for key, value in record.items()
                if not any(word in key for word in UNTIMED)}
    if isinstance(record, list):
        return [_numbers(value, root) for value in record]
    if isinstance(record, str):
        return record.replace(str(root), "<root>")
    return record


def _run_numbers(family: Family, root: Path) -> dict:
    import run_distillation
    import run_finetuning
    import run_maxidisc
    import run_minidisc
    import run_sparsification

    task = write_sst2_task(root / "data", n_train=24, n_dev=8, n_test=4)
    plain = family.pretrained(root / "plain")
    result = {}
    run_finetuning.main(finetune_args(plain, task, root / "ft", "--num_train_epochs", "1"))
    result["finetune"] = _numbers(read_jsonl(root / "ft" / "metrics.jsonl"), root)
    run_sparsification.main(sparsify_args(root / "ft" / "best", task, root / "sp", *family.sparsify_options,
                                          sparsities="10,30,50,70,90"))
    sparse = root / "sp" / "model"
    config = json.loads((sparse / "config.json").read_text())
    result["sparsity_map"] = config["sparsity_map"]
    result["importance"] = json.loads((sparse / "importance.json").read_text())
    from safetensors.torch import load_file

    result["sparsified_weights"] = {k: digest(v) for k, v in sorted(load_file(sparse / "model.safetensors").items())}
    run_distillation.main(distill_args(sparse, task, root / "kd", "70S", "--seed", "7"))
    result["distill_70S"] = _numbers(read_jsonl(root / "kd" / "metrics.jsonl"), root)
    run_distillation.main(distill_args(sparse, task, root / "kd2", "2L", "--seed", "7"))
    result["distill_2L"] = _numbers(read_jsonl(root / "kd2" / "metrics.jsonl"), root)
    run_maxidisc.main(schedule_args(sparse, task, root / "maxi", "--layer_or_sparsity_path", "50,90S"))
    result["maxidisc"] = _numbers(json.loads((root / "maxi" / "results.json").read_text()), root)
    run_minidisc.main(schedule_args(sparse, task, root / "mini", "--lam", "0.05", "--target_sparsity", "90"))
    result["minidisc"] = _numbers(json.loads((root / "mini" / "schedule.json").read_text()), root)
    result["minidisc_sandwich"] = _numbers(read_jsonl(root / "mini" / "iter_1" / "metrics.jsonl"), root)
    return result


def compute(family: str = "bert") -> dict:
    """Every recorded number of ``family``, computed by the current code (one thread; 10 to 30 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as folder:
            return {"models": _model_numbers(FAMILIES[family]), "runs": _run_numbers(FAMILIES[family], Path(folder))}
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="bert")
    parser.add_argument("--write", action="store_true", help="write tests/fixtures/reference_{family}.json")
    options = parser.parse_args()
    text = json.dumps(compute(options.family), indent=1, sort_keys=True) + "\n"
    if options.write:
        record_path(options.family).write_text(text)
        print(f"wrote {record_path(options.family)}")
    else:
        print(text)
