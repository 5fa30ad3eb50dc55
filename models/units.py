"""Prunable units, declared as index sets over the block's tensors, and the verbs of one block.

A *unit* is what pruning removes at once: a BERT head (its rows of Q, K and V, with their biases, and
its columns of the output projection), an FFN neuron (its row of each input projection and its column
of the output projection), a KV group of a grouped-query attention (its K and V rows, and the Q rows
and O columns of the query heads it serves), or a slot of query heads (the ``r``-th query head of
every group). A block says where its units live; slicing, reordering, densifying, the importance
order and the parameter and FLOP counts are computed from that declaration, here, once.

The declaration has two parts, given by :meth:`PrunableBlock.unit_layout`:

* ``units``, a LongTensor ``[units, entries per unit]``: the *mask entries* each unit is made of (an
  entry is what a ``head_mask``/``neuron_mask`` column and an importance score refer to: a query head,
  an FFN channel). A block keeps its leading ``kept`` units.
* ``spans``, one :class:`Span` per (tensor, dimension, range) the entries index: a span of ``size``
  indices per *element*, where one element serves ``share`` consecutive entries (a K row block serves
  the ``g`` query heads of its group). Several spans may share one tensor (Phi-3's fused ``qkv_proj``
  holds the Q, K and V spans at three offsets).

The indices in use are those of the elements the kept entries touch. When they are a prefix of a
tensor (BERT, T5, whole KV groups) the forward uses views of the stored weights; otherwise (query
slots, fused tensors) it gathers them once per width; either way gradients reach the full tensors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .fast_ops import sliced_linear


def new_linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    """``nn.Linear`` that may have zero rows or columns (an emptied block) without torch's init warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return nn.Linear(in_features, out_features, bias=bias)


def rows_linear(linear: nn.Linear, x: torch.Tensor, rows: int | torch.Tensor) -> torch.Tensor:
    """``linear`` restricted to its first ``rows`` outputs (or the outputs of an index tensor):
    ``[..., in] -> [..., rows]``; weights from the active :class:`~models.fast_ops.WeightCasts` if any."""
    return sliced_linear(x, linear, 0, rows)


def cols_linear(linear: nn.Linear, x: torch.Tensor, cols: int | torch.Tensor) -> torch.Tensor:
    """``linear`` restricted to its first ``cols`` inputs (or the inputs of an index tensor): ``[..., cols] ->
    [..., out]``; weights from the active :class:`~models.fast_ops.WeightCasts` if any."""
    return sliced_linear(x, linear, 1, cols)


def _replace(linear: nn.Linear, dim: int, keep: int | torch.Tensor) -> None:
    """Replace ``linear``'s parameters by new contiguous tensors holding the indices ``keep`` (a prefix length
    or an index tensor) of dimension ``dim`` (0: output rows, with the bias; 1: input columns)."""
    def take(tensor: torch.Tensor, along: int) -> torch.Tensor:
        tensor = tensor.detach()
        if isinstance(keep, int):
            return tensor.narrow(along, 0, keep).clone(memory_format=torch.contiguous_format)
        return tensor.index_select(along, keep.to(tensor.device)).contiguous()

    linear.weight = nn.Parameter(take(linear.weight, dim), requires_grad=linear.weight.requires_grad)
    if dim == 0 and linear.bias is not None:
        linear.bias = nn.Parameter(take(linear.bias, 0), requires_grad=linear.bias.requires_grad)
    linear.out_features, linear.in_features = linear.weight.shape


@dataclass(frozen=True)
class Span:
    """Where a block's entries live in one tensor: dimension ``dim`` (0: output rows, with the bias; 1: input
    columns) of the linear ``linear``, from index ``start``, ``size`` indices per element; element ``e``
    serves entries ``[e·share, (e+1)·share)``."""

    linear: str
    dim: int
    size: int = 1
    start: int = 0
    share: int = 1

    def indices(self, elements: torch.Tensor) -> torch.Tensor:
        """The tensor indices of ``elements``, in their order: ``[len(elements) · size]``."""
        return self.start + (elements[:, None] * self.size + torch.arange(self.size, device=elements.device)).flatten()


