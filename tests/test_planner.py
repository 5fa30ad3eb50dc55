"""The --dry_run planner: exact parameter counts of published configs (checked against HF's own modules on
the meta device), FLOPs against torch's FLOP counter, maps, memory arithmetic and errors."""

import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertModel
from transformers.models.t5.modeling_t5 import T5Block, T5EncoderModel

import run_distillation
import run_finetuning
import run_minidisc
import run_sparsification
from models import SparseBertCls
from tests.helpers import distill_args, finetune_args, schedule_args, sparsify_args, tiny_model
from utils.command.cli import cli
from utils.command.planner import (
    DEFAULT_LEVELS,
    GIB,
    build_on_meta,
    fsdp_units,
    load_plan_config,
    published_names,
)


def hf_enct5_count(name: str, num_labels: int) -> int:
    """EncT5's parameters counted from HF's modules on the meta device: ``T5EncoderModel`` (shared
    embeddings + encoder), one decoder ``T5Block`` with its position-bias table, the decoder's final norm,
    the learned decoder input and the classifier."""
    config = load_plan_config(name)
    decoder_config = copy.deepcopy(config)
    decoder_config.is_decoder = True
    with torch.device("meta"):
        encoder = T5EncoderModel(copy.deepcopy(config))
        block = T5Block(decoder_config, has_relative_attention_bias=True, layer_idx=0)
    d = config.d_model
    return (sum(p.numel() for p in encoder.parameters()) + sum(p.numel() for p in block.parameters())
            + d + d + d * num_labels + num_labels)


def test_enct5_3b_has_the_exact_parameter_count_of_hf_t5_modules(tmp_path, make_sst2_task, capsys):
    expected = hf_enct5_count("t5-3b", 2)
    assert 1.30e9 < expected < 1.32e9
    plan = run_minidisc.main(schedule_args("t5-3b", make_sst2_task(), tmp_path / "never", "--dry_run",
                                           "--dry_run_devices", "8"))
    full = plan["levels"][0]
    assert full["sparsity"] == 0 and full["total_parameters"] == expected
    assert f"{expected:,}" in capsys.readouterr().out
    assert not (tmp_path / "never").exists()
    # the prunable part: 24 encoder layers and the decoder block (Q, K, V, O of 26 attentions; 25 FFNs)
    assert full["prunable_parameters"] == 26 * 4 * 1024 * 32 * 128 + 25 * 2 * 1024 * 16384
    assert [row["sparsity"] for row in plan["levels"]] == list(DEFAULT_LEVELS)
    sizes = [row["total_parameters"] for row in plan["levels"]]
    assert sizes == sorted(sizes, reverse=True)
    # sharding divides weights, gradients, AdamW state and the teacher by the devices; activations, the teacher
    # cache (2 GiB by default) and what FSDP2 gathers stay whole
    memory = full["memory_gib"]["bf16"]
    assert memory["weights_grads_adamw"] == pytest.approx(16 * expected / GIB)
    assert memory["teacher"] == pytest.approx(4 * expected / GIB)
    assert memory["teacher_cache"] == pytest.approx(2.0)
    assert memory["sharded"] == pytest.approx((memory["weights_grads_adamw"] + memory["teacher"]) / 8
                                              + memory["teacher_cache"] + memory["activations"]
                                              + memory["gathered_student"] + memory["gathered_teacher"]
                                              + memory["optimizer_step"])
    assert full["memory_gib"]["fp32"]["activations"] > memory["activations"]


@pytest.mark.parametrize("name", ["google/flan-t5-xl", "t5-small"])
def test_other_t5_configs_match_hf(name):
    model = build_on_meta("sparseenct5_cls", load_plan_config(name), 3)
    assert model.count_parameters()["total"] == hf_enct5_count(name, 3)


def test_bert_base_matches_hf_without_the_pooler():
    config = load_plan_config("bert-base-uncased")
    model = build_on_meta("sparsebert_cls", copy.deepcopy(config), 2)
    with torch.device("meta"):
        hf = BertModel(copy.deepcopy(config))
    d = config.hidden_size
    pooler = d * d + d
    head = (d * d + d) + (d * 2 + 2)
    assert model.count_parameters()["total"] == sum(p.numel() for p in hf.parameters()) - pooler + head


