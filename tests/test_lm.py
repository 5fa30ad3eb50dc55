"""Decoder LLMs as language models (``--task_name lm``): the causal-LM task model against HF's ``*ForCausalLM``,
the chunked next-token loss and distillation KL against their direct computation, perplexity against a hand
computation, stock-architecture language-model students (``generate`` included), and the scripts end to end on
every decoder family."""

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

import run_distillation
import run_finetuning
import run_maxidisc
import run_minidisc
import run_sparsification
from data.pipelines import EncodedDataset, TextBlock
from data.tasks import get_task
from models import SparseDecoderLM
from models.outputs import next_token_nll, token_kl
from tests.helpers import (
    T5_WORDS,
    distill_args,
    finetune_args,
    make_tiny_decoder_config,
    save_tiny_decoder_pretrained,
    schedule_args,
    sparsify_args,
)
from tests.test_decoder import decoder_batch
from tools import report
from utils.artifacts.model_io import load_model, load_tokenizer
from utils.artifacts.task_data import load_split
from utils.command.run import Run
from utils.engine.evaluation import lm_metrics

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3")


def _blocks(token_lists: list[list[int]]) -> EncodedDataset:
    """An ``lm`` dataset of the given blocks (as the packing makes them)."""
    blocks = [TextBlock(f"dev-{i}", tuple(ids)) for i, ids in enumerate(token_lists)]
    features = [{"input_ids": list(ids), "token_type_ids": [0] * len(ids), "labels": list(ids), "example_index": i}
                for i, ids in enumerate(token_lists)]
    return EncodedDataset(get_task("lm"), blocks, features, pad_token_id=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tied", [False, True])
def test_the_language_model_equals_hf_causal_lm(family, tied):
    config = make_tiny_decoder_config(family, tie_word_embeddings=tied)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(copy.deepcopy(config)).eval()
    ours = SparseDecoderLM(copy.deepcopy(config)).eval()
    missing, unexpected = ours.load_state_dict(hf.state_dict(), strict=False)
    assert not missing and unexpected == (["lm_head.weight"] if tied else [])  # tied: ours stores no copy
    inputs = decoder_batch("right")
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    with torch.no_grad():
        theirs = hf(**inputs, labels=labels)
        real = inputs["attention_mask"].bool()
        torch.testing.assert_close(ours(**inputs).logits[real], theirs.logits[real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(**inputs, labels=labels).loss, theirs.loss, atol=1e-5, rtol=1e-5)


def test_chunked_losses_equal_the_direct_ones_and_their_gradients():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 7, 5, generator=generator, requires_grad=True)
    weight = torch.randn(11, 5, generator=generator, requires_grad=True)
    labels = torch.randint(0, 11, (2, 7), generator=generator)
    labels[1, 5:] = -100
    total, count = next_token_nll(hidden, weight, labels, chunk=3)
    logits = F.linear(hidden[:, :-1], weight)
    keep = labels[:, 1:] != -100
    direct = F.cross_entropy(logits[keep], labels[:, 1:][keep], reduction="sum")
    assert count == 6 + 4  # row 1 scores its next tokens 1 to 4 only
    torch.testing.assert_close(total, direct)
    grads = torch.autograd.grad(total, (hidden, weight))
    torch.testing.assert_close(grads, torch.autograd.grad(direct, (hidden, weight)))

    teacher, teacher_weight = torch.randn(9, 5, generator=generator), torch.randn(11, 5, generator=generator)
    student = hidden.reshape(14, 5)[:9]
    kl = token_kl(student, weight, teacher, teacher_weight, chunk=4)
    direct = F.kl_div(F.log_softmax(F.linear(student, weight), -1), F.log_softmax(F.linear(teacher, teacher_weight), -1),
                      log_target=True, reduction="sum")
    torch.testing.assert_close(kl, direct)
    torch.testing.assert_close(torch.autograd.grad(kl, weight), torch.autograd.grad(direct, weight))
    assert token_kl(teacher, teacher_weight, teacher, teacher_weight).abs() < 1e-5


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(tmp_path):
    """With a zero output weight every next token has probability 1/V: perplexity V exactly, whatever the text."""
    model = SparseDecoderLM(make_tiny_decoder_config("llama", tie_word_embeddings=False))
    with torch.no_grad():
        model.lm_head.weight.zero_()
    dataset = _blocks([[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]])
    metrics = lm_metrics(model, dataset, 2, Run(output_dir=tmp_path, device=torch.device("cpu")))
    assert metrics["perplexity"] == pytest.approx(101, rel=1e-6)
    assert metrics["nll"] == pytest.approx(math.log(101), rel=1e-6)
    assert metrics["inverse_perplexity"] == pytest.approx(1 / 101, rel=1e-6)


def test_a_uniform_language_model_student_is_a_stock_causal_lm_that_generates(tmp_path):
    from tests.test_uniform_widths import uniform_model
    from utils.engine.checkpoint import save_model_atomic

    model = uniform_model("sparsedecoder_lm", family="qwen3", head_unit="query", tie_word_embeddings=True)
    with torch.no_grad():
        model.sparsify(50)
        model.densify()
    save_model_atomic(model, None, tmp_path / "student")
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
    assert type(stock).__name__ == "Qwen3ForCausalLM" and stock.config.num_attention_heads < 6
    prompt = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(stock(prompt).logits, model(prompt).logits, atol=1e-5, rtol=1e-5)
        generated = stock.generate(prompt, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
        ours = prompt
        for _ in range(6):  # greedy decoding with our model, one full forward per token
            ours = torch.cat([ours, model(ours).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert generated.tolist() == ours.tolist()


def lm_corpus(directory: Path, documents: int = 60, seed: int = 0) -> Path:
    """A ``train.txt`` of ``documents`` paragraphs of 6 to 14 words of :data:`T5_WORDS` (dev: held out, every 20th)."""
    generator = torch.Generator().manual_seed(seed)
    paragraphs = [" ".join(T5_WORDS[i] for i in torch.randint(0, len(T5_WORDS), (int(n),), generator=generator))
                  for n in torch.randint(6, 15, (documents,), generator=generator)]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.txt").write_text("\n\n".join(paragraphs) + "\n")
    return directory


def as_lm(args: list[str]) -> list[str]:
    return ["lm" if arg == "sst2" else arg for arg in args]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_scripts_compress_a_language_model(family, tmp_path):
    data = lm_corpus(tmp_path / "data")
    pretrained = save_tiny_decoder_pretrained(tmp_path / family, family)
    tuned = run_finetuning.main(as_lm(finetune_args(pretrained, data, tmp_path / "ft", "--max_steps", "3")))
    assert tuned["best_dev"]["perplexity"] == pytest.approx(1 / tuned["best_score"])
    sparse = tmp_path / "sp" / "model"
    curve = run_sparsification.main(as_lm(sparsify_args(tmp_path / "ft" / "best", data, tmp_path / "sp",
                                                        "--uniform_widths", sparsities="30,60,90")))["pruning_curve"]
    assert curve[0]["dev"]["perplexity"] == pytest.approx(tuned["best_dev"]["perplexity"], rel=1e-4)
    distilled = run_distillation.main(as_lm(distill_args(sparse, data, tmp_path / "kd", "60S")))
    assert json.loads((tmp_path / "kd" / "args.json").read_text())["args"]["objective"] == "lm_kd"
    mini = run_minidisc.main(as_lm(schedule_args(sparse, data, tmp_path / "mini", "--target_sparsity", "90")))
    performance = mini["schedule"][0]["performance"]
    assert all(0 < p["score"] <= 1.5 for p in performance.values())  # teacher perplexity / student perplexity
    run_maxidisc.main(as_lm(schedule_args(sparse, data, tmp_path / "maxi", "--layer_or_sparsity_path", "30,90S",
                                          "--objective", "lm_kd_cos", "--lm_loss_weight", "0.5")))
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "kd" / "best").eval()  # uniform widths: no custom code
    ours = load_model("sparsedecoder_lm", str(tmp_path / "kd" / "best")).eval()
    prompt = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(stock(prompt).logits, ours(prompt).logits, atol=1e-5, rtol=1e-5)
    assert distilled["model"]["sparsity"] == 60 and ours.config.sparsity == 60
    if family == "llama":  # --do_test on the first blocks of the test split only
        (data / "test.txt").write_text((data / "train.txt").read_text())
        tested = run_distillation.main(as_lm(distill_args(sparse, data, tmp_path / "kd_test", "60S", "--max_steps", "1",
                                                          "--do_test", "--max_test_samples", "2")))
        blocks = load_split(SimpleNamespace(data_dir=str(data), max_length=16), get_task("lm"),
                            load_tokenizer(str(sparse)), "test", 2)
        expected = lm_metrics(load_model("sparsedecoder_lm", str(tmp_path / "kd_test" / "best")), blocks, 8,
                              Run(output_dir=tmp_path, device=torch.device("cpu")))
        assert len(blocks) == 2 and tested["test_metrics"]["perplexity"] == pytest.approx(expected["perplexity"])
    if family == "llama":  # the main job's summary: perplexities, tokens per second, greedy continuations
        assert report.main(["--minidisc_dir", str(tmp_path / "mini"), "--data_dir", str(data), "--task_name", "lm",
                            "--repeats", "1", "--warmup", "0", "--num_batches", "1", "--batch_size", "2",
                            "--new_tokens", "3", "--prompts", "the film", "a story"]) == 0
        summary = json.loads((tmp_path / "mini" / "summary.json").read_text())
        assert summary["metric"] == "perplexity" and all(row["tokens_per_s"] > 0 for row in summary["rows"])
        assert summary["rows"][0]["dev"] == pytest.approx(mini["teacher_dev"]["perplexity"])
        assert [len(sample["continuations"]) for sample in summary["samples"]] == [len(summary["rows"])] * 2
        assert "Greedy continuations of “a story”" in (tmp_path / "mini" / "summary.md").read_text()


def test_the_planner_counts_the_vocabulary_projection_and_its_chunk():
    from models import SparseDecoderCls
    from utils.command.planner import GIB, plan_rows

    config = make_tiny_decoder_config("llama", tie_word_embeddings=False)
    lm, cls = SparseDecoderLM(copy.deepcopy(config)), SparseDecoderCls(copy.deepcopy(config))
    (row_lm,), (row_cls,) = (plan_rows(model, [0], batch_size=4, seq_len=16, devices=1, teacher_params=None)
                             for model in (lm, cls))
    assert row_lm["train_flops_per_token"] - row_cls["train_flops_per_token"] == 3 * 2 * 48 * 101
    extra = row_lm["memory_gib"]["fp32"]["activations"] - row_cls["memory_gib"]["fp32"]["activations"]
    assert extra * GIB == pytest.approx(4 * 3 * SparseDecoderLM.lm_chunk * 101)


def test_objectives_that_do_not_fit_the_task_are_one_line_errors(make_sst2_task, tmp_path, capsys):
    from utils.command.cli import cli
    from utils.engine.distillation import LMDistillObjective
    from utils.errors import ArgumentError

    data = lm_corpus(tmp_path / "data", documents=30)
    pretrained = save_tiny_decoder_pretrained(tmp_path / "llama", "llama")
    for task_dir, extra, message in (
            (data, ("--objective", "hidden_cos"), "--objective hidden_cos does not fit task lm: use lm_kd, lm_kd_cos"),
            (make_sst2_task(), ("--objective", "lm_kd"), "--objective lm_kd does not fit task sst2"),
            (make_sst2_task(), ("--lm_loss_weight", "0.5"), "--lm_loss_weight 0.5 is for language models")):
        args = distill_args(pretrained, task_dir, tmp_path / "x", "50S", *extra)
        assert cli(run_distillation.main, as_lm(args) if task_dir == data else args) == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]
    with pytest.raises(ArgumentError, match="--fsdp: language-model distillation reads the teacher's output weight"):
        LMDistillObjective(SparseDecoderLM(make_tiny_decoder_config("llama")), sharded=True)
