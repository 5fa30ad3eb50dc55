"""BERT's numbers on a fixed seed, recorded so that a refactor of the model layer can prove it changed nothing.

:func:`compute` builds tiny BERT models and runs the five scripts on a tiny SST-2 task, all on one
thread from fixed seeds, and returns what they produce: task-model outputs (plain, masked, reordered,
sliced, densified, layer-dropped; cls and ner), importance scores, the sparsity map and the reordered
weights, and the losses and dev scores of short fine-tuning, distillation, MaxiDisc and MiniDisc runs.
Large tensors are recorded as the SHA-256 of their bytes, small ones as values, so the comparison is
bit for bit. ``tests/test_bert_reference.py`` compares :func:`compute` with the recorded file.

Record again (only when a change of BERT's numbers is intended, and say why in the commit)::

    python -m tests.bert_reference --write
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import torch

from tests.helpers import (
    distill_args,
    finetune_args,
    padded_batch,
    read_jsonl,
    save_tiny_teacher,
    schedule_args,
    sparsify_args,
    tiny_model,
    write_sst2_task,
)

RECORD = Path(__file__).parent / "fixtures" / "bert_reference.json"
# Keys of metrics.jsonl and results.json that depend on the clock or the folder, not on the numbers.
UNTIMED = ("time", "second", "per_sec", "path", "dir", "date", "elapsed", "key")


def digest(tensor: torch.Tensor) -> str:
    """SHA-256 of the tensor's bytes (contiguous, on the CPU): equal digests mean bitwise-equal tensors."""
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _outputs(model, batch, **masks) -> dict:
    model.eval()
    with torch.no_grad():
        out = model(**batch, **masks)
    return {"logits": out.logits.flatten().tolist(),
            "hidden_states": [digest(h) for h in out.hidden_states]}


def _model_numbers() -> dict:
    generator = torch.Generator().manual_seed(11)
    batch = padded_batch(generator, 3, 10, {1: 6, 2: 3})
    result = {}
    for model_type, labels in (("sparsebert_cls", 3), ("sparsebert_ner", 5)):
        model = tiny_model(model_type, labels, levels=(0, 30, 60, 90), seed=2)
        entry = {"full": _outputs(model, batch)}
        config = model.config
        masks = {"head_mask": (torch.rand(4, config.num_attention_heads, generator=generator) > 0.4).float(),
                 "neuron_mask": torch.rand(4, config.intermediate_size, generator=generator)}
        entry["masked"] = _outputs(model, batch, **masks)
        head_order = torch.stack([torch.randperm(config.num_attention_heads, generator=generator) for _ in range(4)])
        neuron_order = torch.stack([torch.randperm(config.intermediate_size, generator=generator) for _ in range(4)])
        model.reorder(head_order, neuron_order)
        entry["reordered"] = _outputs(model, batch)
        model.sparsify(60)
        entry["sliced_60"] = _outputs(model, batch)
        entry["sliced_60_counts"] = model.count_parameters()
        model.densify()
        entry["densified_60"] = _outputs(model, batch)
        entry["densified_60_weights"] = {name: digest(p) for name, p in model.state_dict().items()}
        model.sparsify(90)
        entry["sliced_90"] = _outputs(model, batch)
        entry["widths_90"] = model.kept_widths()
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


def _run_numbers(root: Path) -> dict:
    import run_distillation
    import run_finetuning
    import run_maxidisc
    import run_minidisc
    import run_sparsification

    task = write_sst2_task(root / "data", n_train=24, n_dev=8, n_test=4)
    plain = save_tiny_teacher(root / "plain", seed=4)
    result = {}
    run_finetuning.main(finetune_args(plain, task, root / "ft", "--num_train_epochs", "1"))
    result["finetune"] = _numbers(read_jsonl(root / "ft" / "metrics.jsonl"), root)
    run_sparsification.main(sparsify_args(root / "ft" / "best", task, root / "sp", sparsities="10,30,50,70,90"))
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


def compute() -> dict:
    """Every recorded number, computed by the current code (one thread; takes ~30 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as folder:
            return {"models": _model_numbers(), "runs": _run_numbers(Path(folder))}
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write {RECORD.relative_to(Path.cwd())}")
    options = parser.parse_args()
    numbers = compute()
    text = json.dumps(numbers, indent=1, sort_keys=True) + "\n"
    if options.write:
        RECORD.write_text(text)
        print(f"wrote {RECORD}")
    else:
        print(text)
