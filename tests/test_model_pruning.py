"""Invariants of the pruning verbs: masks, reorder, sparsify, densify, layer dropping, counts."""

import pytest
import torch

from models import MODEL_REGISTRY, get_model_class, normalize_sparsity_map
from tests.helpers import padded_batch, random_sparsity_map, tiny_config, tiny_model

MODEL_TYPES = sorted(MODEL_REGISTRY)
LEVELS = (30, 60, 90)
# Every family and head, both T5 FFNs, every decoder family (Phi-3's fused tensors too) and both GQA head units: (model type, overrides).
VARIANTS = [(t, {}) for t in MODEL_TYPES] + [
    ("sparseenct5_cls", {"gated": True}), ("sparseenct5_ner", {"gated": True}),
    ("sparsedecoder_cls", {"head_unit": "query"}), ("sparsedecoder_ner", {"head_unit": "query"}),
    ("sparsedecoder_cls", {"family": "qwen2"}), ("sparsedecoder_cls", {"family": "qwen3", "head_unit": "query"}),
    ("sparsedecoder_cls", {"family": "mistral"}), ("sparsedecoder_cls", {"family": "phi3"}),
    ("sparsedecoder_ner", {"family": "phi3", "head_unit": "query"}),
]
VARIANT_IDS = [t + "".join(f"-{v}" if v is not True else f"-{k}" for k, v in o.items()) for t, o in VARIANTS]
variants = pytest.mark.parametrize(("model_type", "overrides"), VARIANTS, ids=VARIANT_IDS)


def build(model_type: str, sparsity_map=None, seed: int = 0, **overrides):
    overrides = {"num_labels": 5, **overrides}
    return tiny_model(model_type, sparsity_map=sparsity_map, seed=seed, **overrides).eval()


def map_for(model_type: str, overrides=None) -> dict:
    """A random nested map over LEVELS for ``model_type``'s rows; at the top level row 1 loses every head
    and row 2 every neuron."""
    return random_sparsity_map(tiny_config(model_type, **(overrides or {})), LEVELS, seed=3, emptied=True,
                               model_type=model_type)


def batch(seed: int = 1, size: int = 3, seq_len: int = 11):
    return padded_batch(torch.Generator().manual_seed(seed), size, seq_len, {0: seq_len - 4, 1: 3})


def ones(model) -> dict:
    """All-ones masks at the model's full unit shape."""
    return {f"{kind}_mask": torch.ones(shape) for kind, shape in model.mask_shape().items()}


def masks_for(model, sparsity: int) -> dict:
    """All-ones masks with zeros at the heads/neurons that ``sparsify(sparsity)`` slices off: the last ``n``
    units of a row; for a GQA decoder the last ``n`` groups' query heads, or the last ``n`` query heads of
    every group (head unit "query")."""
    masks = ones(model)
    config = model.config
    for kind, removed in config.sparsity_map[sparsity].items():
        mask = masks[f"{kind}_mask"]
        for row, n in removed.items():
            if kind == "head" and hasattr(config, "num_key_value_heads"):
                g = config.num_attention_heads // config.num_key_value_heads
                if config.head_unit == "group":
                    mask[row, mask.shape[1] - n * g:] = 0
                else:
                    mask[row].view(-1, g)[:, g - n:] = 0
            else:
                mask[row, mask.shape[1] - n:] = 0
    return masks


def assert_same_output(a, b, atol=1e-5):
    torch.testing.assert_close(a.logits, b.logits, atol=atol, rtol=0)
    assert len(a.hidden_states) == len(b.hidden_states)
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


@pytest.fixture
def sparsity_map():
    """A random nested map over LEVELS for the tiny BERT (see :func:`map_for`)."""
    return map_for("sparsebert_cls")


@variants
def test_all_ones_masks_equal_no_masks(model_type, overrides):
    model = build(model_type, **overrides)
    inputs = batch()
    with torch.no_grad():
        plain = model(**inputs)
        masked = model(**inputs, **ones(model))
    labels = model.config.vocab_size if model_type.endswith("_lm") else 5  # a language model's labels: its vocabulary
    assert plain.logits.shape == ((3, 5) if model_type.endswith("_cls") else (3, 11, labels))
    assert len(plain.hidden_states) == model.depth + 1
    assert_same_output(plain, masked, atol=0)
    with torch.no_grad():
        zeroed = model(**inputs, head_mask=torch.zeros(model.mask_shape()["head"]))
    assert not torch.allclose(zeroed.logits, plain.logits)


