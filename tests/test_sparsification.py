"""run_sparsification.py end to end on tiny teachers: function kept, useless units first, map counts, the
pruning curve, re-sparsifying from saved scores, CoNLL, clear errors, and distilling 90S from the result."""

import json
from pathlib import Path

import pytest
import torch

import run_distillation
import run_sparsification
from models import SparseBertCls
from tests.helpers import FIXTURE_DATA, distill_args, save_tiny_teacher, sparsify_args
from utils.artifacts.model_io import load_model, load_tokenizer
from utils.artifacts.task_data import load_split
from utils.command.cli import cli
from utils.command.run import Run
from utils.engine.evaluation import collect_outputs
from utils.maths.importance import removal_count


def save_teacher_with_useless_units(directory):
    """A tiny teacher with head 1 of layer 2 and neuron 5 of layer 1 made useless (zero weights)."""
    save_tiny_teacher(directory)
    model = SparseBertCls.from_pretrained(directory)
    with torch.no_grad():
        layer = model.bert.layers[2]
        layer.attention.self.value.weight[8:16] = 0  # head 1 (head size 8): no value, no output
        layer.attention.self.value.bias[8:16] = 0
        layer.attention.output.dense.weight[:, 8:16] = 0
        model.bert.layers[1].output.dense.weight[:, 5] = 0
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def useless_unit_teacher(shared_folder):
    return shared_folder(save_teacher_with_useless_units)


@pytest.fixture(scope="module")
def sparsified(useless_unit_teacher, sst2_task, tmp_path_factory):
    """run_sparsification of ``useless_unit_teacher`` at 1, 5, 50 and 90%: (output folder, results)."""
    out = tmp_path_factory.mktemp("sparse") / "run"
    return out, run_sparsification.main(sparsify_args(useless_unit_teacher, sst2_task, out))


def dev_logits(model_dir, task_dir):
    from argparse import Namespace

    from data.tasks import get_task

    data = Namespace(data_dir=str(task_dir), max_length=16)
    dev = load_split(data, get_task("sst2"), load_tokenizer(str(model_dir)), "dev")
    outputs = collect_outputs(load_model("sparsebert_cls", str(model_dir)), dev, 8, Run(model_dir, torch.device("cpu")))
    return torch.stack([outputs[i] for i in range(len(dev))])


def test_output_layout_and_function_unchanged(sparsified, useless_unit_teacher, sst2_task):
    out, results = sparsified
    assert {"args.json", "log.txt", "results.json", "model"} <= {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "importance.json", "tokenizer_config.json"} <= {
        p.name for p in (out / "model").iterdir()}
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["sparsity"] == 0 and config["importance_split"] == "dev" and config["importance_samples"] == 16
    assert sorted(map(int, config["sparsity_map"])) == [0, 1, 5, 50, 90]
    assert json.loads((out / "results.json").read_text())["pruning_curve"] == results["pruning_curve"]
    # reordering is a permutation: the saved model computes the teacher's function
    assert torch.allclose(dev_logits(out / "model", sst2_task), dev_logits(useless_unit_teacher, sst2_task),
                          atol=1e-5)
    assert "pruning curve" in (out / "log.txt").read_text()


def test_map_counts_and_useless_units_removed_first(sparsified):
    out, results = sparsified
    sparsity_map = results["sparsity_map"]
    for level in (1, 5, 50, 90):
        entry = sparsity_map[str(level)]
        assert sum(entry["head"].values()) == removal_count(level, 16)
        assert sum(entry["neuron"].values()) == removal_count(level, 4 * 37)
    assert sparsity_map["1"] == {"head": {}, "neuron": {"1": 1}}  # 1 neuron: the dead one's layer
    assert sparsity_map["5"]["head"] == {"2": 1}  # 1 head: the dead one's layer
    # after reordering, the dead units sit last in their layers, so slicing drops exactly them
    model = load_model("sparsebert_cls", str(out / "model"))
    assert torch.all(model.bert.layers[2].attention.self.value.weight[24:32] == 0)
    assert torch.all(model.bert.layers[1].output.dense.weight[:, 36] == 0)
    scores = json.loads((out / "model" / "importance.json").read_text())
    assert scores["head"][2][3] == 0 and scores["neuron"][1][36] == 0
    assert all(row == sorted(row, reverse=True) for row in scores["head"] + scores["neuron"])


