"""Importance scoring and the sparsity map: the pure functions on hand-made scores, then the gradient pass."""

import itertools
from pathlib import Path

import pytest
import torch

from data.pipelines import encode_dataset
from data.readers import read_examples
from data.tasks import get_task
from models import SparseBertCls
from tests.helpers import FIXTURE_DATA, make_tiny_config
from utils.command.run import Run
from utils.engine.importance_pass import accumulate_importance, load_importance, save_importance
from utils.errors import StageError
from utils.maths.importance import (
    DEFAULT_SPARSITIES,
    build_sparsity_map,
    layer_order,
    normalize_scores,
    parse_sparsities,
    removal_count,
)


def test_normalisation_is_per_layer():
    scores = torch.tensor([[3.0, 4.0, 0.0], [300.0, 400.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    normalized = normalize_scores(scores)
    # each layer gets unit norm whatever its raw scale; an all-zero layer stays zero (eps, no NaN)
    assert torch.allclose(normalized[:2], torch.tensor([[0.6, 0.8, 0.0]] * 2, dtype=torch.float64))
    assert torch.equal(normalized[2], torch.zeros(3, dtype=torch.float64))
    # scaling one layer changes nothing anywhere
    scaled = scores.clone()
    scaled[0] *= 1e6
    assert torch.allclose(normalize_scores(scaled), normalized)


def test_layer_order_is_descending_and_stable():
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.2], [0.0, 0.0, 0.3, 0.0]])
    assert layer_order(scores).tolist() == [[1, 2, 3, 0], [2, 0, 1, 3]]


def test_removal_count_rounds_half_to_even_on_the_exact_value():
    assert [removal_count(s, 10) for s in (5, 15, 25, 35, 45)] == [0, 2, 2, 4, 4]  # 0.5 1.5 2.5 3.5 4.5
    assert removal_count(50, 37) == 18 and removal_count(90, 37) == 33 and removal_count(0, 37) == 0
    assert [removal_count(s, 144) for s in (50, 70, 80, 85, 90, 95)] == [72, 101, 115, 122, 130, 137]


def test_map_removes_the_globally_least_important_per_level():
    # layer 0 is the least important for heads; neurons' least important units sit in layer 1
    heads = torch.tensor([[0.1, 0.2, 0.9], [0.5, 0.6, 0.7]])
    neurons = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.95]])
    sparsity_map = build_sparsity_map(heads, neurons, [0, 50, 30, 90])
    assert list(sparsity_map) == [0, 30, 50, 90]
    assert sparsity_map[0] == {"head": {}, "neuron": {}}
    assert sparsity_map[30] == {"head": {0: 2}, "neuron": {1: 2}}  # round(1.8) heads, round(2.4) neurons
    assert sparsity_map[50] == {"head": {0: 2, 1: 1}, "neuron": {1: 3, 0: 1}}
    assert sparsity_map[90] == {"head": {0: 2, 1: 3}, "neuron": {0: 4, 1: 3}}  # round(5.4), round(7.2)
    for level, entry in sparsity_map.items():
        assert sum(entry["head"].values()) == removal_count(level, 6)
        assert sum(entry["neuron"].values()) == removal_count(level, 8)
    # counts do not depend on the order inside a layer (saved, reordered scores give the same map)
    shuffled = build_sparsity_map(heads[:, [2, 0, 1]], neurons[:, [3, 1, 0, 2]], [0, 30, 50, 90])
    assert shuffled == sparsity_map


