"""Mixed precision: bfloat16 autocast on the CPU against fp32, model by model and script by script.

Tolerance. bf16 keeps 8 significant bits (unit roundoff 2^-9, about 0.2%); autocast rounds the
inputs of every matmul and of attention, while the residual stream, LayerNorms and losses stay
fp32. We compare by relative error in the Frobenius norm, ``|a - b| / |b|``, i.e. relative to the
scale of the whole output (or of one parameter's whole gradient). Over every case below the tiny
4-layer models measure at most 1.8% (median 0.8%) on losses, logits and hidden states, and at most
6.5% (median 2%) on a single parameter's gradient (the worst are 32-element biases, whose gradient
is a sum over tokens that partly cancels). FWD_TOL = 3% and GRAD_TOL = 10% leave 1.5-2x headroom.

The models are built with ``initializer_range=0.2`` so that every head and neuron matters: at
BERT's 0.02 a random layer's projections are ~10% of its residual and masking one head moves the
logits by less than bf16 noise. At 0.2, masking one head or four neurons of one layer moves the
logits by 30-40% and some gradient by 30-90%, which
:func:`test_tolerance_detects_one_masked_head_or_four_neurons` checks stays 3x above the
tolerances; so a dropped residual, a wrong slice or a lost bias fails these tests.
"""

import copy
import json
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import run_finetuning
import run_minidisc
import run_sparsification
from data.pipelines import encode_dataset
from data.readers import read_examples
from data.tasks import get_task
from models.fast_ops import CPU_ROW_MULTIPLE, WeightCasts, sliced_linear, weight_slice
from tests.helpers import (
    finetune_args,
    make_tiny_config,
    padded_batch,
    random_sparsity_map,
    read_jsonl,
    schedule_args,
    sparsify_args,
    tiny_model,
)
from tests.test_distributed import free_port
from utils.command.args import RunArguments
from utils.command.cli import cli
from utils.command.run import Run, RunError, _amp_dtype, start_run
from utils.engine.distillation import LMDistillObjective
from utils.engine.importance_pass import accumulate_importance
from utils.engine.objectives import DistillObjective, SandwichObjective
from utils.engine.sharding import Placed
from utils.engine.step import MixedPrecision, backward_batch, build_optimizer, optimizer_step
from utils.maths.importance import normalize_scores

FWD_TOL = 0.03
GRAD_TOL = 0.1
BF16 = torch.bfloat16
MODEL_TYPES = ("sparsebert_cls", "sparsebert_ner")
NUM_LABELS = 3
# A random level of a random map, and a level at which layer 1 has no head and layer 2 no neuron left.
LEVEL = (30, 60, 90)[int(torch.randint(3, (1,), generator=torch.Generator().manual_seed(11)))]
EMPTY_LEVEL = 95


def sparsity_map() -> dict:
    config = make_tiny_config()
    result = random_sparsity_map(config, (30, 60, 90), seed=4)
    # the 90% entry again, with layer 1's heads and layer 2's neurons all removed too
    result[EMPTY_LEVEL] = random_sparsity_map(config, (90,), seed=4, emptied=True)[90]
    return result


def build(model_type: str, dropout: float = 0.0, seed: int = 0, num_labels: int = NUM_LABELS):
    return tiny_model(model_type, num_labels, sparsity_map=sparsity_map(), seed=seed, initializer_range=0.2,
                      hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)


def make_batch(model_type: str, padding: bool = True, seed: int = 1, size: int = 4, seq_len: int = 12):
    generator = torch.Generator().manual_seed(seed)
    batch = padded_batch(generator, size, seq_len, {1: 7, 3: 3} if padding else {})
    attention_mask = batch["attention_mask"]
    if model_type == "sparsebert_ner":
        labels = torch.randint(0, NUM_LABELS, (size, seq_len), generator=generator)
        labels[attention_mask == 0] = -100
    else:
        labels = torch.randint(0, NUM_LABELS, (size,), generator=generator)
    return batch, labels


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double(), expected.detach().double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def assert_close(actual, expected, tol=FWD_TOL, what=""):
    assert actual.shape == expected.shape, what
    err = rel_err(actual, expected)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol}"