def test_pruning_curve(sparsified):
    _, results = sparsified
    curve = results["pruning_curve"]
    assert [row["sparsity"] for row in curve] == [0, 1, 5, 50, 90]
    assert curve[0]["dev"] == results["teacher_dev"]
    assert curve[0]["heads_kept"] == 16 and curve[0]["neurons_kept"] == 148
    assert [row["heads_kept"] for row in curve] == [16 - removal_count(s, 16) for s in (0, 1, 5, 50, 90)]
    assert [row["neurons_kept"] for row in curve] == [148 - removal_count(s, 148) for s in (0, 1, 5, 50, 90)]
    prunable = [row["prunable_parameters"] for row in curve]
    assert prunable == sorted(prunable, reverse=True) and len(set(prunable)) == 5
    picture = Path(results["paths"]["pruning_curve"])
    assert picture.parent == Path(results["paths"]["output_dir"]) and picture.stat().st_size > 10_000
    assert all(r["total_parameters"] - r["prunable_parameters"] == curve[0]["total_parameters"]
               - curve[0]["prunable_parameters"] for r in curve)


def test_reuse_importance_with_a_finer_grid(sparsified, sst2_task, tmp_path, monkeypatch):
    out, first = sparsified

    def no_pass(*args, **kwargs):
        raise AssertionError("--reuse_importance ran an importance pass")

    monkeypatch.setattr(run_sparsification, "accumulate_importance", no_pass)
    args = sparsify_args(out / "model", sst2_task, tmp_path / "fine", "--reuse_importance")
    args[args.index("--sparsities") + 1] = "1,3,5,50,70,90,97"
    again = run_sparsification.main(args)
    assert again["importance"]["reused"] and again["importance"]["split"] == "dev"
    for level in ("0", "1", "5", "50", "90"):
        assert again["sparsity_map"][level] == first["sparsity_map"][level]
    assert {"3", "70", "97"} <= set(again["sparsity_map"])
    assert (tmp_path / "fine" / "model" / "importance.json").read_text() == (
        out / "model" / "importance.json").read_text()


def test_conll_path_runs(ner_teacher, tmp_path):
    out = tmp_path / "ner"
    results = run_sparsification.main(sparsify_args(
        ner_teacher, FIXTURE_DATA, out, "--model_type", "sparsebert_ner", "--data_type", "bert_ner",
        "--max_length", "32", "--importance_split", "train", "--importance_samples", "3", task="conll"))
    assert [row["sparsity"] for row in results["pruning_curve"]] == [0, 1, 5, 50, 90]
    assert results["pruning_curve"][0]["dev"] == results["teacher_dev"]
    assert set(results["teacher_dev"]) == {"precision", "recall", "f1"}
    assert results["importance"]["split"] == "train" and results["importance"]["num_examples"] == 3
    assert json.loads((out / "model" / "config.json").read_text())["importance_split"] == "train"
    scores = json.loads((out / "model" / "importance.json").read_text())
    assert all(row[0] > 0 for row in scores["head"] + scores["neuron"])  # the token loss reached every layer


def test_distil_90S_from_the_result(sparsified, sst2_task, tmp_path):
    out, _ = sparsified
    results = run_distillation.main(distill_args(out / "model", sst2_task, tmp_path / "distil", "90S",
                                                 "--log_interval", "2", "--max_steps", "2"))
    assert results["model"]["sparsity"] == 90
    assert results["model"]["heads_kept"] == 16 - removal_count(90, 16)
    assert results["model"]["neurons_kept"] == 148 - removal_count(90, 148)


@pytest.mark.parametrize("flags,needle", [
    (["--sparsities", "0,50,100"], "not between 0 and 99"),
    (["--sparsities", "10,x"], "'x' is not an integer"),
    (["--reuse_importance"], "importance.json"),
])
def test_bad_arguments_get_one_clear_line(useless_unit_teacher, sst2_task, tmp_path, capsys, flags, needle):
    args = sparsify_args(useless_unit_teacher, sst2_task, tmp_path / "bad")
    assert cli(run_sparsification.main, args + flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert needle in err[-1], err


def test_not_a_teacher_of_this_task_and_already_pruned(make_teacher, sst2_task, tmp_path, capsys):
    three_labels = make_teacher(num_labels=3)
    assert cli(run_sparsification.main, sparsify_args(three_labels, sst2_task, tmp_path / "a")) == 2
    assert "not a teacher of this task" in capsys.readouterr().err
    pruned = save_tiny_teacher(tmp_path / "pruned", levels=(0, 50))
    model = SparseBertCls.from_pretrained(pruned)
    model.sparsify(50)
    model.densify()
    model.save_pretrained(pruned)
    assert cli(run_sparsification.main, sparsify_args(pruned, sst2_task, tmp_path / "b")) == 2
    assert "already pruned" in capsys.readouterr().err