def test_maps_are_nested_and_neuron_multiple_rounds_each_layer():
    g = torch.Generator().manual_seed(0)
    heads, neurons = torch.rand(4, 4, generator=g), torch.rand(4, 37, generator=g)
    exact = build_sparsity_map(heads, neurons, DEFAULT_SPARSITIES)
    rounded = build_sparsity_map(heads, neurons, DEFAULT_SPARSITIES, neuron_multiple=8)
    for low, high in itertools.pairwise(DEFAULT_SPARSITIES):
        for entry in (exact, rounded):
            for unit in ("head", "neuron"):
                assert all(entry[high][unit].get(layer, 0) >= n for layer, n in entry[low][unit].items())
    for level in DEFAULT_SPARSITIES:
        assert rounded[level]["head"] == exact[level]["head"]  # heads are never rounded
        for layer in range(4):
            n = exact[level]["neuron"].get(layer, 0)
            assert rounded[level]["neuron"].get(layer, 0) == min(round(n / 8) * 8, 37)
    # a dead layer: 36 removed rounds half-even to 32; 37 removed rounds to 40, capped at the layer's 37
    dead = torch.cat([torch.zeros(1, 37), torch.ones(1, 37)])
    dead_map = build_sparsity_map(heads[:2], dead, [49, 50], neuron_multiple=8)
    assert dead_map[49]["neuron"] == {0: 32} and dead_map[50]["neuron"] == {0: 37}


@pytest.mark.parametrize("text,needle", [("0,10,100", "not between 0 and 99"), ("-5", "not between 0 and 99"),
                                         ("10,abc", "'abc' is not an integer"), ("", "expected comma-separated")])
def test_parse_sparsities_errors(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_sparsities(text)


def test_parse_sparsities_sorts_and_includes_zero():
    assert parse_sparsities("90, 10,10") == (0, 10, 90)
    assert parse_sparsities(",".join(map(str, DEFAULT_SPARSITIES))) == DEFAULT_SPARSITIES
    with pytest.raises(ValueError, match="between 0 and 99"):
        build_sparsity_map(torch.ones(1, 2), torch.ones(1, 2), [100])


def tiny_sst2(tokenizer):
    task = get_task("sst2")
    return encode_dataset(task, read_examples(task, FIXTURE_DATA, "dev"), tokenizer, 32)


def test_useless_head_and_neuron_score_zero_and_go_first(tokenizer):
    model = SparseBertCls(make_tiny_config(num_labels=2))
    layer = model.bert.layers[2]
    with torch.no_grad():
        head_rows = slice(1 * 8, 2 * 8)  # head 1 of size 8
        layer.attention.self.value.weight[head_rows] = 0
        layer.attention.self.value.bias[head_rows] = 0
        layer.attention.output.dense.weight[:, head_rows] = 0
        model.bert.layers[1].output.dense.weight[:, 5] = 0
    run = Run(output_dir=Path("."), device=torch.device("cpu"))
    head, neuron = accumulate_importance(model, tiny_sst2(tokenizer), 1, run)  # two batches
    assert head.shape == (4, 4) and neuron.shape == (4, 37)
    assert head[2, 1] == 0 and neuron[1, 5] == 0
    assert (head.flatten() > 0).sum() == 15 and (neuron.flatten() > 0).sum() == 4 * 37 - 1
    assert not any(p.grad is not None for p in model.parameters())  # only the masks were differentiated
    head, neuron = normalize_scores(head), normalize_scores(neuron)
    sparsity_map = build_sparsity_map(head, neuron, [1, 5])
    assert sparsity_map[1]["neuron"] == {1: 1}  # round(1.48) = 1 neuron: the dead one's layer
    assert sparsity_map[5]["head"] == {2: 1}  # round(0.8) = 1 head: the dead one's layer
    assert layer_order(head)[2, -1] == 1 and layer_order(neuron)[1, -1] == 5


def test_importance_file_round_trips_exactly(tmp_path):
    g = torch.Generator().manual_seed(1)
    head = normalize_scores(torch.rand(3, 4, generator=g, dtype=torch.float64))
    neuron = normalize_scores(torch.rand(3, 37, generator=g, dtype=torch.float64))
    save_importance(tmp_path, head, neuron, "train", 12)
    loaded = load_importance(tmp_path, {"head": (3, 4), "neuron": (3, 37)})
    assert torch.equal(loaded["head"], head) and torch.equal(loaded["neuron"], neuron)
    assert (loaded["split"], loaded["num_examples"]) == ("train", 12)
    with pytest.raises(ValueError, match="model has"):
        load_importance(tmp_path, {"head": (4, 4), "neuron": (4, 37)})
    with pytest.raises(StageError, match="importance.json"):
        load_importance(tmp_path / "nowhere", {"head": (3, 4), "neuron": (3, 37)})
