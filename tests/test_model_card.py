"""Every saved model folder has a model card (README.md, HF format) that says what the model is and how it
was made, carried from the sparsified teacher through MiniDisc's assistant to the student."""

import json

import pytest

import run_minidisc
import run_sparsification
from tests.helpers import schedule_args, sparsify_args
from utils.artifacts.model_card import CARD_FILE, FACTS_FILE, render, update_card
from utils.artifacts.model_io import load_model


@pytest.fixture(scope="module")
def chain(plain_teacher, short_sst2_task, tmp_path_factory):
    """A tiny teacher sparsified (dev importance), then MiniDisc to 90S through an assistant (λ = 0)."""
    root = tmp_path_factory.mktemp("card")
    run_sparsification.main(sparsify_args(plain_teacher, short_sst2_task, root / "sp",
                                          sparsities="30,50,70,90"))
    results = run_minidisc.main(schedule_args(root / "sp" / "model", short_sst2_task, root / "mini",
                                              "--lam", "0", "--trunc_sparsity", "30"))
    return root, results


def front_matter(card: str) -> list[str]:
    lines = card.splitlines()
    assert lines[0] == "---"
    return lines[1:lines.index("---", 1)]


def test_sparsified_teacher_card(chain):
    root, _ = chain
    folder = root / "sp" / "model"
    facts = json.loads((folder / FACTS_FILE).read_text())
    assert facts["model"]["sparsity"] == 0 and facts["model"]["importance"]["split"] == "dev"
    sparsify = json.loads((root / "sp" / "results.json").read_text())
    assert facts["dev"] == sparsify["teacher_dev"]
    card = (folder / CARD_FILE).read_text()
    meta = front_matter(card)
    assert "library_name: transformers" in meta and "pipeline_tag: text-classification" in meta
    assert "- nyu-mll/glue" in meta and "- accuracy" in meta
    assert "`dev` split" in card and "run_sparsification.py" in card


def test_student_card_names_its_teacher_assistant_and_widths(chain):
    root, results = chain
    assert results["assistants"], "λ = 0 should pick an assistant below the target"
    student_dir = root / "mini" / "iter_2" / "best"
    facts = json.loads((student_dir / FACTS_FILE).read_text())
    student = load_model("sparsebert_cls", str(student_dir))
    widths = student.kept_widths()
    assert facts["model"]["heads_per_layer"] == widths["head"]
    assert facts["model"]["neurons_per_layer"] == widths["neuron"]
    assert facts["model"]["total_parameters"] == student.count_parameters()["total"]
    assert facts["assistants"] == results["assistants"]
    assert facts["dev"] == results["best_dev"]
    assert facts["teacher"]["path"] == str(root / "sp" / "model")
    assert facts["teacher"]["dev"] == json.loads((root / "sp" / "results.json").read_text())["teacher_dev"]
    card = (student_dir / CARD_FILE).read_text()
    assert f"teacher → {results['assistants'][0]}S assistant → 90S" in card
    assert "| heads | " + " | ".join(map(str, widths["head"])) + " |" in card
    assert "λ of the λ-tradeoff: 0.0" in card and "run_minidisc.py" in card
    assert "trust_remote_code=True" in card
    # the assistant's folder has its own card
    assistant = json.loads((root / "mini" / "iter_1" / "best" / FACTS_FILE).read_text())
    assert assistant["model"]["sparsity"] == results["assistants"][0]


def test_latency_is_added_to_an_existing_card(chain, tmp_path):
    root, _ = chain
    folder = root / "mini" / "iter_2" / "best"
    update_card(folder, latency={"hardware": "test CPU", "setting": "batch 4", "ms_per_batch": {"PyTorch": 2.5}})
    assert "| PyTorch | 2.5 |" in (folder / CARD_FILE).read_text()
    with pytest.raises(FileNotFoundError, match="card.json does not exist"):
        update_card(tmp_path, latency={})


def test_a_local_base_model_is_not_written_as_a_hub_id(chain):
    root, _ = chain
    facts = json.loads((root / "sp" / "model" / FACTS_FILE).read_text())
    assert not any(line.startswith("base_model:") for line in front_matter(render(facts, "x")))
    facts["base_model"] = "sentence-transformers/all-MiniLM-L6-v2"
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in front_matter(render(facts, "x"))


def test_a_finished_runs_facts_for_the_card():
    from utils.command.results import card_results

    maxidisc = {"best_dev": {"acc": 0.8}, "test_metrics": {"acc": 0.7}, "best_chain": "70,80,90S", "assistants": [70, 80]}
    assert card_results(maxidisc) == {"dev": {"acc": 0.8}, "test": {"acc": 0.7}, "assistants": [70, 80]}
    assert card_results({"best_dev": {"acc": 0.8}, "best_chain": "90S"}) == {"dev": {"acc": 0.8}}
    assert card_results({"best_dev": {"f1": 0.5}, "assistants": []})["assistants"] == []
