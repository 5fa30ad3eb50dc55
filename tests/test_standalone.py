"""Saved models load with transformers alone: the generated modeling file and ``auto_map`` give the project's
logits through ``AutoModelFor...`` and ``pipeline`` in a process that cannot import this repository."""

import json
import subprocess
import sys

import pytest
import torch

from models.standalone import MODELING_FILE, modeling_source
from tests.helpers import save_tiny_teacher
from utils.artifacts.model_io import load_model, load_tokenizer
from utils.engine.checkpoint import save_model_atomic

FAMILIES = ["sparsebert_cls", "sparsebert_ner", "sparseenct5_cls", "sparseenct5_ner", "sparsedecoder_cls",
            "sparsedecoder_ner"]
TEXTS = ["the film was a quiet delight", "dull"]

# Run in a clean interpreter (-I: no PYTHONPATH, no script folder on sys.path) from another folder.
CHILD = """
import importlib.util, json, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer, pipeline
assert importlib.util.find_spec("models") is None and importlib.util.find_spec("utils") is None, sys.path
texts, out = json.loads(sys.argv[1]), {}
for folder, token in json.loads(sys.argv[2]):
    auto = AutoModelForTokenClassification if token else AutoModelForSequenceClassification
    model = auto.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    task = "token-classification" if token else "text-classification"
    kwargs = {} if token else {"top_k": None}
    run = pipeline(task, model=folder, trust_remote_code=True)(texts, **kwargs)
    out[folder] = {"class": type(model).__name__, "logits": logits.tolist(), "pipeline": run}
print(json.dumps(out, default=float))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each family's pruned (sparsified to 50, densified) model saved as the scripts save ``best/``, with the
    project's logits on :data:`TEXTS`."""
    root, saved = tmp_path_factory.mktemp("standalone"), {}
    for model_type in FAMILIES:
        source = save_tiny_teacher(root / model_type / "teacher", num_labels=3, levels=(50, 90), seed=3,
                                   model_type=model_type)
        model = load_model(model_type, str(source))
        model.sparsify(50)
        model.densify()
        tokenizer = load_tokenizer(str(source))
        save_model_atomic(model.eval(), tokenizer, root / model_type / "best")
        with torch.no_grad():
            logits = model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
        saved[model_type] = (root / model_type / "best", logits, model)
    return saved


@pytest.fixture(scope="module")
def loaded(saved, tmp_path_factory):
    """What the clean process got from each saved folder."""
    folders = [[str(folder), model_type.endswith("_ner")] for model_type, (folder, _, _) in saved.items()]
    child = subprocess.run([sys.executable, "-I", "-c", CHILD, json.dumps(TEXTS), json.dumps(folders)],
                           cwd=tmp_path_factory.mktemp("elsewhere"), capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("model_type", FAMILIES)
def test_auto_class_and_pipeline_give_the_projects_outputs(saved, loaded, model_type):
    folder, logits, model = saved[model_type]
    got = loaded[str(folder)]
    assert got["class"] == type(model).__name__
    torch.testing.assert_close(torch.tensor(got["logits"]), logits, atol=1e-5, rtol=1e-5)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {("AutoModelForTokenClassification" if model_type.endswith("_ner")
                                   else "AutoModelForSequenceClassification"): f"modeling_minidisc.{got['class']}"}
    probabilities = logits.softmax(-1)
    if model_type.endswith("_cls"):
        for row, scores in enumerate(got["pipeline"]):
            by_label = {entry["label"]: entry["score"] for entry in scores}
            expected = {model.config.id2label[i]: p for i, p in enumerate(probabilities[row].tolist())}
            assert by_label == pytest.approx(expected, abs=1e-5)
    else:
        for row, entities in enumerate(got["pipeline"]):
            assert entities  # no label is "O" here, so every word piece is reported with its best score
            for entity in entities:
                assert entity["score"] == pytest.approx(probabilities[row, entity["index"]].max().item(), abs=1e-5)


def test_the_modeling_file_is_regenerated_from_the_package(saved):
    folder = saved["sparsebert_cls"][0]
    assert (folder / MODELING_FILE).read_text() == modeling_source()
    assert "from ." not in modeling_source()


def test_a_name_defined_by_two_modules_is_refused(tmp_path):
    (tmp_path / "one.py").write_text("def shared():\n    return 1\n")
    (tmp_path / "two.py").write_text("from .one import shared\n\n\ndef shared():\n    return 2\n")
    with pytest.raises(RuntimeError, match="two.py and one.py both define 'shared'"):
        modeling_source(tmp_path, ("one", "two"))
    (tmp_path / "two.py").write_text("from .one import shared\n\n\ndef other():\n    return shared()\n")
    source = modeling_source(tmp_path, ("one", "two"))
    namespace = {}
    exec(compile(source, "generated", "exec"), namespace)  # noqa: S102 - our own generated code
    assert namespace["other"]() == 1