def attention_flops(model, seq_len: int) -> int:
    """Scores and weighted sums by hand: every encoder attention over ``seq_len`` keys; EncT5's decoder
    self-attention over its one position and cross-attention over the encoder's tokens."""
    widths = [w * model.config.d_kv if hasattr(model.config, "d_kv") else
              w * model.config.hidden_size // model.config.num_attention_heads for w in model.kept_widths()["head"]]
    layers = model.depth
    flops = sum(4 * seq_len * seq_len * w for w in widths[:layers])
    if len(widths) > layers:
        flops += 4 * widths[layers] + 4 * seq_len * widths[layers + 1]
    return flops


@pytest.mark.parametrize("model_type", ["sparsebert_cls", "sparseenct5_cls"])
def test_forward_flops_match_torch_flop_counter(model_type):
    """Projections (the linears' matmuls) counted by torch's FlopCounterMode, attention by hand (the counter
    does not see every CPU attention kernel); under autocast BERT's projections are plain linears."""
    model = tiny_model(model_type, 2, levels=(60,)).eval()
    seq_len = 12
    ids = torch.randint(3, 60, (2, seq_len))
    head = sum(p.numel() for name, p in model.named_parameters() if name.startswith(("cls", "classifier")))
    for level in (0, 60):
        model.sparsify(level)
        with FlopCounterMode(display=False) as counter, torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
        counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
        linear = counts.get("aten.addmm", 0) + counts.get("aten.mm", 0)
        projections = linear / 2 - 2 * head  # per sequence, the task head left out
        planned = model.training_cost(seq_len)["forward_flops"]
        assert planned == pytest.approx(projections + attention_flops(model, seq_len), rel=0.02), level


def test_a_sparsified_teacher_is_planned_with_its_own_map(sparse_teacher, sst2_task, tmp_path):
    plan = run_distillation.main(distill_args(sparse_teacher, sst2_task, tmp_path / "out", "90S", "--dry_run"))
    assert plan["map"] == "the config's sparsity map"
    model = SparseBertCls.from_pretrained(sparse_teacher)
    assert [row["sparsity"] for row in plan["levels"]] == model.available_sparsities()
    for row in plan["levels"]:
        model.sparsify(row["sparsity"])
        assert row["prunable_parameters"] == model.count_parameters()["prunable"]
        assert row["heads_kept"] == sum(model.kept_widths()["head"])


def test_finetuning_and_sparsification_plan_without_a_teacher(sst2_task, tmp_path):
    plan = run_finetuning.main(finetune_args("bert-base-uncased", sst2_task, tmp_path / "ft", "--dry_run"))
    assert plan["map"].startswith("uniform") and plan["levels"][0]["memory_gib"]["fp32"]["teacher"] == 0
    plan = run_sparsification.main(sparsify_args("google/t5-v1_1-base", sst2_task, tmp_path / "sp", "--dry_run",
                                                 sparsities="50,90"))
    assert [row["sparsity"] for row in plan["levels"]] == [0, 50, 90]
    assert plan["model_type"] == "sparseenct5_cls"


def test_unknown_names_are_one_line_errors(sst2_task, tmp_path, capsys):
    assert cli(run_finetuning.main, finetune_args("t5-9z", sst2_task, tmp_path / "x", "--dry_run")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--model_name_or_path t5-9z: not a model directory and not a published config" in err
    assert "google/flan-t5-xl" in err and "t5-3b" in published_names()


@pytest.mark.parametrize(("name", "model_class"), [("meta-llama/Llama-3.1-8B", "LlamaModel"),
                                                   ("Qwen/Qwen3-8B", "Qwen3Model"),
                                                   ("HuggingFaceTB/SmolLM2-135M", "LlamaModel")])
def test_decoder_configs_match_hf_models_on_meta(name, model_class):
    """Our classifier = HF's decoder (no LM head) + the score head, counted on the meta device."""
    import transformers

    config = load_plan_config(name)
    model = build_on_meta("sparsedecoder_cls", copy.deepcopy(config), 2)
    with torch.device("meta"):
        hf = getattr(transformers, model_class)(copy.deepcopy(config))
    assert model.count_parameters()["total"] == sum(p.numel() for p in hf.parameters()) + 2 * config.hidden_size


def test_llama_8b_plan(make_sst2_task, tmp_path, capsys):
    plan = run_minidisc.main(schedule_args("meta-llama/Llama-3.1-8B", make_sst2_task(), tmp_path / "never",
                                           "--dry_run", "--dry_run_devices", "8"))
    full = plan["levels"][0]
    # 8.03 B with the 128,256 x 4,096 LM head, which a classifier does not have
    assert full["total_parameters"] + 128_256 * 4_096 - 2 * 4_096 == 8_030_261_248
    assert full["heads_kept"] == 32 * 32 and full["num_layers"] == 32
    assert "7,504,932,864" in capsys.readouterr().out
    sizes = [row["total_parameters"] for row in plan["levels"]]
    assert sizes == sorted(sizes, reverse=True) and len(sizes) == len(DEFAULT_LEVELS)


def test_the_sharded_peak_holds_what_fsdp2_gathers(make_sst2_task, tmp_path, capsys):
    """Llama-3.1-8B over 8 devices in bf16: FSDP2's units counted by hand (the root: embeddings, final norm and
    score head; a layer: attention and SwiGLU projections and two norms); a single pass gathers the root and
    two layers of the student and of the teacher, with the student's whole fp32 gradients; MiniDisc's sandwich
    keeps the whole student gathered with its gradient for the step, which is most of its peak."""
    d, kv, ffn, vocab = 4096, 1024, 14336, 128_256
    root, layer = vocab * d + d + 2 * d, d * (2 * d + 2 * kv) + 3 * d * ffn + 2 * d
    config = load_plan_config("meta-llama/Llama-3.1-8B")
    assert fsdp_units(build_on_meta("sparsedecoder_cls", config, 2)) == (root, layer)
    flags = ["--per_device_train_batch_size", "8", "--dry_run", "--dry_run_devices", "8"]
    task = make_sst2_task()
    distil = run_distillation.main(distill_args("meta-llama/Llama-3.1-8B", task, tmp_path / "never", "90S", *flags))
    sandwich = run_minidisc.main(schedule_args("meta-llama/Llama-3.1-8B", task, tmp_path / "never", *flags))
    assert "peak memory in GiB per device" in capsys.readouterr().out
    assert not distil["sandwich"] and sandwich["sandwich"]
    full = sandwich["levels"][0]["total_parameters"]
    for plan in (distil, sandwich):
        student = next(row for row in plan["levels"] if row["sparsity"] == 90)
        memory = student["memory_gib"]["bf16"]
        assert memory["gathered_teacher"] == pytest.approx((root + 2 * layer) * 2 / GIB)  # bf16, no gradients
        if plan is distil:
            assert memory["weights_grads_adamw"] == pytest.approx(16 * student["total_parameters"] / GIB)
            assert memory["gathered_student"] == pytest.approx((root + 2 * layer) * (2 + 4) / GIB)
        else:  # the supernet: full-width states at every level, all of it gathered
            assert memory["weights_grads_adamw"] == pytest.approx(16 * full / GIB)
            assert memory["gathered_student"] == pytest.approx(full * (2 + 4) / GIB)
        assert memory["sharded"] > memory["weights_grads_adamw"] / 8 + memory["gathered_student"]
        # without sharding: DDP's gradient buckets and the bf16 copies of the student's and the teacher's weights
        assert memory["ddp_buckets"] == pytest.approx(memory["weights_grads_adamw"] / 4)
        assert memory["bf16_copies"] == pytest.approx(memory["weights_grads_adamw"] / 8 + memory["teacher"] / 2)
        assert student["memory_gib"]["fp32"]["bf16_copies"] == 0
    # the sandwich's whole gathered student (42 GiB) is more than its sharded states, teacher and cache together
    memory = sandwich["levels"][0]["memory_gib"]["bf16"]
    assert memory["gathered_student"] > (memory["weights_grads_adamw"] + memory["teacher"]) / 8 + 2
    assert 65 < memory["sharded"] < 75


def test_gradient_checkpointing_shrinks_the_planned_activations(make_sst2_task, tmp_path):
    base = schedule_args("t5-3b", make_sst2_task(), tmp_path / "never", "--dry_run")
    plain = run_minidisc.main(base)["levels"][0]["memory_gib"]["bf16"]
    checkpointed = run_minidisc.main(base + ["--gradient_checkpointing"])["levels"][0]["memory_gib"]["bf16"]
    assert checkpointed["weights_grads_adamw"] == plain["weights_grads_adamw"]
    # 24 layers: each keeps its input (4 kB a token in fp32, of its 114 kB), one layer keeps everything
    assert plain["activations"] / 24 < checkpointed["activations"] < plain["activations"] / 8
