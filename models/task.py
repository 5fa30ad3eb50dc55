"""One task model for the families that wrap a backbone (BERT, the decoders): a backbone and a head.

A :class:`TaskModel` holds its family's prunable backbone (a :class:`~models.core.PrunableModel`, stored under the
family's ``base_model_prefix``: ``bert``, ``model``, so checkpoints keep HF's names) and a head that turns the
backbone's L + 1 hidden states into logits. The forward, the task loss, the embeddings and the pruning verbs
(the backbone's, so the training code never reaches inside) are written here once; a task class only declares
its backbone, whether it labels tokens or sequences, and its head (:mod:`models.heads`). EncT5 is its own
backbone (its head reads a decoder block, and its checkpoints keep T5's top-level names): it is a
:class:`~models.core.PrunableModel` with the same forward signature and :func:`~models.outputs.task_loss`.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .core import PrunableModel, count_parameters
from .outputs import TaskOutput, task_loss


class TaskModel:
    """Mixin, before the family's ``PreTrainedModel`` base: ``backbone_class(config)`` under ``base_model_prefix``,
    then the head (:meth:`build_head`).

    ``forward(input_ids [B, T], attention_mask [B, T], token_type_ids [B, T] (read by BERT only), labels,
    head_mask [rows, entries], neuron_mask [rows, I], embedding_output) -> TaskOutput``: ``logits [B, C]``
    (``[B, 1]`` for regression) or ``[B, T, C]`` (``token_level``), the backbone's hidden states, and with
    ``labels`` the task loss.
    """

    backbone_class: type[PrunableModel]
    token_level: bool = False  # one label per token (tagging) rather than per sequence
    # The family's distillation defaults (utils.engine.objectives): what ``--objective auto`` means, chosen by the
    # measured table in docs/results.md; whether the first position is an attention sink whose "massive
    # activations" a hidden-state term leaves out (decoders).
    distill_objective: str = "hidden_kd"
    sink_first_token: bool = False
    # Whether the forward pass reads ``token_type_ids`` (BERT's segments); the other families ignore them.
    reads_token_types: bool = False

    def __init__(self, config):
        super().__init__(config)
        setattr(self, self.base_model_prefix, self.backbone_class(config))
        self.build_head(config)
        self.post_init()

    def build_head(self, config) -> None:
        """Create the head's modules (their names are the checkpoint's)."""
        raise NotImplementedError

    def logits_from(self, states, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The logits from the backbone's L + 1 hidden states."""
        raise NotImplementedError

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, head_mask=None,
                neuron_mask=None, embedding_output=None) -> TaskOutput:
        states = self.base_model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                 head_mask=head_mask, neuron_mask=neuron_mask, embedding_output=embedding_output)
        logits = self.logits_from(states, attention_mask)
        loss = None if labels is None else task_loss(logits, labels, self.token_level)
        return TaskOutput(logits=logits, hidden_states=states, loss=loss)

    def embed(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """The embeddings to share between forwards of one batch (``forward(..., embedding_output=...)``)."""
        return self.base_model.embed(input_ids, attention_mask, token_type_ids)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.base_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.base_model.set_input_embeddings(value)

    # ---- the pruning interface: the backbone's -----------------------------------------------------------

    @classmethod
    def unit_row_counts(cls, config) -> dict[str, int]:
        """Rows of each kind a model of ``config`` has; see :meth:`PrunableModel.unit_row_counts`."""
        return cls.backbone_class.unit_row_counts(config)

    @classmethod
    def full_units(cls, config) -> dict[str, int]:
        """Units per block before any pruning; see :meth:`PrunableModel.full_units`."""
        return cls.backbone_class.full_units(config)

    @property
    def current_sparsity(self) -> int:
        """The sparsity level the model is currently sliced to."""
        return self.base_model.current_sparsity

    @property
    def depth(self) -> int:
        """The number of layers."""
        return self.base_model.depth

    def reorder(self, head_order=None, neuron_order=None) -> None:
        """Permute heads and neurons per row; see :meth:`PrunableModel.reorder`."""
        self.base_model.reorder(head_order, neuron_order)

    def available_sparsities(self) -> list[int]:
        """Levels :meth:`sparsify` accepts; see :meth:`PrunableModel.available_sparsities`."""
        return self.base_model.available_sparsities()

    def sparsify(self, sparsity: int) -> None:
        """Slice to ``sparsity`` (virtual pruning); see :meth:`PrunableModel.sparsify`."""
        self.base_model.sparsify(sparsity)

    @contextmanager
    def at_sparsity(self, sparsity: int):
        """Sliced to ``sparsity`` inside a ``with`` block; see :meth:`PrunableModel.at_sparsity`."""
        with self.base_model.at_sparsity(sparsity):
            yield self

    def densify(self) -> None:
        """Physically prune to the current slice; see :meth:`PrunableModel.densify`."""
        self.base_model.densify()

    def drop_layers(self, num_layers: int) -> None:
        """Keep the bottom ``num_layers`` layers; see :meth:`PrunableModel.drop_layers`."""
        self.base_model.drop_layers(num_layers)

    def kept_widths(self) -> dict[str, list[int]]:
        """Units used now per row: ``{"head": [...], "neuron": [...]}``."""
        return self.base_model.kept_widths()

    def unit_shape(self) -> dict[str, tuple[int, int]]:
        """``{kind: (rows, full units per row)}``; see :meth:`PrunableModel.unit_shape`."""
        return self.base_model.unit_shape()

    def mask_shape(self) -> dict[str, tuple[int, int]]:
        """``{kind: (rows, full mask entries per row)}``; see :meth:`PrunableModel.mask_shape`."""
        return self.base_model.mask_shape()

    def unit_orders(self, kind: str, scores: torch.Tensor) -> torch.Tensor:
        """Per-row orders from mask-entry scores; see :meth:`PrunableModel.unit_orders`."""
        return self.base_model.unit_orders(kind, scores)

    def unit_scores(self, kind: str, scores: torch.Tensor) -> torch.Tensor:
        """Per-row unit scores from mask-entry scores; see :meth:`PrunableModel.unit_scores`."""
        return self.base_model.unit_scores(kind, scores)

    def heads_in_use(self) -> int:
        """Attention heads in use; see :meth:`PrunableModel.heads_in_use`."""
        return self.base_model.heads_in_use()

    def min_kept(self) -> dict[str, list[int]]:
        """Units per row that pruning must leave; see :meth:`PrunableModel.min_kept`."""
        return self.base_model.min_kept()

    def count_parameters(self) -> dict[str, int]:
        """Like :meth:`PrunableModel.count_parameters`, the task head included in ``total``."""
        return count_parameters(self, self.base_model)

    def training_cost(self, seq_len: int) -> dict[str, int]:
        """FLOPs and saved activations per sequence; see :meth:`PrunableModel.training_cost`."""
        return self.base_model.training_cost(seq_len)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each layer in backward; see :meth:`PrunableModel.set_gradient_checkpointing`."""
        self.base_model.set_gradient_checkpointing(enabled)

    def compile_layers(self) -> None:
        """Compile every transformer layer; see :meth:`PrunableModel.compile_layers`."""
        self.base_model.compile_layers()

    def layer_modules(self) -> list[nn.Module]:
        """The transformer layers; see :meth:`PrunableModel.layer_modules`."""
        return self.base_model.layer_modules()
