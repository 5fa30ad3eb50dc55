"""``python -m tools.export_onnx``: the exported graph (dynamic batch and length, padding masked) gives
PyTorch's logits in ONNX Runtime on inputs of other shapes than the one it was traced with, is timed, and
lands in the model card."""

import json

import pytest
import torch

from models import MODEL_REGISTRY
from tests.helpers import save_tiny_teacher, tiny_model
from tools import export_onnx, latency
from utils.artifacts.model_io import load_model, load_tokenizer
from utils.engine.checkpoint import save_model_atomic

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def saved_student(root, model_type):
    source = save_tiny_teacher(root / "teacher", num_labels=3, levels=(50, 90), seed=2, model_type=model_type)
    model = load_model(model_type, str(source))
    model.sparsify(50)
    model.densify()
    save_model_atomic(model.eval(), load_tokenizer(str(source)), root / "best")
    return root / "best", model


def check_family(tmp_path, model_type):
    folder, model = saved_student(tmp_path, model_type)
    assert export_onnx.main([str(folder), "--batch_sizes", "1,3", "--lengths", "5,11", "--repeats", "1",
                             "--warmup", "0"]) == 0
    session = export_onnx.OnnxModel(folder / "onnx" / "model.onnx", export_onnx.input_names(model))
    # shapes the export never saw, with and without padding
    for batch in latency.random_batches(model.config.vocab_size, 5, 17, count=2, seed=9) + \
            latency.random_batches(model.config.vocab_size, 2, 3, seed=4):
        assert export_onnx.max_difference(model, session, [batch]) < 1e-4
    report = json.loads((folder / "onnx" / "report.json").read_text())
    assert set(report["latency"]["grid"]) == {"1x5", "1x11", "3x5", "3x11"}
    assert set(report["latency"]["grid"]["3x11"]) == {"pytorch", "pytorch_padded", "onnxruntime"}
    assert report["check"]["max_abs_difference"] < 1e-4
    card = (folder / "README.md").read_text()
    assert "onnxruntime, batch 3 × 11 tokens" in card and "## Latency" in card


# Every family in the slow set (an export takes about 20 s); in CI the main job's smoke profile exports
# the real MiniLM teacher, assistant and student and checks each against PyTorch (tools.report).
@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["sparsebert_cls", "sparsebert_ner", "sparseenct5_cls", "sparseenct5_ner", "sparsedecoder_cls",
                                        "sparsedecoder_ner"])
def test_every_family_exports(tmp_path, model_type):
    check_family(tmp_path, model_type)


@pytest.mark.parametrize("model_type", sorted(MODEL_REGISTRY))
def test_only_bert_exports_take_segment_ids(model_type):
    names = export_onnx.input_names(tiny_model(model_type, 3))
    assert names == ["input_ids", "attention_mask", *(["token_type_ids"] if "bert" in model_type else [])]


def test_a_folder_without_a_project_model_is_refused(tmp_path, capsys):
    assert export_onnx.main([str(tmp_path)]) == 1
    assert "has no config.json" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert export_onnx.main([str(tmp_path)]) == 1
    assert "names no model of this project" in capsys.readouterr().err


