"""CPU speed code of SparseBERT: a cheaper training dropout, the attention that uses it, and a fused
residual projection. Each computes the function of the plain torch call (the dropout draws from
the same distribution, with ``p`` rounded to a multiple of 2^-16); they exist because the plain
calls were measured slow on the CPU.

* Dropout (:func:`dropout`, :class:`FastDropout`): torch's CPU ``bernoulli_`` draws one number per
  element on a single thread. A MiniDisc sandwich step draws 13 hidden and 6 attention masks per
  width, which made them ~15% of the step on 2 CPU threads. A multi-threaded ``rand_like`` mask
  took ~17% off a sandwich step (MRPC batch 16: 3.12 -> 2.55 s with dynamic padding); four 16-bit
  lanes per 64-bit draw, one per element, then took 2.93 -> 2.60 s/step (bench_sandwich, MiniLM,
  7 widths). Only the bool mask is saved for backward. CUDA, eval, and ``p`` 0 or 1 use
  ``F.dropout``.
* Attention (:func:`attention`): ``F.scaled_dot_product_attention`` with dropout on the CPU falls
  back to its math path with ``bernoulli_``; there the same math runs here with the mask of
  :func:`keep_mask`.
* Residual projection (:func:`residual_linear`): accumulating the matmul into ``residual + bias``
  makes one pass over ``[B, T, hidden]`` fewer than a bias-initialised matmul followed by a
  residual add, which matters for narrow (pruned) layers.
* Weight casts (:class:`WeightCasts`, :func:`weight_slice`): under mixed precision, each weight's
  low-precision copy is made once and every width slices that copy. Autocast caches the copy of a
  whole parameter only, and only until its context exits (once per pass of a step), so a sandwich
  converted every slice again for every width and pass: 20% of a bf16 step on the CPU, as much as
  all its matmuls. The gradient reaches the fp32 weight as autocast's does. On the CPU,
  :func:`sliced_linear` also pads a linear's rows to a multiple of 64, so that oneDNN reuses the
  kernel it built for a shape instead of building one for every batch's token count.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVE_CASTS: list["WeightCasts"] = []


def keep_mask(shape: torch.Size, p: float) -> tuple[torch.Tensor, float]:
    """A CPU dropout mask: ``(keep [shape] bool, scale)`` with P(keep) = 1 - p' and ``scale = 1 / (1 - p')``.

    ``p'`` is ``p`` rounded to a multiple of 2^-16 (0.1 becomes 0.1000061), so the kept values are
    still scaled to keep the expectation exact. Each 64-bit draw of torch's CPU generator gives four
    16-bit lanes, one per element: ~2.5x faster than ``rand_like`` and ~4x faster than
    ``bernoulli_``, which on the CPU draw one number per element on a single thread. Seeded by
    ``torch.manual_seed`` like every other draw.
    """
    numel = math.prod(shape)
    drop = round(p * 65536)
    bits = torch.empty((numel + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    keep = bits.view(torch.int16)[:numel].view(shape) >= drop - 32768
    return keep, 65536 / (65536 - drop)


class _ApplyKeepMask(torch.autograd.Function):
    """``x * keep * scale``, saving only the bool mask (1 byte per element) for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(scale).mul_(keep)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad.mul(ctx.scale).mul_(keep), None, None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout ``[...] -> [...]`` with the mask of :func:`keep_mask` on the CPU in training; ``F.dropout`` elsewhere."""
    if not training or not 0 < p < 1 or x.device.type != "cpu" or torch.compiler.is_compiling():
        return F.dropout(x, p, training)
    keep, scale = keep_mask(x.shape, p)
    return _ApplyKeepMask.apply(x, keep, scale)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU training path is :func:`dropout`. ``forward(x [...]) -> [...]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def attention(q, k, v, attn_mask: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
    """Scaled dot-product attention ``[B, h, T, d] -> [B, h, T, d]``; ``attn_mask [B, 1, 1, T]`` bool (True = attend).

    ``F.scaled_dot_product_attention``, except in CPU training with attention dropout, where torch
    falls back to its math path with ``bernoulli_``: there the same math runs here with the mask of
    :func:`keep_mask` on the attention probabilities.
    """
    if dropout_p == 0.0 or q.device.type != "cpu" or torch.compiler.is_compiling():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
    if attn_mask is not None:
        scores = scores.masked_fill_(~attn_mask, float("-inf"))
    return torch.matmul(dropout(scores.softmax(-1), dropout_p, True), v)


def residual_linear(
    residual: torch.Tensor, features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """``residual + bias + features @ weight.T`` with the matmul accumulated into ``residual + bias``.

    ``residual [..., out]``, ``features [..., in]``, ``weight [out, in]``, ``bias [out]`` -> ``[..., out]``.
    Not for autocast: the in-place ``addmm_`` is not cast, so half-precision features meet the fp32
    weight and it raises. Not when the projection alone must go through dropout before the add.
    """
    summed = (residual + bias).flatten(0, -2)
    summed = summed.addmm_(features.flatten(0, -2), weight.t())
    return summed.view_as(residual)


class WeightCasts:
    """Low-precision copies of fp32 weights, each made once and reused until the weight changes.

    ``with casts:`` makes :func:`weight_slice` take its slices from these copies wherever autocast runs in
    ``casts.dtype``; the loop keeps one per training stage, so a frozen teacher's weights are converted once per
    stage and the student's once per optimizer step: the loop calls :meth:`forget` with the student's
    parameters after each step (the fused optimizer updates them without bumping their version counter). A copy
    is also made again when its weight was modified in place or replaced since. The copies hold no autograd
    graph; :func:`weight_slice` connects a slice of one to its fp32 weight.
    """

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        self._copies: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}

    def __enter__(self) -> "WeightCasts":
        _ACTIVE_CASTS.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE_CASTS.remove(self)

    def copy_of(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` in :attr:`dtype`, detached: the stored copy while ``weight`` is unchanged."""
        entry = self._copies.get(id(weight))
        if entry is None or entry[0] is not weight or entry[1] != weight._version:
            # the entry keeps the weight alive, so its id is not reused while the copy is stored
            entry = (weight, weight._version, weight.detach().to(self.dtype))
            self._copies[id(weight)] = entry
        return entry[2]

    def forget(self, parameters) -> None:
        """Drop the copies of ``parameters`` (after an optimizer step has changed them)."""
        for param in parameters:
            self._copies.pop(id(param), None)

    def __len__(self) -> int:
        return len(self._copies)