def random_orders(model, kind: str) -> torch.Tensor:
    """A random order per row over the mask entries; for a GQA decoder's heads a valid one (groups permuted,
    then the heads within each group)."""
    rows, size = model.mask_shape()[kind]
    config = model.config
    if kind == "head" and hasattr(config, "num_key_value_heads"):
        groups = config.num_key_value_heads
        g = size // groups
        return torch.stack([(torch.randperm(groups)[:, None] * g + torch.stack([torch.randperm(g) for _ in
                             range(groups)])).flatten() for _ in range(rows)])
    return torch.stack([torch.randperm(size) for _ in range(rows)])


@variants
def test_reorder_preserves_outputs(model_type, overrides):
    model = build(model_type, **overrides)
    inputs = batch()
    with torch.no_grad():
        before = model(**inputs)
    first = model.base_model.blocks("head")[0]
    rows_before = first.get_submodule(first.spans[0].linear).weight.clone()
    head_order, neuron_order = random_orders(model, "head"), list(random_orders(model, "neuron"))
    model.reorder(head_order, neuron_order)
    assert not torch.equal(rows_before, first.get_submodule(first.spans[0].linear).weight)
    with torch.no_grad():
        after = model(**inputs)
    assert_same_output(before, after)


def test_reorder_puts_the_given_order_first():
    model = build("sparsebert_cls")
    config = model.config
    head_size = config.hidden_size // config.num_attention_heads
    value = model.bert.encoder.layer[2].attention.self.value
    old = value.weight.detach().clone()
    head_order = torch.arange(config.num_attention_heads).repeat(config.num_hidden_layers, 1)
    head_order[2] = torch.tensor([3, 0, 2, 1])
    model.reorder(head_order=head_order)
    torch.testing.assert_close(value.weight[:head_size], old[3 * head_size : 4 * head_size])


def test_reorder_rejects_bad_orders_and_pruned_models(sparsity_map):
    model = build("sparsebert_cls", sparsity_map)
    config = model.config
    bad = torch.zeros(config.num_hidden_layers, config.num_attention_heads, dtype=torch.long)
    with pytest.raises(ValueError, match="permutation"):
        model.reorder(head_order=bad)
    model.sparsify(30)
    with pytest.raises(ValueError, match="reorder needs the full"):
        model.reorder(head_order=torch.arange(4).repeat(4, 1))


@variants
@pytest.mark.parametrize("level", LEVELS)
def test_masked_equals_sliced_equals_densified(model_type, overrides, level):
    model = build(model_type, map_for(model_type, overrides), **overrides)
    inputs = batch()
    with torch.no_grad():
        masked = model(**inputs, **masks_for(model, level))
        model.sparsify(level)
        sliced = model(**inputs)
        # Masks at physical width still apply to the leading entries of a sliced model.
        sliced_masked = model(**inputs, **ones(model))
        model.densify()
        densified = model(**inputs)
    assert_same_output(masked, sliced)
    assert_same_output(sliced, sliced_masked, atol=0)
    assert_same_output(sliced, densified)
    for hidden in densified.hidden_states:
        assert torch.isfinite(hidden).all()
    full, removed = model.full_units(model.config), model.config.sparsity_map[level]
    assert model.kept_widths() == {kind: [full[kind] - removed[kind].get(row, 0) for row in range(rows)]
                                   for kind, (rows, _) in model.unit_shape().items()}
    assert model.config.sparsity == level
    assert min(model.config.sparsity_map) == level


def test_emptied_blocks_keep_the_output_bias(sparsity_map):
    """A layer with no heads returns LayerNorm(x + attention-output bias), as an all-zero mask does."""
    model = build("sparsebert_cls", sparsity_map)
    layer = model.bert.encoder.layer[1]
    model.sparsify(90)
    assert layer.attention.kept == 0
    x = torch.randn(2, 5, model.config.hidden_size)
    with torch.no_grad():
        got = layer.attention(x, None)
        expected = layer.attention.output.LayerNorm(x + layer.attention.output.dense.bias)
    torch.testing.assert_close(got, expected)


