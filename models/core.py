"""The prunable core every model family builds on: the verbs of pruning over a model's blocks of units.

A family declares its units in blocks (:class:`~models.units.PrunableBlock`: which mask entries make up a
unit, and where they live in which tensors) and writes its forwards; the verbs are written once, here and
in :mod:`models.units`.

* :class:`PrunableModel` is the base model's mixin: the blocks of each kind, in module order, are its
  *unit rows* (row ``r`` of a ``head_mask`` and of a sparsity map's ``"head"`` entry is the ``r``-th
  head block), and it implements ``reorder``, ``sparsify``, ``densify``, ``drop_layers``,
  ``kept_widths``, ``available_sparsities`` and the prunable parameter counts over them. A family
  says which config fields hold the full unit counts (``unit_config``), which holds its depth
  (``depth_config``), how many rows of each kind a config builds (:meth:`~PrunableModel.unit_row_counts`)
  and how to keep its bottom layers (:meth:`~PrunableModel._keep_layers`).
* :class:`~models.task.TaskModel` is a task model over its base model: the same verbs, the base model's.

The configuration carries ``sparsity`` (the level the stored weights are pruned to, 0 = none) and
``sparsity_map`` (:mod:`models.sparsity_map`); only the verbs write them.
"""

from __future__ import annotations

import logging
import operator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .sparsity_map import UNITS, ModelConfigError, normalize_sparsity_map, truncate_sparsity_map
from .units import PrunableBlock

logger = logging.getLogger(__name__)


class Normalization(nn.Module):
    """Base of every family's own normalisation layer (T5's, the decoders' RMSNorm): like torch's norms,
    its parameters are scales and shifts, not weights, and take no weight decay (:func:`is_normalization`)."""