class PrunableBlock(nn.Module):
    """A module holding one set of prunable units (see the module docstring).

    A subclass sets ``unit_kind`` (``"head"`` or ``"neuron"``) and declares its units: either the class
    attributes ``unit_rows`` and ``unit_cols`` (linears whose output rows, or input columns, hold unit ``i``
    at ``[i·size, (i+1)·size)``, one entry per unit), or its own :meth:`unit_layout`. ``unit_index`` names
    integer buffers with one entry per mask entry that follow a reorder (T5's original head ids). It calls
    :meth:`init_units` once its linears exist, and again whenever its layout changes. ``kept`` is the number
    of units the forward uses now (the leading ones); ``min_units`` how many a sparsity map built from
    importance must leave it; ``activation_copies`` how many tensors of its width it keeps for backward
    beyond its spans' (:meth:`saved_elements`).
    """

    unit_kind: str = ""
    unit_rows: tuple[str, ...] = ()
    unit_cols: tuple[str, ...] = ()
    unit_index: tuple[str, ...] = ()
    min_units: int = 0
    activation_copies: int = 0

    def unit_layout(self) -> tuple[torch.Tensor, tuple[Span, ...]]:
        """``(units [units, entries per unit], spans)`` at the stored widths; the default is one entry per unit,
        ``unit_size`` rows of each ``unit_rows`` linear and columns of each ``unit_cols`` one."""
        size = self.unit_size
        count = self.get_submodule(self.unit_rows[0]).out_features // size
        spans = tuple(Span(name, 0, size) for name in self.unit_rows) + tuple(Span(name, 1, size)
                                                                          for name in self.unit_cols)
        return torch.arange(count).view(count, 1), spans

    def init_units(self, size: int = 1) -> None:
        """Read the layout (:meth:`unit_layout`; ``size`` rows per unit for the default one) and use every unit."""
        self.unit_size = size
        with torch.device("cpu"):  # the layout is index arithmetic, also while a model is built on the meta device
            units, spans = self.unit_layout()
            self._prefix = torch.equal(units.flatten(), torch.arange(units.numel()))
        self.units, self.spans = units, tuple(spans)
        self._selections = {}
        for (name, dim), group in self._tensors().items():
            covered = sum(units.numel() // span.share * span.size for span in group)
            if covered != self.get_submodule(name).weight.shape[dim]:
                raise ValueError(f"{type(self).__name__}: the spans on {name} cover {covered} of its "
                                 f"{self.get_submodule(name).weight.shape[dim]} indices along dimension {dim}")
        self.kept = self.physical_units

    def _tensors(self) -> dict[tuple[str, int], list[Span]]:
        """The spans grouped by (linear, dimension), in declaration order."""
        groups = {}
        for span in self.spans:
            groups.setdefault((span.linear, span.dim), []).append(span)
        return groups

    # ---- geometry -------------------------------------------------------------------------------------

    @property
    def physical_units(self) -> int:
        """The number of units the stored weights hold."""
        return self.units.shape[0]

    @property
    def mask_entries(self) -> int:
        """Entries of this block's row of a mask (and of an importance table) at the stored width."""
        return self.units.numel()

    @property
    def kept_entry_count(self) -> int:
        """Mask entries in use (query heads of a grouped-query attention, whatever its unit)."""
        return self.kept * self.units.shape[1]

    def kept_entries(self) -> torch.Tensor:
        """The mask entries in use, ascending: ``[kept_entry_count]``."""
        if self._prefix:
            return torch.arange(self.kept_entry_count, device="cpu")
        return self.units[:self.kept].flatten().sort().values

    def span_width(self, span: Span) -> int:
        """Indices of ``span`` in use."""
        if self._prefix:
            return -(-self.kept_entry_count // span.share) * span.size
        key = (span, self.kept)
        if key not in self._selections:
            self._selections[key] = self._kept_elements(span).numel() * span.size
        return self._selections[key]

    def span_widths(self) -> list[int]:
        """Indices in use of each of :attr:`spans`, in their order."""
        return [self.span_width(span) for span in self.spans]

    @property
    def kept_width(self) -> int:
        """Indices in use of the first span: an attention's query width, an FFN's channels."""
        return self.span_width(self.spans[0])

    def width(self, name: str) -> int:
        """Rows (or columns) of the linear ``name`` in use."""
        return sum(self.span_width(span) for span in self.spans if span.linear == name)

    def _kept_elements(self, span: Span) -> torch.Tensor:
        return torch.unique(self.units[:self.kept].flatten() // span.share)

    def _selection(self, name: str, dim: int) -> int | torch.Tensor:
        """The indices of ``name``'s dimension ``dim`` in use: a prefix length when they are one, else an index
        tensor on the weight's device (computed once per width)."""
        spans = [span for span in self.spans if span.linear == name and span.dim == dim]
        if self._prefix and len(spans) == 1 and spans[0].start == 0:
            return self.span_width(spans[0])
        weight = self.get_submodule(name).weight
        key = (name, dim, self.kept, weight.device)
        if key not in self._selections:
            index = torch.cat([span.indices(self._kept_elements(span)) for span in spans])
            prefix = torch.equal(index, torch.arange(index.numel(), device="cpu"))
            self._selections[key] = index.numel() if prefix else index.to(weight.device)
        return self._selections[key]

    def rows(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The linear ``name`` at the rows in use: ``[..., in] -> [..., width]`` (spans on one tensor in their order)."""
        return rows_linear(self.get_submodule(name), x, self._selection(name, 0))

    def cols(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The linear ``name`` at the columns in use: ``[..., width] -> [..., out]``."""
        return cols_linear(self.get_submodule(name), x, self._selection(name, 1))

    def index(self, name: str) -> torch.Tensor:
        """The entries in use of the per-entry buffer ``name``."""
        buffer = getattr(self, name)
        if self._prefix:
            return buffer[:self.kept_entry_count]
        return buffer.index_select(0, self.kept_entries().to(buffer.device))

    # ---- importance and the verbs ---------------------------------------------------------------------

    def order_from_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """The entry order :meth:`reorder_units` takes for this block's mask-entry ``scores``, most important
        first (stable: ties keep their index order). Entries that share an element move together: elements by
        their entries' summed score, then the entries within each element by score."""
        share = max((span.share for span in self.spans), default=1)
        by_element = scores.view(-1, share)
        within = torch.argsort(by_element, dim=1, descending=True, stable=True)
        elements = torch.argsort(by_element.sum(1), descending=True, stable=True)
        return (elements[:, None] * share + within[elements]).flatten()

    def unit_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """One score per unit (its entries' sum) from the mask-entry ``scores``, in the order
        :meth:`order_from_scores` gives them."""
        ordered = scores.gather(0, self.order_from_scores(scores))
        return ordered[self.units.to(ordered.device)].sum(1)

    @torch.no_grad()
    def reorder_units(self, order: torch.Tensor) -> None:
        """Permute the stored entries so that new entry ``i`` is old entry ``order[i]`` (function unchanged).

        Raises:
            ValueError: if ``order`` splits the entries one element serves (the query heads of one KV group).
        """
        order = order.cpu()
        for (name, dim), spans in self._tensors().items():
            linear = self.get_submodule(name)
            index = torch.arange(linear.weight.shape[dim], device="cpu")
            for span in spans:
                elements = order.view(-1, span.share) // span.share
                if not torch.equal(elements, elements[:, :1].expand_as(elements)):
                    raise ValueError(f"{self.unit_kind} order {order.tolist()} mixes {self.unit_kind}s of different "
                                     f"groups: each {span.share} in a row share rows of {name} (as one KV head's "
                                     "query heads share its K and V) and must move together")
                moved = span.indices(elements[:, 0])
                index[span.start:span.start + moved.numel()] = moved
            index = index.to(linear.weight.device)
            linear.weight.copy_(linear.weight.index_select(dim, index))
            if dim == 0 and linear.bias is not None:
                linear.bias.copy_(linear.bias[index])
        for name in self.unit_index:
            buffer = getattr(self, name)
            buffer.copy_(buffer[order.to(buffer.device)])

    def densify_units(self) -> None:
        """Replace the unit tensors by new ones holding the indices in use only, then re-read the layout."""
        keep = {key: self._selection(*key) for key in self._tensors()}
        for (name, dim), selection in keep.items():
            _replace(self.get_submodule(name), dim, selection)
        for name in self.unit_index:
            setattr(self, name, self.index(name).clone())
        self.init_units(self.unit_size)

    # ---- counts ---------------------------------------------------------------------------------------

    def _linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``{linear: (rows in use, columns in use)}`` for every linear a span names."""
        shapes = {}
        for name in dict.fromkeys(span.linear for span in self.spans):
            linear = self.get_submodule(name)
            spans = {span.dim for span in self.spans if span.linear == name}
            shapes[name] = (self.width(name) if 0 in spans else linear.out_features,
                            self.width(name) if 1 in spans else linear.in_features)
        return shapes

    def projection_flops(self, tokens: int) -> int:
        """Forward FLOPs of the unit linears over ``tokens`` tokens at the kept width (2 per multiply-add)."""
        return 2 * tokens * sum(rows * cols for rows, cols in self._linear_shapes().values())

    def attention_flops(self, queries: int, keys: int) -> int:
        """Forward FLOPs of the scores and the weighted sum of ``queries`` over ``keys`` at the kept heads."""
        return 4 * queries * keys * self.kept_width

    def saved_elements(self, tokens: int) -> int:
        """Elements a training step keeps for backward over ``tokens`` tokens: each span's kept outputs (or
        inputs), and ``activation_copies`` more of the first span's width (a gated FFN keeps its activation)."""
        return tokens * (sum(self.span_widths()) + self.activation_copies * self.kept_width)

    def unit_parameters(self) -> list[nn.Parameter]:
        """The stored parameters of the linears the units live in."""
        return [p for name in dict.fromkeys(span.linear for span in self.spans)
                for p in self.get_submodule(name).parameters()]

    def unit_parameter_count(self) -> int:
        """Parameters of the linears the units live in, at the indices in use. An output projection's bias
        counts at full size: it stays when every unit goes."""
        count = 0
        for name, (rows, cols) in self._linear_shapes().items():
            count += rows * cols + (0 if self.get_submodule(name).bias is None else rows)
        return count