@variants
def test_densify_then_sparsify_further_equals_direct(model_type, overrides):
    direct = build(model_type, map_for(model_type, overrides), **overrides)
    staged = build(model_type, map_for(model_type, overrides), **overrides)
    inputs = batch()
    direct.sparsify(90)
    staged.sparsify(30)
    staged.densify()
    assert staged.available_sparsities() == [30, 60, 90]
    staged.sparsify(60)
    staged.densify()
    staged.sparsify(90)
    with torch.no_grad():
        assert_same_output(direct(**inputs), staged(**inputs))
    staged.sparsify(60)
    direct.sparsify(60)
    assert staged.current_sparsity == 60
    assert staged.kept_widths() == direct.kept_widths()
    with torch.no_grad():
        assert_same_output(direct(**inputs), staged(**inputs))


@variants
def test_densified_save_load_round_trip(model_type, overrides, tmp_path):
    model = build(model_type, map_for(model_type, overrides), **overrides)
    inputs = batch()
    model.sparsify(60)
    model.densify()
    model.save_pretrained(tmp_path)
    reloaded = get_model_class(model_type).from_pretrained(tmp_path).eval()
    assert reloaded.config.sparsity == 60
    assert sorted(reloaded.config.sparsity_map) == [60, 90]
    assert reloaded.config.sparsity_map == model.config.sparsity_map
    assert reloaded.kept_widths() == model.kept_widths()
    with torch.no_grad():
        assert_same_output(model(**inputs), reloaded(**inputs), atol=0)
        model.sparsify(90)
        reloaded.sparsify(90)
        assert_same_output(model(**inputs), reloaded(**inputs), atol=0)


@variants
def test_round_trip_with_emptied_layers(model_type, overrides, tmp_path):
    model = build(model_type, map_for(model_type, overrides), **overrides)
    model.sparsify(90)
    model.densify()
    assert model.kept_widths()["head"][1] == 0 and model.kept_widths()["neuron"][2] == 0
    model.save_pretrained(tmp_path)
    reloaded = get_model_class(model_type).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert_same_output(model(**batch()), reloaded(**batch()), atol=0)


def expected_prunable(config, level: int) -> int:
    """Independent count of the six prunable linears of every layer at ``level``."""
    hidden = config.hidden_size
    head_size = hidden // config.num_attention_heads
    entry = config.sparsity_map.get(level, {"head": {}, "neuron": {}})
    total = 0
    for layer in range(config.num_hidden_layers):
        width = (config.num_attention_heads - entry["head"].get(layer, 0)) * head_size
        neurons = config.intermediate_size - entry["neuron"].get(layer, 0)
        qkv = 3 * (hidden * width + width)
        attention_output = width * hidden + hidden
        ffn = (hidden * neurons + neurons) + (neurons * hidden + hidden)
        total += qkv + attention_output + ffn
    return total


def test_parameter_counts_follow_the_map(sparsity_map):
    model = build("sparsebert_cls", sparsity_map)
    config = model.config
    full = model.count_parameters()
    assert full["total"] == sum(p.numel() for p in model.parameters())
    assert full["prunable"] == expected_prunable(config, 0)
    not_prunable = full["total"] - full["prunable"]
    model.sparsify(60)
    sliced = model.count_parameters()
    assert sliced["prunable"] == expected_prunable(config, 60) < full["prunable"]
    assert sliced["total"] == not_prunable + sliced["prunable"]
    model.densify()
    assert model.count_parameters() == sliced
    assert sum(p.numel() for p in model.parameters()) == sliced["total"]