def assert_grads_close(grads16: dict, grads32: dict, tol=GRAD_TOL):
    """Per parameter: relative error within ``tol``, and fp32's exact zeros (sliced-off rows, emptied
    layers, unused embeddings) exactly zero in bf16 too.

    The key bias is the exception: its gradient is zero in exact arithmetic (softmax ignores a
    per-query constant), so both precisions hold only rounding noise there; bf16's noise must stay
    small next to the key weight's gradient (each ``sum`` over tokens of ``dK``, which cancels).
    """
    assert grads16.keys() == grads32.keys()
    for name, g32 in grads32.items():
        g16 = grads16[name]
        assert g16.dtype == g32.dtype == torch.float32, name
        if name.endswith("key.bias"):
            scale = grads32[name.replace("key.bias", "key.weight")].norm().item()
            assert g16.norm().item() <= tol * scale, f"{name}: {g16.norm().item():.3g} vs key.weight {scale:.3g}"
            continue
        assert torch.all(g16[g32 == 0] == 0), f"{name}: gradient where fp32 has none"
        err = rel_err(g16, g32)
        assert err <= tol, f"{name}: gradient relative error {err:.3g} > {tol}"


def forward_backward(model, batch, labels, amp: bool, head_mask=None, neuron_mask=None):
    """One forward (bf16 autocast or fp32) and backward; the same dropout masks in both precisions."""
    model.zero_grad(set_to_none=True)
    masks = [m.detach().clone().requires_grad_() if m is not None else None for m in (head_mask, neuron_mask)]
    torch.manual_seed(7)
    with torch.autocast("cpu", dtype=BF16, enabled=amp):
        out = model(**batch, labels=labels, head_mask=masks[0], neuron_mask=masks[1])
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    for name, mask in zip(("head_mask", "neuron_mask"), masks, strict=True):
        if mask is not None:
            grads[name] = mask.grad
    return out, grads


def assert_outputs_close(out16, out32, attention_mask):
    assert out16.loss.dtype == torch.float32
    assert_close(out16.loss, out32.loss, what="loss")
    assert_close(out16.logits, out32.logits, what="logits")
    assert len(out16.hidden_states) == len(out32.hidden_states)
    padding = attention_mask == 0
    for i, (h16, h32) in enumerate(zip(out16.hidden_states, out32.hidden_states, strict=True)):
        assert h16.dtype == torch.float32, "the residual stream (and its LayerNorms) must stay fp32"
        assert_close(h16, h32, what=f"hidden state {i}")
        assert not h16[padding].any(), f"hidden state {i} is not zero at padding"


def random_masks(seed: int = 5):
    generator = torch.Generator().manual_seed(seed)
    head_mask = (torch.rand(4, 4, generator=generator) > 0.3).float()
    neuron_mask = (torch.rand(4, 37, generator=generator) > 0.3).float()
    head_mask[1] = 0  # a layer emptied of heads by its mask
    neuron_mask[2] = 0  # and one emptied of neurons
    return head_mask, neuron_mask


SETUPS = ("full", "masked", "sliced", "densified", "sliced_emptied", "densified_emptied")
MODES = ("eval", "train", "train_dropout")


def prepared(model_type: str, setup: str, mode: str):
    model = build(model_type, dropout=0.1 if mode == "train_dropout" else 0.0)
    model.train(mode != "eval")
    masks = random_masks() if setup == "masked" else (None, None)
    if setup.startswith(("sliced", "densified")):
        model.sparsify(EMPTY_LEVEL if setup.endswith("emptied") else LEVEL)
        if setup.startswith("densified"):
            model.densify()
    return model, masks