def _active_casts(weight: torch.Tensor) -> WeightCasts | None:
    """The innermost :class:`WeightCasts` that applies to ``weight`` here and now, or None."""
    if not _ACTIVE_CASTS or weight.dtype != torch.float32 or torch.compiler.is_compiling():
        return None
    casts, device = _ACTIVE_CASTS[-1], weight.device.type
    if not torch.is_autocast_enabled(device) or torch.get_autocast_dtype(device) != casts.dtype:
        return None
    return casts


def _take(tensor: torch.Tensor, dim: int, keep: int | torch.Tensor) -> torch.Tensor:
    if isinstance(keep, int):
        return tensor if keep == tensor.shape[dim] else tensor.narrow(dim, 0, keep)
    return tensor.index_select(dim, keep)


class _CastSlice(torch.autograd.Function):
    """A slice of a weight's stored low-precision copy, whose gradient reaches the fp32 weight as autocast's
    does: converted to fp32 and placed at the slice's indices of a zero tensor of the weight's shape."""

    @staticmethod
    def forward(ctx, weight, copy, dim, keep):
        ctx.shape, ctx.dim, ctx.keep = weight.shape, dim, keep
        return _take(copy, dim, keep)

    @staticmethod
    def backward(ctx, grad):
        dim, keep = ctx.dim, ctx.keep
        if isinstance(keep, int) and keep == ctx.shape[dim]:
            return grad.float(), None, None, None
        full = grad.new_zeros(ctx.shape, dtype=torch.float32)
        if isinstance(keep, int):
            full.narrow(dim, 0, keep).copy_(grad)
        else:
            full.index_copy_(dim, keep, grad.float())
        return full, None, None, None


def low_precision(weight: torch.Tensor) -> torch.Tensor:
    """``weight``'s stored copy inside an active :class:`WeightCasts` under autocast (detached: for code that computes
    its gradient itself), else ``weight``."""
    casts = _active_casts(weight)
    return weight if casts is None else casts.copy_of(weight)


# Row counts of the CPU's low-precision matmuls are rounded up to a multiple of this (see sliced_linear).
CPU_ROW_MULTIPLE = 64


def _padded_rows(x: torch.Tensor, dtype: torch.dtype, multiple: int) -> torch.Tensor:
    """``x [..., in]`` as ``[rows rounded up to a multiple, in]`` in ``dtype``: converted in one copy, zero rows
    after the real ones (their gradient is dropped, and they add nothing to a weight's)."""
    flat = x.reshape(-1, x.shape[-1])
    rows = flat.shape[0]
    padded = flat.new_empty((-(-rows // multiple) * multiple, flat.shape[1]), dtype=dtype)
    padded[rows:].zero_()
    padded[:rows] = flat
    return padded


def sliced_linear(x: torch.Tensor, linear: nn.Linear, dim: int, keep: int | torch.Tensor) -> torch.Tensor:
    """``linear`` at the indices ``keep`` (a prefix length or an index tensor) of its weight's dimension ``dim``
    (0: output rows, with the bias; 1: input columns): ``[..., in] -> [..., out]``.

    Inside an active :class:`WeightCasts` under autocast, the weights are slices of the stored copies
    (:func:`weight_slice`), and on the CPU the rows of ``x`` are padded to a multiple of :data:`CPU_ROW_MULTIPLE`
    first: oneDNN, which runs the CPU's bf16 matmuls, builds a kernel for each new shape (about 1.3 ms, several
    times the matmul), and the packed token count changes with every batch; rounded, the shapes repeat and its
    kernels are reused. The output and the gradient of ``x`` are autocast's bit for bit; the weight's gradient
    sums over the padded rows, possibly in another order (one bf16 rounding apart at most, entry by entry).
    """
    weight = weight_slice(linear.weight, dim, keep)
    bias = weight_slice(linear.bias, 0, keep if dim == 0 else linear.out_features)
    casts = _active_casts(linear.weight)
    rows = x.numel() // max(x.shape[-1], 1)
    if casts is None or x.device.type != "cpu" or rows % CPU_ROW_MULTIPLE == 0 or x.numel() == 0:
        return F.linear(x, weight, bias)
    out = F.linear(_padded_rows(x, casts.dtype, CPU_ROW_MULTIPLE), weight, bias)
    return out[:rows].view(*x.shape[:-1], out.shape[-1])


def weight_slice(weight: torch.Tensor | None, dim: int, keep: int | torch.Tensor) -> torch.Tensor | None:
    """The indices ``keep`` (a prefix length, or an index tensor on the weight's device) of ``weight`` along
    ``dim``; inside an active :class:`WeightCasts` under autocast, taken from its stored low-precision copy
    (what autocast would have converted this slice to)."""
    if weight is None:
        return None
    casts = _active_casts(weight)
    if casts is None:
        return _take(weight, dim, keep)
    return _CastSlice.apply(weight, casts.copy_of(weight), dim, keep)