def test_gradients_reach_masks_and_full_parameters_through_slices(sparsity_map):
    model = build("sparsebert_cls", sparsity_map)
    model.train()
    config = model.config
    head_mask = torch.ones(config.num_hidden_layers, config.num_attention_heads, requires_grad=True)
    neuron_mask = torch.ones(config.num_hidden_layers, config.intermediate_size, requires_grad=True)
    model.sparsify(60)
    widths = model.kept_widths()
    output = model(**batch(), labels=torch.tensor([0, 3, 1]), head_mask=head_mask, neuron_mask=neuron_mask)
    output.loss.backward()
    head_size = config.hidden_size // config.num_attention_heads
    for layer_index, layer in enumerate(model.bert.encoder.layer):
        heads, neurons = widths["head"][layer_index], widths["neuron"][layer_index]
        assert torch.all(head_mask.grad[layer_index, heads:] == 0)
        assert torch.all(neuron_mask.grad[layer_index, neurons:] == 0)
        if heads:
            assert head_mask.grad[layer_index, :heads].abs().sum() > 0
            query = layer.attention.self.query.weight
            assert query.grad.shape == query.shape
            assert query.grad[: heads * head_size].abs().sum() > 0
            assert torch.all(query.grad[heads * head_size :] == 0)
        if neurons:
            assert neuron_mask.grad[layer_index, :neurons].abs().sum() > 0
            out_weight = layer.output.dense.weight
            assert out_weight.grad[:, :neurons].abs().sum() > 0
            assert torch.all(out_weight.grad[:, neurons:] == 0)


def test_sparsify_is_cheap_and_restorable(sparsity_map):
    model = build("sparsebert_cls", sparsity_map)
    weights = [p.data_ptr() for p in model.parameters()]
    model.sparsify(90)
    model.sparsify(0)
    assert model.current_sparsity == 0
    assert [p.data_ptr() for p in model.parameters()] == weights
    assert model.kept_widths() == {"head": [4] * 4, "neuron": [37] * 4}


def test_sparsify_errors(sparsity_map):
    model = build("sparsebert_cls", sparsity_map)
    with pytest.raises(ValueError, match=r"sparsity 50 is not available; choose from \[0, 30, 60, 90\]"):
        model.sparsify(50)
    with pytest.raises(TypeError):
        model.sparsify("30")
    model.sparsify(60)
    model.densify()
    with pytest.raises(ValueError, match=r"sparsity 30 is not available; choose from \[60, 90\]"):
        model.sparsify(30)
    with pytest.raises(ValueError, match="sparsity 0 is not available"):
        model.sparsify(0)


def test_mask_shape_is_checked():
    model = build("sparsebert_cls")
    with pytest.raises(ValueError, match="head_mask"):
        model(**batch(), head_mask=torch.ones(3, 4))


def test_unknown_model_type():
    with pytest.raises(ValueError, match=r"unknown model type 'bert_cls'.*sparsebert_cls, sparsebert_ner"):
        get_model_class("bert_cls")


@variants
def test_drop_layers_keeps_the_bottom_layers(model_type, overrides, tmp_path):
    model = build(model_type, map_for(model_type, overrides), **overrides)
    full_map = model.config.sparsity_map
    rows_before = model.unit_shape()
    inputs = batch()
    with torch.no_grad():
        full_states = model(**inputs).hidden_states
    model.drop_layers(2)
    assert model.depth == 2
    # the rows of the two bottom layers keep their counts; rows above the layers (EncT5's decoder) move down
    dropped_rows = {kind: rows_before[kind][0] - model.unit_shape()[kind][0] for kind in ("head", "neuron")}
    for level, entry in full_map.items():
        for kind, removed in entry.items():
            expected = {row if row < 2 else row - dropped_rows[kind]: n for row, n in removed.items()
                        if row < 2 or row >= 2 + dropped_rows[kind]}
            assert model.config.sparsity_map[level][kind] == expected
    with torch.no_grad():
        dropped = model(**inputs)
    assert len(dropped.hidden_states) == 3
    # EncT5's last state is after the encoder's final norm, so only BERT's matches the full model's layer 2
    same = 3 if "bert" in model_type else 2
    for x, y in zip(dropped.hidden_states[:same], full_states[:same], strict=True):
        torch.testing.assert_close(x, y)
    model.save_pretrained(tmp_path)
    loaded = get_model_class(model_type).from_pretrained(tmp_path).eval()
    assert loaded.config.sparsity_map == model.config.sparsity_map
    with torch.no_grad():
        assert_same_output(loaded(**inputs), dropped, atol=0)
    model.sparsify(90)
    loaded.sparsify(90)
    with torch.no_grad():
        assert_same_output(loaded(**inputs), model(**inputs), atol=0)