def test_padding_is_masked_not_dropped_when_exporting():
    from tests.helpers import padded_batch, tiny_model

    model = tiny_model("sparsebert_ner", 3, seed=1).eval()
    batch = padded_batch(torch.Generator().manual_seed(0), 3, 9, {1: 5, 2: 3})
    eager = model(**batch).logits
    exported = torch.export.export(export_onnx._Logits(model), (batch["input_ids"], batch["attention_mask"],
                                                                batch["token_type_ids"]))
    graph = exported.module()(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(graph[real], eager[real], atol=1e-5, rtol=1e-5)
    assert "nonzero" not in str(exported.graph)  # the packed path would select the real tokens


def test_keep_padding_runs_every_family_on_the_exported_graphs_path():
    """Inside keep_padding() the eager models keep and mask the padding as the exported graph does (BERT
    computes every token instead of the real ones; the decoders and EncT5 mask even a batch without padding),
    with the same logits."""
    from models.enc_t5 import _additive_mask
    from models.packing import PaddedBatch, TokenPacking, keep_padding, padding_kept
    from models.sparse_bert import SparseBertModel
    from tests.helpers import padded_batch, tiny_model

    unpadded, padded = torch.ones(2, 5, dtype=torch.long), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    decoder = tiny_model("sparsedecoder_cls", 2, seed=0).eval()
    assert not padding_kept() and isinstance(SparseBertModel._packing(padded), TokenPacking)
    assert decoder.model._attention_mask(unpadded, 5, "cpu") is None and _additive_mask(unpadded, torch.float) is None
    with keep_padding():
        assert padding_kept() and isinstance(SparseBertModel._packing(padded), PaddedBatch)
        assert decoder.model._attention_mask(unpadded, 5, "cpu") is not None
        assert _additive_mask(unpadded, torch.float) is not None
    assert not padding_kept()
    for model_type in ("sparsebert_cls", "sparsedecoder_cls", "sparseenct5_cls"):
        model = tiny_model(model_type, 2, seed=1).eval()
        batch = padded_batch(torch.Generator().manual_seed(0), 3, 9, {1: 5, 2: 3})
        with torch.inference_mode():
            torch.testing.assert_close(export_onnx.PaddedPyTorch(model)(**batch).logits, model(**batch).logits,
                                       atol=1e-5, rtol=1e-5)


class _Logits:
    def __init__(self, logits):
        self.logits = logits


def test_agreement_is_relative_to_the_logits_scale_and_checks_predictions():
    batch = {"attention_mask": torch.ones(3, 4, dtype=torch.long)}
    big = torch.tensor([[40.0, -12.0], [3.0, 25.0], [-30.0, 8.0]])

    def judge(ours, theirs):
        return export_onnx.agreement(lambda **b: _Logits(ours), lambda **b: theirs, [batch], rtol=1e-3)

    # a deep model's logits of size 40 differing by 4.9e-4 in absolute terms: round-off, not an error
    deep = judge(big, big + 4.94e-4)
    assert deep.ok and deep.max_abs_difference == pytest.approx(4.94e-4, rel=1e-3)
    assert deep.relative_difference == pytest.approx(4.94e-4 / 40, rel=1e-3)
    assert "the export is faithful" in deep.meaning() and (deep.predictions, deep.same_predictions) == (3, 3)
    # the same absolute difference on logits of size 0.1 is 0.5%: more than round-off
    small = judge(big / 400, big / 400 + 4.94e-4)
    assert not small.ok and "computes something else" in small.meaning()
    # within the tolerance, but a prediction changes
    flipped = big.clone()
    flipped[1] = torch.tensor([3.0, 2.99])
    near = judge(flipped, flipped + torch.tensor([0.0, 0.02]))
    assert near.relative_difference < 1e-3 and near.same_predictions == 2 and not near.ok
    # token logits: padding positions are compared in neither
    tokens = torch.zeros(1, 3, 2)
    padded = {"attention_mask": torch.tensor([[1, 1, 0]])}
    garbage_at_padding = tokens.clone()
    garbage_at_padding[0, 2] = 100.0
    masked = export_onnx.agreement(lambda **b: _Logits(tokens), lambda **b: garbage_at_padding, [padded])
    assert masked.max_abs_difference == 0.0 and masked.predictions == 2


def _identity_graph(path):
    """An ONNX graph with one input and the output "logits" (what OnnxModel runs)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["logits"])], "identity",
                              [helper.make_tensor_value_info("input_ids", TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("policy,spinning", [("PASSIVE", "0"), ("ACTIVE", "1"), (None, "1")])
def test_onnx_runtime_gets_torchs_threads_and_spin_policy(tmp_path, monkeypatch, policy, spinning):
    if policy is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    session = export_onnx.OnnxModel(_identity_graph(tmp_path / "m.onnx"), ["input_ids"], threads=3)
    options = session.session.get_session_options()
    assert options.intra_op_num_threads == 3
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == spinning
    setup = latency.timing_setup(3)
    assert setup == {"threads": {"pytorch": 3, "onnxruntime": 3}, "omp_wait_policy": policy or "unset",
                     "allow_spinning": spinning == "1"}
    assert latency.describe_setup(setup) == (
        f"PyTorch 3 and ONNX Runtime 3 intra-op threads, OMP_WAIT_POLICY {policy or 'unset'} and ONNX Runtime "
        f"spinning {'on' if spinning == '1' else 'off'}")
    assert torch.equal(session(input_ids=torch.ones(1, 2)), torch.ones(1, 2))