@pytest.mark.parametrize("padding", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_bf16_forward_and_backward_match_fp32(model_type, setup, mode, padding):
    model, (head_mask, neuron_mask) = prepared(model_type, setup, mode)
    if setup.endswith("emptied"):
        assert model.kept_widths()["head"][1] == 0 and model.kept_widths()["neuron"][2] == 0
    batch, labels = make_batch(model_type, padding)
    out32, grads32 = forward_backward(model, batch, labels, False, head_mask, neuron_mask)
    out16, grads16 = forward_backward(model, batch, labels, True, head_mask, neuron_mask)
    assert out16.logits.dtype == BF16  # autocast did run the matmuls in bf16
    assert_outputs_close(out16, out32, batch["attention_mask"])
    assert_grads_close(grads16, grads32)


def test_tolerance_detects_one_masked_head_or_four_neurons():
    """What the tolerances must catch: a small structural change moves fp32 outputs far beyond them."""
    for model_type in MODEL_TYPES:
        model = build(model_type).eval()
        batch, labels = make_batch(model_type)
        reference, grads = forward_backward(model, batch, labels, False)
        head_mask, neuron_mask = torch.ones(4, 4), torch.ones(4, 37)
        head_mask[2, 0] = 0
        neuron_mask[3, :4] = 0
        for masks in ((head_mask, None), (None, neuron_mask)):
            changed, changed_grads = forward_backward(model, batch, labels, False, *masks)
            assert rel_err(changed.logits, reference.logits) > 3 * FWD_TOL
            assert rel_err(changed.hidden_states[-1], reference.hidden_states[-1]) > 3 * FWD_TOL
            worst = max(rel_err(changed_grads[name], g) for name, g in grads.items() if "key.bias" not in name)
            assert worst > 3 * GRAD_TOL


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_teacher_forward_under_no_grad(model_type):
    teacher = build(model_type, dropout=0.1)
    teacher.sparsify(LEVEL)
    teacher.densify()
    teacher.eval()
    batch, _ = make_batch(model_type)
    with torch.no_grad():
        out32 = teacher(**batch)
        with torch.autocast("cpu", dtype=BF16):
            out16 = teacher(**batch)
    assert_close(out16.logits, out32.logits, what="logits")
    for i, (h16, h32) in enumerate(zip(out16.hidden_states, out32.hidden_states, strict=True)):
        assert h16.dtype == torch.float32 and not h16.requires_grad
        assert_close(h16, h32, what=f"hidden state {i}")


def test_regression_loss_keeps_the_gold_scores_in_fp32():
    model = build("sparsebert_cls", num_labels=1).eval()
    batch, _ = make_batch("sparsebert_cls")
    labels = torch.tensor([3.7, 0.2, 4.9, 1.3])
    with torch.autocast("cpu", dtype=BF16):
        out = model(**batch, labels=labels)
    expected = torch.nn.functional.mse_loss(out.logits.float().squeeze(-1), labels)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=0)


def test_importance_pass_under_bf16(tokenizer, sst2_task, tmp_path):
    task = get_task("sst2")
    dev = encode_dataset(task, read_examples(task, sst2_task, "dev"), tokenizer, 32)
    model = build("sparsebert_cls", dropout=0.1, num_labels=2)
    cpu = torch.device("cpu")
    head32, neuron32 = accumulate_importance(model, dev, 4, Run(output_dir=tmp_path, device=cpu))
    head16, neuron16 = accumulate_importance(model, dev, 4, Run(output_dir=tmp_path, device=cpu, amp_dtype=BF16))
    assert model.training and not any(p.grad is not None for p in model.parameters())
    for scores16, scores32, top in ((head16, head32, 4), (neuron16, neuron32, 30)):
        assert scores16.dtype == torch.float64 and scores16.shape == scores32.shape
        a, b = normalize_scores(scores16), normalize_scores(scores32)
        for layer in range(a.shape[0]):
            assert_close(a[layer], b[layer], what=f"layer {layer} importance")
        # the most important units overall are (mostly) the same ones
        common = set(a.flatten().topk(top).indices.tolist()) & set(b.flatten().topk(top).indices.tolist())
        assert len(common) >= 0.8 * top