def test_a_lowered_depth_in_the_config_keeps_the_bottom_rows_for_bert(sparsity_map, tmp_path):
    model = build("sparsebert_cls", sparsity_map)
    model.save_pretrained(tmp_path)
    model.drop_layers(2)
    loaded = get_model_class("sparsebert_cls").from_pretrained(tmp_path, num_hidden_layers=2)
    assert loaded.config.sparsity_map == model.config.sparsity_map


def test_drop_layers_out_of_range():
    model = build("sparsebert_cls")
    for bad in (0, 5):
        with pytest.raises(ValueError, match="between 1 and 4 layers"):
            model.drop_layers(bad)


def test_losses():
    inputs = batch()
    cls = build("sparsebert_cls")
    labels = torch.tensor([4, 0, 2])
    out = cls(**inputs, labels=labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    regression = build("sparsebert_cls", num_labels=1)
    targets = torch.tensor([0.5, 2.0, -1.0])
    out = regression(**inputs, labels=targets)
    assert out.logits.shape == (3, 1)
    torch.testing.assert_close(out.loss, ((out.logits[:, 0] - targets) ** 2).mean())
    ner = build("sparsebert_ner")
    tags = torch.full((3, 11), -100)
    tags[0, 1], tags[0, 4], tags[2, 2] = 1, 3, 0
    out = ner(**inputs, labels=tags)
    scored = out.logits[tags != -100]
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(scored, tags[tags != -100]))
    assert build("sparsebert_ner")(**inputs).loss is None


def test_normalize_sparsity_map_from_json():
    raw = {"90": {"head": {"0": 3, "2": "1"}, "neuron": {"1": 20}}, "50": {"head": {}}}
    assert normalize_sparsity_map(raw) == {
        90: {"head": {0: 3, 2: 1}, "neuron": {1: 20}},
        50: {"head": {}, "neuron": {}},
    }
    with pytest.raises(ValueError, match="unknown units"):
        normalize_sparsity_map({"10": {"heads": {}}})


def test_config_with_string_keys_loads(tmp_path, sparsity_map):
    import json

    model = build("sparsebert_cls", sparsity_map)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert set(saved["sparsity_map"]) == {"30", "60", "90"}
    reloaded = get_model_class("sparsebert_cls").from_pretrained(tmp_path)
    assert reloaded.config.sparsity_map == model.config.sparsity_map
    assert reloaded.available_sparsities() == [0, 30, 60, 90]


def test_hidden_states_pad_lazily_and_gather_real_tokens():
    model = build("sparsebert_cls")
    inputs = batch()
    states = model.bert(**inputs)
    mask = inputs["attention_mask"]
    real = mask.bool()
    assert len(states) == model.config.num_hidden_layers + 1
    assert states[-1] is states[len(states) - 1]  # padded once, then cached
    assert [s.shape for s in states[1:3]] == [states[1].shape, states[2].shape]
    with pytest.raises(IndexError):
        states[len(states)]
    for i in range(len(states)):
        expected = states[i][real]
        torch.testing.assert_close(states.at_tokens(i, mask), expected, rtol=0, atol=0)
        torch.testing.assert_close(states.at_tokens(i, mask.clone()), expected, rtol=0, atol=0)
    other = mask.clone()
    other[1, 0] = 0  # a different selection falls back to indexing the padded state
    torch.testing.assert_close(states.at_tokens(2, other), states[2][other.bool()], rtol=0, atol=0)
    unpadded = model.bert(inputs["input_ids"])
    ones = torch.ones_like(mask)
    torch.testing.assert_close(unpadded.at_tokens(1, ones), unpadded[1][ones.bool()], rtol=0, atol=0)


@variants
def test_at_sparsity_restores_the_width_on_leaving_and_on_an_exception(model_type, overrides):
    model = build(model_type, map_for(model_type, overrides), **overrides)
    model.sparsify(30)
    at_30, at_90 = model.kept_widths(), model.base_model.widths_at(model.config, 90)
    with model.at_sparsity(90) as sliced:
        assert sliced is model and model.current_sparsity == 90 and model.kept_widths() == at_90
    assert model.current_sparsity == 30 and model.kept_widths() == at_30
    with pytest.raises(RuntimeError, match="inside"), model.at_sparsity(60):
        raise RuntimeError("inside")
    assert model.current_sparsity == 30 and model.kept_widths() == at_30
