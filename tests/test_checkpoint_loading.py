"""Loading pretrained and teacher checkpoints: only supported architectures, every encoder weight present."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
)

import run_distillation
import run_finetuning
from tests.helpers import (
    distill_args,
    finetune_args,
    make_tiny_config,
    save_tiny_teacher,
    save_tiny_tokenizer,
)
from utils.artifacts.model_io import load_model
from utils.command.cli import cli
from utils.errors import StageError

ONE_STEP = ("--max_steps", "1")


def save_foreign(kind: str, directory):
    if kind == "distilbert":
        model = DistilBertForMaskedLM(DistilBertConfig(vocab_size=64, dim=16, n_layers=2, n_heads=4, hidden_dim=24))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=4))
    model.save_pretrained(directory)
    save_tiny_tokenizer(directory)
    return directory


@pytest.mark.parametrize("kind", ["distilbert", "gpt2"])
def test_another_architecture_is_refused_by_name(kind, sst2_task, tmp_path, capsys):
    checkpoint = save_foreign(kind, tmp_path / kind)
    assert cli(run_finetuning.main, finetune_args(checkpoint, sst2_task, tmp_path / "out", *ONE_STEP)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f"error: --model_name_or_path {checkpoint} is a {kind} checkpoint (config model_type "
                        f"'{kind}'); supported: bert, llama, mistral, phi3, qwen2, qwen3, t5")
    assert not (tmp_path / "out").exists()
    assert cli(run_distillation.main, distill_args(checkpoint, sst2_task, tmp_path / "d", "90S")) == 2
    assert f"--teacher_model_path {checkpoint} is a {kind} checkpoint" in capsys.readouterr().err


def test_a_missing_encoder_weight_stops_the_load(tmp_path, sst2_task, capsys):
    teacher = save_tiny_teacher(tmp_path / "teacher")
    weights = load_file(teacher / "model.safetensors")
    del weights["bert.encoder.layer.2.output.dense.weight"]
    save_file(weights, teacher / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(StageError, match=r"1 missing \(bert\.encoder\.layer\.2\.output\.dense\.weight\) weights"):
        load_model("sparsebert_cls", str(teacher))
    # fine-tuning may replace the head, never an encoder weight
    assert cli(run_finetuning.main, finetune_args(teacher, sst2_task, tmp_path / "out", *ONE_STEP)) == 2
    assert "bert.encoder.layer.2.output.dense.weight" in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_mis_shaped_encoder_weight_stops_the_load(tmp_path):
    teacher = save_tiny_teacher(tmp_path / "teacher")
    weights = load_file(teacher / "model.safetensors")
    weights["bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(36, 32)
    save_file(weights, teacher / "model.safetensors", metadata={"format": "pt"})
    for new_head in (False, True):
        with pytest.raises(StageError, match=r"1 mis-shaped \(bert\.encoder\.layer\.0\.intermediate\.dense\.weight\)"):
            load_model("sparsebert_cls", str(teacher), new_head=new_head)


def test_a_pretrained_encoder_is_not_a_teacher_but_can_be_fine_tuned(tmp_path, sst2_task, capsys):
    # an HF BERT with a masked-LM head: its encoder loads, its head is ignored, and ours is new
    pretrained = tmp_path / "mlm"
    BertForMaskedLM(BertConfig(**make_tiny_config().to_dict())).save_pretrained(pretrained)
    save_tiny_tokenizer(pretrained)
    with pytest.raises(StageError, match=r"4 missing \(cls\.0\.bias, cls\.0\.weight, cls\.3\.bias, \.\.\.\) weights "
                                         r"\(fine-tune it first"):
        load_model("sparsebert_cls", str(pretrained))
    results = run_finetuning.main(finetune_args(pretrained, sst2_task, tmp_path / "ft", *ONE_STEP))
    assert results["train"]["steps"] == 1


def test_a_teacher_with_another_label_count_is_refused(make_teacher):
    teacher = make_teacher(num_labels=3)
    with pytest.raises(StageError, match=r"mis-shaped \(cls\.3\.bias, cls\.3\.weight\)"):
        load_model("sparsebert_cls", str(teacher), num_labels=2)