def is_normalization(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer: torch's LayerNorm, RMSNorm and GroupNorm, or a family's
    :class:`Normalization`."""
    return isinstance(module, (Normalization, nn.LayerNorm, nn.RMSNorm, nn.GroupNorm))


def as_permutation(order, size: int, what: str) -> torch.Tensor:
    """Validate ``order`` as a permutation of ``range(size)`` and return it as a LongTensor ``[size]``."""
    index = torch.as_tensor(order, dtype=torch.long).flatten().cpu()
    if index.numel() != size or not torch.equal(index.sort().values, torch.arange(size)):
        raise ValueError(f"{what} must be a permutation of range({size}), got {index.tolist()}")
    return index


@torch.no_grad()
def init_standard(module: nn.Module, std: float) -> bool:
    """BERT's and Llama's init of a linear (N(0, std) weights, zero bias; emptied ones skipped) or an
    embedding (N(0, std), zero padding row); returns whether ``module`` was one of them."""
    if isinstance(module, nn.Linear):
        if module.weight.numel():
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
        return True
    if isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])
        return True
    return False


def prepare_sparsity_config(config, row_counts: dict[str, int], drop_extra_rows: bool) -> None:
    """Give ``config`` an int ``sparsity`` and an int-keyed ``sparsity_map``. Rows beyond ``row_counts``
    are dropped (``drop_extra_rows``: a config whose depth was lowered keeps its bottom layers' rows) or
    refused."""
    sparsity = int(getattr(config, "sparsity", 0) or 0)
    sparsity_map = normalize_sparsity_map(getattr(config, "sparsity_map", None))
    extra = sorted({(unit, row) for entry in sparsity_map.values() for unit in UNITS for row in entry[unit]
                    if row >= row_counts[unit]})
    if extra and not drop_extra_rows:
        raise ModelConfigError(f"config.sparsity_map has {extra[0][0]} row {extra[0][1]}, but this config builds "
                               f"{row_counts[extra[0][0]]} {extra[0][0]} rows: change the depth with drop_layers "
                               "(--layer_or_sparsity kL), not by editing the config")
    sparsity_map = {level: {unit: {row: n for row, n in entry[unit].items() if row < row_counts[unit]}
                            for unit in UNITS}
                    for level, entry in sparsity_map.items()}
    if sparsity != 0 and sparsity not in sparsity_map:
        raise ModelConfigError(
            f"config.sparsity={sparsity} is not a level of config.sparsity_map {sorted(sparsity_map)}"
        )
    config.sparsity = sparsity
    config.sparsity_map = sparsity_map


class PrunableModel:
    """Mixin for a family's base model (a ``PreTrainedModel``): the verbs of pruning over its blocks.

    Class attributes a family sets: ``unit_config`` (``{"head": config field, "neuron": config field}``,
    the full unit counts of one block, which sparsity-map counts are relative to) and ``depth_config``
    (the config field holding the number of layers). It also implements :meth:`unit_row_counts` and
    :meth:`_keep_layers`, and builds its blocks with the widths :meth:`widths_at` gives.
    """

    unit_config: dict[str, str] = {}
    depth_config: str = ""
    # Whether a config of lower depth than its map may drop the map's extra rows (True when every row
    # is a layer's, so the bottom layers' rows are the first ones).
    rows_are_layers: bool = True
    # Whether the forward pass reads ``token_type_ids`` (a family that is its own task model, as EncT5's,
    # says it here; the others on their task models, :class:`~models.task.TaskModel`).
    reads_token_types: bool = False

    @classmethod
    def unit_row_counts(cls, config) -> dict[str, int]:
        """How many blocks (rows) of each kind a model of ``config`` has: ``{"head": n, "neuron": m}``."""
        raise NotImplementedError

    def _keep_layers(self, num_layers: int) -> None:
        """Drop every layer above the bottom ``num_layers`` (modules only; the verbs update the config)."""
        raise NotImplementedError

    def layer_modules(self) -> list[nn.Module]:
        """The transformer layers, each a unit of sharding and of activation checkpointing."""
        raise NotImplementedError

    def training_cost(self, seq_len: int) -> dict[str, int]:
        """Per sequence of ``seq_len`` tokens at the current widths: ``forward_flops`` of the transformer
        blocks, and the elements a training step keeps for backward, split into ``stream_elements``
        (residual stream and norm inputs, fp32 under autocast) and ``projection_elements`` (projection
        and activation outputs, in the compute dtype). Used by the planner (:mod:`utils.command.planner`).

        Computed from the blocks' declarations: each block's projections (and an attention's scores over
        ``seq_len`` keys, the whole square as a masked kernel computes it), what each keeps
        (:meth:`~models.units.PrunableBlock.saved_elements`), and 4 stream tensors per layer (block and
        norm inputs). A family whose blocks do not all run on every token (EncT5's decoder) overrides it."""
        cost = {"forward_flops": 0, "stream_elements": 0, "projection_elements": 0}
        for kind in UNITS:
            for block in self.blocks(kind):
                cost["forward_flops"] += block.projection_flops(seq_len)
                if kind == "head":
                    cost["forward_flops"] += block.attention_flops(seq_len, seq_len)
                cost["projection_elements"] += block.saved_elements(seq_len)
        cost["stream_elements"] = 4 * self.config.hidden_size * seq_len * len(self.layer_modules())
        return cost

    @classmethod
    def full_units(cls, config) -> dict[str, int]:
        """Units per block before any pruning: ``{"head": H, "neuron": I}``."""
        return {kind: getattr(config, field) for kind, field in cls.unit_config.items()}

    @classmethod
    def widths_at(cls, config, sparsity: int) -> dict[str, list[int]]:
        """Units kept per row at ``sparsity`` (``0`` with no map entry = every unit), per kind."""
        entry = config.sparsity_map.get(sparsity, {unit: {} for unit in UNITS})
        full = cls.full_units(config)
        widths = {kind: [full[kind] - entry[kind].get(row, 0) for row in range(rows)]
                  for kind, rows in cls.unit_row_counts(config).items()}
        if min((w for kind in widths.values() for w in kind), default=0) < 0:
            raise ModelConfigError(f"sparsity map level {sparsity} removes more heads or neurons than exist")
        return widths

    @classmethod
    def prepare_config(cls, config) -> dict[str, list[int]]:
        """Check and normalise ``config``'s sparsity fields; returns the stored widths to build."""
        prepare_sparsity_config(config, cls.unit_row_counts(config), cls.rows_are_layers)
        return cls.widths_at(config, config.sparsity)

    # ---- the blocks ---------------------------------------------------------------------------------

    def blocks(self, kind: str) -> list[PrunableBlock]:
        """The blocks of ``kind`` in module order: the unit rows of that kind."""
        return [m for m in self.modules() if isinstance(m, PrunableBlock) and m.unit_kind == kind]

    def unit_shape(self) -> dict[str, tuple[int, int]]:
        """``{kind: (rows, full units per row)}``: the shape of the unit scores a sparsity map is built from."""
        full = self.full_units(self.config)
        return {kind: (len(self.blocks(kind)), full[kind]) for kind in UNITS}

    @classmethod
    def full_mask_entries(cls, config) -> dict[str, int]:
        """Mask entries per row before any pruning (one per unit unless a family says otherwise)."""
        return cls.full_units(config)

    def mask_shape(self) -> dict[str, tuple[int, int]]:
        """``{kind: (rows, full mask entries per row)}``: the shape of a ``head_mask``/``neuron_mask`` and
        of the importance scores."""
        full = self.full_mask_entries(self.config)
        return {kind: (len(self.blocks(kind)), full[kind]) for kind in UNITS}

    def unit_orders(self, kind: str, scores: torch.Tensor) -> torch.Tensor:
        """Per row, the order :meth:`reorder` takes for the mask-entry ``scores [rows, entries]``."""
        return torch.stack([b.order_from_scores(row) for b, row in zip(self.blocks(kind), scores, strict=True)])

    def unit_scores(self, kind: str, scores: torch.Tensor) -> torch.Tensor:
        """Per row, one score per unit from the mask-entry ``scores [rows, entries]``: what
        :func:`~utils.maths.importance.build_sparsity_map` ranks."""
        return torch.stack([b.unit_scores(row) for b, row in zip(self.blocks(kind), scores, strict=True)])

    def check_masks(self, **masks: torch.Tensor | None) -> None:
        """Raise a ValueError unless each given ``head_mask``/``neuron_mask`` is ``[rows, >= stored units]``."""
        for name, mask in masks.items():
            if mask is None:
                continue
            blocks = self.blocks(name.removesuffix("_mask"))
            widest = max((b.mask_entries for b in blocks), default=0)
            if mask.dim() != 2 or mask.shape[0] != len(blocks) or mask.shape[1] < widest:
                raise ValueError(f"{name} must be [{len(blocks)}, >= {widest}], got {tuple(mask.shape)}")

    def kept_widths(self) -> dict[str, list[int]]:
        """Units used now per row: ``{"head": [...], "neuron": [...]}``."""
        return {kind: [block.kept for block in self.blocks(kind)] for kind in UNITS}

    def heads_in_use(self) -> int:
        """Attention heads in use over every row (query heads of a GQA attention, whatever its unit)."""
        return sum(block.kept_entry_count for block in self.blocks("head"))

    def min_kept(self) -> dict[str, list[int]]:
        """Units per row that pruning must leave (the blocks' ``min_units``): ``{"head": [...], "neuron": [...]}``."""
        return {kind: [block.min_units for block in self.blocks(kind)] for kind in UNITS}

    # ---- the verbs ----------------------------------------------------------------------------------

    def reorder(self, head_order=None, neuron_order=None) -> None:
        """Permute the units of every block; the model's function is unchanged.

        Args:
            head_order: LongTensor ``[rows, H]`` or a list of 1-D tensors; row ``r`` lists head row
                ``r``'s units in their new order (e.g. by descending importance), so that
                ``sparsify`` keeps the first ones.
            neuron_order: likewise for the neuron rows.

        Raises:
            ValueError: on a sliced or densified model (``config.sparsity != 0``), or if a row is
                not a permutation.
        """
        if self.config.sparsity != 0 or self.current_sparsity != 0:
            raise ValueError(
                "reorder needs the full, unpruned model (config.sparsity == 0 and not sparsified), "
                f"got config.sparsity={self.config.sparsity}, current sparsity={self.current_sparsity}"
            )
        plans = []
        for kind, order in (("head", head_order), ("neuron", neuron_order)):
            if order is None:
                continue
            blocks = self.blocks(kind)
            if len(order) != len(blocks):
                raise ValueError(f"{kind}_order must have one row per {kind} row ({len(blocks)}), got {len(order)}")
            plans += [(block, as_permutation(order[i], block.mask_entries, f"{kind}_order[{i}]"))
                      for i, block in enumerate(blocks)]
        for block, order in plans:
            block.reorder_units(order)

    def available_sparsities(self) -> list[int]:
        """The levels :meth:`sparsify` accepts: ``config.sparsity`` and the map's levels above it."""
        base = self.config.sparsity
        return sorted({base} | {s for s in self.config.sparsity_map if s >= base})

    def sparsify(self, sparsity: int) -> None:
        """Slice every block to its width at ``sparsity`` (virtual pruning; weights untouched).

        Cheap (only integer widths change) and autograd-safe: sliced forwards use views of the full
        parameters, so gradients reach the full tensors. ``sparsify(config.sparsity)`` restores the
        stored widths.

        Raises:
            ValueError: if ``sparsity`` is not in :meth:`available_sparsities`.
            TypeError: if ``sparsity`` is not an int.
        """
        sparsity = operator.index(sparsity)
        if sparsity not in self.available_sparsities():
            raise ValueError(f"sparsity {sparsity} is not available; choose from {self.available_sparsities()}")
        widths = None if sparsity == self.config.sparsity else self.widths_at(self.config, sparsity)
        plans = []
        for kind in UNITS:
            for row, block in enumerate(self.blocks(kind)):
                kept = block.physical_units if widths is None else widths[kind][row]
                if kept > block.physical_units:
                    raise ValueError(f"sparsity {sparsity} keeps {kept} units of {kind} row {row}, more than "
                                     f"its stored {block.physical_units}")
                plans.append((block, kept))
        for block, kept in plans:
            block.kept = kept
        self.current_sparsity = sparsity

    @contextmanager
    def at_sparsity(self, sparsity: int):
        """The model sliced to ``sparsity`` (:meth:`sparsify`) inside the ``with`` block, and back at the width it
        had on leaving it, also on an exception: ``with model.at_sparsity(90): loss = model(**batch).loss``."""
        previous = self.current_sparsity
        self.sparsify(sparsity)
        try:
            yield self
        finally:
            self.sparsify(previous)

    def densify(self) -> None:
        """Physically prune to the current slice: new, smaller (contiguous) ``nn.Parameter`` tensors.

        Sets ``config.sparsity`` to the current level and truncates the map to levels ``>=`` it, so
        the model saves/reloads at its new shapes and can be sparsified further. Optimisers holding
        the old parameters must be rebuilt.
        """
        for kind in UNITS:
            for block in self.blocks(kind):
                block.densify_units()
        self.config.sparsity = self.current_sparsity
        self.config.sparsity_map = truncate_sparsity_map(self.config.sparsity_map, self.current_sparsity)
        logger.info("densified to sparsity %d: %s", self.current_sparsity, self.kept_widths())

    def drop_layers(self, num_layers: int) -> None:
        """Keep the bottom ``num_layers`` layers; the config's depth and the map's rows follow.

        Raises:
            ValueError: unless ``1 <= num_layers <=`` the current depth.
        """
        num_layers = operator.index(num_layers)
        depth = getattr(self.config, self.depth_config)
        if not 1 <= num_layers <= depth:
            raise ValueError(f"can keep between 1 and {depth} layers, got {num_layers}")
        before = {kind: self.blocks(kind) for kind in UNITS}
        self._keep_layers(num_layers)
        setattr(self.config, self.depth_config, num_layers)
        renumber = {}
        for kind in UNITS:
            after = {id(block): row for row, block in enumerate(self.blocks(kind))}
            renumber[kind] = {old: after[id(block)] for old, block in enumerate(before[kind]) if id(block) in after}
        self.config.sparsity_map = {
            level: {kind: {renumber[kind][row]: n for row, n in entry[kind].items() if row in renumber[kind]}
                    for kind in UNITS}
            for level, entry in self.config.sparsity_map.items()
        }

    @property
    def depth(self) -> int:
        """The number of layers (the config field ``depth_config``)."""
        return getattr(self.config, self.depth_config)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each layer's activations in backward instead of keeping them (non-reentrant
        ``torch.utils.checkpoint``, RNG state preserved, so dropout draws the same masks). The widths a
        layer reads are module state set before the forward; a sandwich runs each width's forward and
        backward inside one ``at_sparsity``, so recomputation sees the width of its own pass."""
        self.checkpoint_layers = enabled

    def compile_layers(self) -> None:
        """``torch.compile`` every transformer layer, with dynamic shapes: one graph serves every sequence
        length and token count, and (the widths being ints on the blocks, left unspecialised) every
        width of a sandwich; a width of 0 or 1 still compiles its own graph. The first steps pay the
        compilation; on CUDA the fused kernels pay it back, on the CPU see docs/runs.md. The compiler settings
        this needs apply only while the model's own layers run (:meth:`call_layer`), never to the process."""
        for layer in self.layer_modules():
            layer.compile(dynamic=True)
        self.compiled_layers = True

    def call_layer(self, layer, *args):
        """``layer(*args)``, checkpointed in training when :meth:`set_gradient_checkpointing` is on; a compiled
        layer runs with the compiler settings of :meth:`compile_layers`."""
        settings = _compiled_layer_settings() if getattr(self, "compiled_layers", False) else nullcontext()
        with settings:
            if getattr(self, "checkpoint_layers", False) and self.training and torch.is_grad_enabled():
                return checkpoint(layer, *args, use_reentrant=False)
            return layer(*args)

    def prunable_parameter_counts(self) -> tuple[int, int]:
        """``(now, stored)`` parameter counts of the linears every block's units live in."""
        blocks = [block for kind in UNITS for block in self.blocks(kind)]
        current = sum(block.unit_parameter_count() for block in blocks)
        stored = sum(p.numel() for block in blocks for p in block.unit_parameters())
        return current, stored

    def count_parameters(self) -> dict[str, int]:
        """Parameter counts at the CURRENT (possibly sliced) widths.

        Returns:
            ``{"prunable": n, "total": m}``: ``prunable`` counts the weights and biases of the linears
            the units live in (Q, K, V and output projections of every attention, input and output
            projections of every FFN); ``total`` counts every parameter the current model holds for
            use (embeddings, norms and task head included).
        """
        return count_parameters(self, self)


def _compiled_layer_settings():
    """Dynamo's settings for compiled layers: the widths (ints on the blocks) stay unspecialised, and a
    sandwich's widths and lengths may recompile a layer more often than the default limit allows."""
    import torch._dynamo

    return torch._dynamo.config.patch(allow_unspec_int_on_nn_module=True,
                                      recompile_limit=max(torch._dynamo.config.recompile_limit, 64))


def count_parameters(model: nn.Module, pruned: PrunableModel) -> dict[str, int]:
    current, stored = pruned.prunable_parameter_counts()
    return {"prunable": current, "total": sum(p.numel() for p in model.parameters()) - stored + current}