@pytest.mark.parametrize("padding", [True, False], ids=["padded", "unpadded"])
def test_minidisc_sandwich_step_under_bf16(padding):
    """One MiniDisc step as the loop runs it: teacher under autocast + no_grad, one backward per width."""
    teacher = build("sparsebert_cls", seed=0).eval()
    student = build("sparsebert_cls", dropout=0.1, seed=1).train()
    batch, _ = make_batch("sparsebert_cls", padding)

    def step(amp: bool):
        student.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        objective = SandwichObjective(DistillObjective(teacher), [0, 30, 60, 90])
        with torch.autocast("cpu", dtype=BF16, enabled=amp):
            objective.prepare(batch)
        losses = []
        for p in range(objective.num_passes):
            with student.at_sparsity(objective.width(p)):
                with torch.autocast("cpu", dtype=BF16, enabled=amp):
                    loss = objective.loss(student, student, batch, p)
                loss.backward()
            losses.append(loss.detach())
        return losses, {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}

    losses32, grads32 = step(False)
    losses16, grads16 = step(True)
    for width, l16, l32 in zip([90, 60, 30, 0], losses16, losses32, strict=True):
        assert l16.dtype == torch.float32
        assert_close(l16, l32, what=f"loss at width {width}")
    assert_grads_close(grads16, grads32)


# --------------------------------------------------------------------------------------------
# Weight casts made once (MixedPrecision) against autocast's own casts

# One case per way a width slices its weights: prefixes (BERT, T5), index sets (a decoder's query-slot units,
# Phi-3's fused tensors) and the language model's chunked head loss (the output weight read in its own node).
CAST_CASES = {
    "bert": ("sparsebert_cls", {}),
    "enct5": ("sparseenct5_cls", {}),
    "decoder_query_slots": ("sparsedecoder_cls", {"head_unit": "query"}),
    "phi3": ("sparsedecoder_cls", {"family": "phi3"}),
    "lm": ("sparsedecoder_lm", {}),
}


def sandwich_steps(case: str, precision_of, steps: int = 2, ddp: bool = False):
    """``steps`` MiniDisc sandwich steps (teacher forward, widths 90, 60, 30, 0, one backward each, then the loop's
    optimizer step) of a tiny ``case`` model under the context ``precision_of()`` gives, the student wrapped in
    DistributedDataParallel with ``ddp`` (a process group must exist); returns the first step's gradients and the
    weights after the last step."""
    model_type, config = CAST_CASES[case]
    teacher = tiny_model(model_type, levels=(30, 60, 90), seed=0, initializer_range=0.2, **config).eval()
    student = copy.deepcopy(teacher).train()
    distill = LMDistillObjective(teacher) if model_type.endswith("_lm") else DistillObjective(teacher)
    objective = SandwichObjective(distill, [30, 60, 90])
    optimizer = build_optimizer(student, SimpleNamespace(learning_rate=1e-2, weight_decay=0.01))
    wrapped = DistributedDataParallel(student, find_unused_parameters=True) if ddp else student
    placed = Placed(student, wrapped, sharded=False, distributed=ddp)
    precision = precision_of()
    torch.manual_seed(3)
    grads = None
    for step in range(steps):
        batch, labels = make_batch("sparsebert_cls", seed=step)
        backward_batch(objective, placed, {**batch, "labels": labels % 2}, autocast=precision)
        if grads is None:
            grads = {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}
        optimizer_step(student, optimizer, 1.0, precision=precision)
    return grads, {name: p.detach().clone() for name, p in student.named_parameters()}, precision


@pytest.mark.parametrize("case", CAST_CASES)
def test_weights_cast_once_give_autocast_gradients(case):
    """The gradients that reach the fp32 weights, and the weights after two optimizer steps, are autocast's bit for
    bit: every slice of the stored copies holds what autocast converts, and a copy is made again after each step.
    (At these sizes the padded rows of the CPU's matmuls change no sum's order either; at real sizes a weight's
    gradient may differ by one bf16 rounding: test_rows_padded_for_the_cpu_give_autocast_values_and_gradients.)"""
    grads_autocast, weights_autocast, _ = sandwich_steps(case, lambda: torch.autocast("cpu", dtype=BF16))
    grads_once, weights_once, precision = sandwich_steps(case, lambda: MixedPrecision("cpu", BF16))
    assert len(precision.casts) > 0  # the copies were used
    assert grads_once.keys() == grads_autocast.keys()
    for name, grad in grads_autocast.items():
        assert torch.equal(grads_once[name], grad), name
    for name, weight in weights_autocast.items():
        assert torch.equal(weights_once[name], weight), name
    # the check has teeth: without the copies made again after a step, the second step differs
    _, stale, _ = sandwich_steps(case, lambda: _NeverForgets("cpu", BF16))
    assert any(not torch.equal(stale[name], weight) for name, weight in weights_autocast.items())


