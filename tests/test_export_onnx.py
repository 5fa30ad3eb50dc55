"""``python -m tools.export_onnx``: the exported graph (dynamic batch and length, padding masked) gives
PyTorch's logits in ONNX Runtime on inputs of other shapes than the one it was traced with, is timed, and
lands in the model card."""

import json

import pytest
import torch

from tests.helpers import save_tiny_teacher
from tools import export_onnx
from utils.checkpoint import save_model_atomic
from utils.model_io import load_model, load_tokenizer

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
    for batch in export_onnx.random_batches(model.config.vocab_size, 5, 17, count=2, seed=9) + \
            export_onnx.random_batches(model.config.vocab_size, 2, 3, seed=4):
        assert export_onnx.max_difference(model, session, [batch]) < 1e-4
    report = json.loads((folder / "onnx" / "report.json").read_text())
    assert set(report["latency"]["grid"]) == {"1x5", "1x11", "3x5", "3x11"}
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
