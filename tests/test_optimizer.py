"""The optimizer's weight decay: every family's norms and every bias are exempt, every other weight decays."""

from types import SimpleNamespace

import pytest

from tests.helpers import tiny_model
from utils.engine.step import build_optimizer


@pytest.mark.parametrize("model_type,config", [
    ("sparsebert_cls", {}),
    ("sparseenct5_cls", {}),
    ("sparsedecoder_cls", {"family": "llama"}),
    ("sparsedecoder_cls", {"family": "qwen2"}),  # biases on Q/K/V
    ("sparsedecoder_cls", {"family": "qwen3"}),  # q_norm and k_norm in every layer
])
def test_norms_and_biases_take_no_weight_decay_in_every_family(model_type, config):
    model = tiny_model(model_type, **config)
    optimizer = build_optimizer(model, SimpleNamespace(weight_decay=0.25, learning_rate=1e-3))
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    names = dict(model.named_parameters())
    assert set(decay_of) == {id(p) for p in names.values()}  # every parameter, once

    def is_norm_or_bias(name):
        owner, _, leaf = name.rpartition(".")
        return leaf == "bias" or "norm" in owner.rpartition(".")[2].lower()

    exempt = {name for name, p in names.items() if decay_of[id(p)] == 0.0}
    assert exempt == {name for name in names if is_norm_or_bias(name)}
    assert all(decay_of[id(p)] == 0.25 for name, p in names.items() if name not in exempt)
    if config.get("family") == "qwen3":
        assert {"model.layers.0.self_attn.q_norm.weight", "model.layers.0.self_attn.k_norm.weight",
                "model.layers.0.input_layernorm.weight", "model.norm.weight"} <= exempt
    if model_type == "sparseenct5_cls":
        assert any(name.endswith("layer_norm.weight") for name in exempt)