def test_weights_cast_once_under_ddp():
    """Under DistributedDataParallel (one gloo process: its reducer and hooks, the passes before the last under
    no_sync) the copies give autocast's gradients and weights bit for bit."""
    port = free_port()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        grads_autocast, weights_autocast, _ = sandwich_steps("decoder_query_slots",
                                                             lambda: torch.autocast("cpu", dtype=BF16), ddp=True)
        grads_once, weights_once, _ = sandwich_steps("decoder_query_slots", lambda: MixedPrecision("cpu", BF16),
                                                     ddp=True)
    finally:
        dist.destroy_process_group()
    assert grads_once.keys() == grads_autocast.keys()
    for name, grad in grads_autocast.items():
        assert torch.equal(grads_once[name], grad), name
    for name, weight in weights_autocast.items():
        assert torch.equal(weights_once[name], weight), name


@pytest.mark.parametrize("rows,size", [(39, 5), (2 * CPU_ROW_MULTIPLE, 5), (850, 384)])
def test_rows_padded_for_the_cpu_give_autocast_values_and_gradients(rows, size):
    """Under weight casts on the CPU a linear's rows are padded to a multiple of CPU_ROW_MULTIPLE (39 -> 64, 850 ->
    896; 128 is left as it is). The outputs and the input's gradient are autocast's bit for bit. The weight's and the
    bias's gradients sum over the padded rows, which oneDNN may add in another order: at real sizes (850 rows of 384,
    up to 1,536 outputs) they differ from autocast's by one bf16 rounding of some entries, 4e-5 of their norm at
    most over MiniLM's and SmolLM2's shapes, against the ~1e-2 that bf16 itself is from fp32."""
    linear = torch.nn.Linear(size, 4 * size)
    for dim, keep in ((0, 2 * size), (1, size // 2 + 1)):
        x = torch.randn(3, rows // 3 + (rows % 3 > 0), size if dim == 0 else keep, requires_grad=True)
        with WeightCasts(BF16), torch.autocast("cpu", dtype=BF16):
            out = sliced_linear(x, linear, dim, keep)
        with torch.autocast("cpu", dtype=BF16):
            weight = linear.weight[:keep] if dim == 0 else linear.weight[:, :keep]
            expected = torch.nn.functional.linear(x, weight, linear.bias[:keep] if dim == 0 else linear.bias)
        assert out.shape == expected.shape and out.dtype == BF16 and torch.equal(out, expected)
        upstream = torch.randn(out.shape).to(BF16)
        grads = torch.autograd.grad(out, (x, linear.weight, linear.bias), upstream)
        expected_grads = torch.autograd.grad(expected, (x, linear.weight, linear.bias), upstream)
        assert all(grad.dtype == torch.float32 for grad in grads)
        assert torch.equal(grads[0], expected_grads[0])
        for grad, expected_grad in zip(grads[1:], expected_grads[1:], strict=True):
            assert torch.equal(grad == 0, expected_grad == 0)  # the rows and columns not in use get exactly none
            assert rel_err(grad, expected_grad) <= 1e-3


class _NeverForgets(MixedPrecision):
    """A MixedPrecision that keeps its copies across optimizer steps (what the loop must not do)."""

    def updated(self, parameters) -> None:
        pass


def test_weight_casts_follow_the_weight_and_its_gradient():
    """A slice of a stored copy: the value autocast would convert, and autocast's gradient at the slice's indices
    (zeros elsewhere); made again when the weight changes in place; outside autocast, the fp32 slice itself."""
    weight = torch.randn(6, 5, requires_grad=True)
    casts = WeightCasts(BF16)
    for dim, keep in ((0, 4), (1, 3), (0, 6), (1, torch.tensor([4, 0, 2]))):
        expected = weight.narrow(dim, 0, keep) if isinstance(keep, int) else weight.index_select(dim, keep)
        with casts, torch.autocast("cpu", dtype=BF16):
            sliced = weight_slice(weight, dim, keep)
        assert sliced.dtype == BF16 and torch.equal(sliced, expected.to(BF16))
        upstream = torch.randn(sliced.shape).to(BF16)
        (grad,) = torch.autograd.grad(sliced, weight, upstream)
        (expected_grad,) = torch.autograd.grad(expected.to(BF16), weight, upstream)
        assert grad.dtype == torch.float32 and torch.equal(grad, expected_grad)
    assert len(casts) == 1
    with torch.no_grad():
        weight.mul_(2)
    with casts, torch.autocast("cpu", dtype=BF16):
        assert torch.equal(weight_slice(weight, 0, 6), weight.detach().to(BF16))
    with casts:
        assert weight_slice(weight, 0, 2).dtype == torch.float32


# --------------------------------------------------------------------------------------------
# Flags and scripts


def test_amp_dtype_bf16_on_the_cpu_and_fp16_only_on_cuda():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)

    def flags(fp16=False, bf16=False):
        return SimpleNamespace(use_fp16=fp16, use_bf16=bf16)

    assert _amp_dtype(flags(bf16=True), cpu) is BF16
    assert _amp_dtype(flags(bf16=True), cuda) is BF16
    assert _amp_dtype(flags(fp16=True), cuda) is torch.float16
    assert _amp_dtype(flags(), cpu) is None and _amp_dtype(flags(), cuda) is None
    with pytest.raises(RunError) as error:
        _amp_dtype(flags(fp16=True), cpu)
    message = str(error.value)
    assert "\n" not in message
    assert "--use_fp16" in message and "CUDA" in message and "--use_bf16" in message


def test_start_run_records_bf16_on_the_cpu(tmp_path):
    @dataclass
    class Arguments:
        run: RunArguments

    run = start_run(Arguments(RunArguments(output_dir=str(tmp_path / "run"), use_cpu=True, use_bf16=True)), "test")
    assert run.device.type == "cpu" and run.amp_dtype is BF16
    assert json.loads((tmp_path / "run" / "args.json").read_text())["amp_dtype"] == "torch.bfloat16"


# fine-tuning here: 4 steps on the CPU, evaluated every 2
CPU_RUN = ("--log_interval", "2", "--max_steps", "4", "--use_cpu")


def test_use_fp16_on_the_cpu_is_refused_with_one_line(plain_teacher, make_sst2_task, tmp_path, capsys):
    task = make_sst2_task(n_train=16, n_dev=8, n_test=4)
    args = finetune_args(plain_teacher, task, tmp_path / "ft", *CPU_RUN, "--use_fp16")
    assert cli(run_finetuning.main, args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and "--use_fp16" in lines[-1] and "--use_bf16" in lines[-1]
    assert not (tmp_path / "ft" / "results.json").exists()


def test_scripts_run_end_to_end_with_use_bf16(plain_teacher, make_sst2_task, tmp_path):
    task = make_sst2_task(n_train=16, n_dev=8, n_test=4)
    ft = tmp_path / "ft"
    results = run_finetuning.main(finetune_args(plain_teacher, task, ft, *CPU_RUN, "--use_bf16"))
    assert json.loads((ft / "args.json").read_text())["amp_dtype"] == "torch.bfloat16"
    assert (ft / "results.json").exists() and results["best_score"] >= 0
    assert all(torch.isfinite(torch.tensor(line["train_loss"])) for line in read_jsonl(ft / "metrics.jsonl"))

    sparse = tmp_path / "sparse"
    run_sparsification.main(sparsify_args(ft / "best", task, sparse, "--use_cpu", "--use_bf16",
                                          sparsities="50,70,90"))
    assert (sparse / "results.json").exists() and (sparse / "model" / "importance.json").exists()
    importance = json.loads((sparse / "model" / "importance.json").read_text())
    assert all(sum(row) > 0 for row in importance["head"] + importance["neuron"])

    mini = tmp_path / "mini"
    results = run_minidisc.main(schedule_args(sparse / "model", task, mini, "--per_device_eval_batch_size",
                                              "8", "--log_interval", "2", "--max_steps", "2",
                                              "--target_iteration", "1", "--use_cpu", "--use_bf16"))
    assert (mini / "results.json").exists() and results["model"]["sparsity"] == 90
    assert json.loads((mini / "args.json").read_text())["amp_dtype"] == "torch.bfloat16"
