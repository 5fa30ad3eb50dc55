"""SparseBERT: a BERT encoder that can be masked, reordered, sliced and physically pruned.

Parameter names are those of HF ``BertModel`` (``embeddings.*``, ``encoder.layer.{i}.attention.self.
{query,key,value}``, ``encoder.layer.{i}.attention.output.{dense,LayerNorm}``,
``encoder.layer.{i}.intermediate.dense``, ``encoder.layer.{i}.output.{dense,LayerNorm}``), so any
HF BERT checkpoint loads. The configuration is a plain
``transformers.BertConfig`` with two extra attributes:

* ``config.sparsity`` (``int``): the sparsity level the physical weights are pruned to (0 = none);
* ``config.sparsity_map``: see :mod:`models.sparsity_map`.

The four verbs of pruning:

* masks: ``head_mask [L, H]`` and ``neuron_mask [L, I]`` forward inputs that multiply each head's
  context and each FFN activation (differentiable, for importance scoring);
* :meth:`SparseBertModel.reorder`: permute heads and neurons (function unchanged);
* :meth:`SparseBertModel.sparsify`: virtual pruning by slicing the leading block of every
  prunable linear (weights shared, cheap, autograd-safe);
* :meth:`SparseBertModel.densify`: physical pruning into new, smaller parameters.

Emptied blocks: a layer may keep zero heads or zero neurons. Its attention block then returns
``LayerNorm(x + attention.output.dense.bias)`` and its FFN block ``LayerNorm(x + output.dense.bias)``,
which is exactly what an all-zero mask gives, so masked, sliced and densified models agree. (The
original MiniDisc code dropped the bias there, so its masked and pruned models disagreed.)

Padding: when ``attention_mask`` has padding, the encoder runs on the real tokens only
(:class:`~models.packing.TokenPacking`): embeddings, projections, FFNs, LayerNorms and dropouts see
``[N, hidden]`` and only attention scatters back to ``[B, T]``. Real tokens get the same values as
with padding computed; the returned hidden states are zero at padding positions (HF's values there
are meaningless: no real token attends to them).

The CPU speed code (dropout, attention with dropout, the fused residual projection) is in
:mod:`models.fast_ops`; each piece computes the function of the plain torch call it replaces.

There is no pooler: the task heads read the final hidden state of [CLS] directly (the original
MiniDisc code computed the HF pooler on every forward and never used it), so a checkpoint's
``pooler.*`` weights are skipped on load. It is neither computed nor counted, and every parameter
of the model is trained (which DistributedDataParallel requires).
"""

import logging
import operator
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, PreTrainedModel
from transformers.activations import ACT2FN

from .fast_ops import FastDropout, attention, residual_linear
from .packing import HiddenStates, TokenPacking
from .sparsity_map import UNITS, ModelConfigError, normalize_sparsity_map, truncate_sparsity_map

logger = logging.getLogger(__name__)


def _linear(in_features: int, out_features: int) -> nn.Linear:
    """``nn.Linear`` that may have zero rows or columns (an emptied layer) without torch's init warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return nn.Linear(in_features, out_features)


def _rows_linear(linear: nn.Linear, x: torch.Tensor, rows: int) -> torch.Tensor:
    """``linear`` restricted to its first ``rows`` outputs: ``[..., in] -> [..., rows]``."""
    if rows == linear.out_features:
        return linear(x)
    return F.linear(x, linear.weight[:rows], linear.bias[:rows])


def _cols_linear(linear: nn.Linear, x: torch.Tensor, cols: int) -> torch.Tensor:
    """``linear`` restricted to its first ``cols`` inputs: ``[..., cols] -> [..., out]``."""
    if cols == linear.in_features:
        return linear(x)
    return F.linear(x, linear.weight[:, :cols], linear.bias)


def _shrink_linear(linear: nn.Linear, rows: int | None = None, cols: int | None = None) -> None:
    """Replace ``linear``'s parameters by new contiguous tensors holding the leading ``rows x cols`` block."""
    rows = linear.out_features if rows is None else rows
    cols = linear.in_features if cols is None else cols
    weight = linear.weight.detach()[:rows, :cols].clone(memory_format=torch.contiguous_format)
    linear.weight = nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        bias = linear.bias.detach()[:rows].clone()
        linear.bias = nn.Parameter(bias, requires_grad=linear.bias.requires_grad)
    linear.out_features, linear.in_features = rows, cols


def _as_permutation(order, size: int, what: str) -> torch.Tensor:
    """Validate ``order`` as a permutation of ``range(size)`` and return it as a LongTensor ``[size]``."""
    index = torch.as_tensor(order, dtype=torch.long).flatten().cpu()
    if index.numel() != size or not torch.equal(index.sort().values, torch.arange(size)):
        raise ValueError(f"{what} must be a permutation of range({size}), got {index.tolist()}")
    return index


class SparseBertEmbeddings(nn.Module):
    """Word + absolute position + token type embeddings, then LayerNorm and dropout.

    ``forward(input_ids [B, T], token_type_ids [B, T] or None) -> [B, T, hidden]``.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        position_type = getattr(config, "position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ModelConfigError(f"config position_embedding_type {position_type!r}: only 'absolute' is supported")
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = FastDropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        packing: TokenPacking | None = None,
    ) -> torch.Tensor:
        """``[B, T, hidden]``, or ``[N, hidden]`` at the real tokens of ``packing``."""
        return self.dropout(self.normalized(input_ids, token_type_ids, packing))

    def normalized(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        packing: TokenPacking | None = None,
    ) -> torch.Tensor:
        """The summed embeddings after LayerNorm, before dropout (deterministic)."""
        seq_len = input_ids.shape[1]
        if seq_len > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_position_embeddings "
                f"{self.position_embeddings.num_embeddings}"
            )
        if packing is None:
            embeddings = self.word_embeddings(input_ids) + self.position_embeddings.weight[:seq_len]
        else:
            positions = torch.arange(seq_len, device=input_ids.device).expand_as(input_ids)
            embeddings = self.word_embeddings(packing.unpad(input_ids)) + self.position_embeddings(
                packing.unpad(positions)
            )
            token_type_ids = None if token_type_ids is None else packing.unpad(token_type_ids)
        if token_type_ids is None:
            embeddings = embeddings + self.token_type_embeddings.weight[0]
        else:
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(embeddings)


class SparseBertSelfAttention(nn.Module):
    """Q/K/V projections (rows grouped in heads of ``head_size``) and scaled dot-product attention.

    ``forward(x [B, T, hidden], packing None, num_heads, head_mask [>= num_heads] or None) -> context
    [B, T, num_heads * head_size]``; with a :class:`TokenPacking`, ``x [N, hidden] -> [N, width]``.
    """

    def __init__(self, config: BertConfig, num_heads: int):
        super().__init__()
        self.head_size = config.hidden_size // config.num_attention_heads
        width = num_heads * self.head_size
        self.query = _linear(config.hidden_size, width)
        self.key = _linear(config.hidden_size, width)
        self.value = _linear(config.hidden_size, width)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(
        self,
        x: torch.Tensor,
        packing: TokenPacking | None,
        num_heads: int,
        head_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, seq_len = (x.shape[0], x.shape[1]) if packing is None else (packing.batch, packing.seq_len)
        width = num_heads * self.head_size

        def heads(linear: nn.Linear) -> torch.Tensor:
            projected = _rows_linear(linear, x, width)
            if packing is not None:
                projected = packing.pad(projected)
            return projected.view(batch, seq_len, num_heads, self.head_size).transpose(1, 2)

        context = attention(
            heads(self.query),
            heads(self.key),
            heads(self.value),
            None if packing is None else packing.attn_mask,
            self.dropout_p if self.training else 0.0,
        )
        if head_mask is not None:
            context = context * head_mask[:num_heads].to(context.dtype).view(1, num_heads, 1, 1)
        context = context.transpose(1, 2).reshape(batch, seq_len, width)
        return context if packing is None else packing.unpad(context)


class SparseBertResidualOutput(nn.Module):
    """Projection back to ``hidden`` over the first ``width`` inputs, dropout, residual, LayerNorm.

    ``forward(features [B, T, width] or None, residual [B, T, hidden], width) -> [B, T, hidden]``.
    With ``width == 0`` (or ``features`` None) the projection contributes only its bias, as an
    all-zero mask would.

    Without dropout and autocast the matmul accumulates into ``residual + bias``
    (:func:`~models.fast_ops.residual_linear`, fp32). With dropout it runs unfused, since dropout
    applies to the projection alone. Under ``torch.autocast`` it runs unfused as in HF BERT: the
    projection comes out in half precision, the residual add promotes it back to the residual's
    fp32, and LayerNorm runs in fp32.
    """

    def __init__(self, config: BertConfig, width: int):
        super().__init__()
        self.dense = _linear(width, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = FastDropout(config.hidden_dropout_prob)

    def forward(self, features: torch.Tensor | None, residual: torch.Tensor, width: int) -> torch.Tensor:
        if features is None or width == 0:
            return self.LayerNorm(residual + self.dropout(self.dense.bias.expand_as(residual)))
        if (self.training and self.dropout.p > 0) or torch.is_autocast_enabled(features.device.type):
            projected = _cols_linear(self.dense, features, width)
            return self.LayerNorm(residual + self.dropout(projected))
        weight = self.dense.weight if width == self.dense.in_features else self.dense.weight[:, :width]
        return self.LayerNorm(residual_linear(residual, features, weight, self.dense.bias))


class SparseBertAttention(nn.Module):
    """Self-attention block: ``self`` (Q/K/V + SDPA) and ``output`` (dense + residual LayerNorm)."""

    def __init__(self, config: BertConfig, num_heads: int):
        super().__init__()
        self.self = SparseBertSelfAttention(config, num_heads)
        self.output = SparseBertResidualOutput(config, num_heads * self.self.head_size)

    def forward(
        self,
        x: torch.Tensor,
        packing: TokenPacking | None,
        num_heads: int,
        head_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x [B, T, hidden] -> [B, T, hidden]`` (``[N, hidden]`` packed) using the first ``num_heads`` heads."""
        width = num_heads * self.self.head_size
        context = self.self(x, packing, num_heads, head_mask) if num_heads > 0 else None
        return self.output(context, x, width)


class SparseBertIntermediate(nn.Module):
    """FFN up-projection and activation: ``[B, T, hidden] -> [B, T, num_neurons]``, then the neuron mask."""

    def __init__(self, config: BertConfig, num_neurons: int):
        super().__init__()
        self.dense = _linear(config.hidden_size, num_neurons)
        act = config.hidden_act
        self.act = ACT2FN[act] if isinstance(act, str) else act

    def forward(
        self, x: torch.Tensor, num_neurons: int, neuron_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        activations = self.act(_rows_linear(self.dense, x, num_neurons))
        if neuron_mask is not None:
            activations = activations * neuron_mask[:num_neurons].to(activations.dtype)
        return activations


class SparseBertLayer(nn.Module):
    """One Transformer layer with prunable heads and FFN neurons.

    Attributes:
        num_heads, num_neurons: the CURRENT (possibly sliced) widths used by ``forward``.
        physical_heads, physical_neurons: the widths of the stored weights.
    """

    def __init__(self, config: BertConfig, num_heads: int, num_neurons: int):
        super().__init__()
        self.attention = SparseBertAttention(config, num_heads)
        self.intermediate = SparseBertIntermediate(config, num_neurons)
        self.output = SparseBertResidualOutput(config, num_neurons)
        self.num_heads = num_heads
        self.num_neurons = num_neurons

    @property
    def head_size(self) -> int:
        return self.attention.self.head_size

    @property
    def physical_heads(self) -> int:
        return self.attention.self.query.out_features // self.head_size

    @property
    def physical_neurons(self) -> int:
        return self.intermediate.dense.out_features

    def prunable_linears(self) -> list[nn.Linear]:
        """The six prunable linears: Q, K, V, attention-output dense, intermediate dense, output dense."""
        attn = self.attention
        return [
            attn.self.query,
            attn.self.key,
            attn.self.value,
            attn.output.dense,
            self.intermediate.dense,
            self.output.dense,
        ]

    def prunable_parameter_count(self, hidden_size: int) -> int:
        """Weights and biases of the six prunable linears at the current widths."""
        width = self.num_heads * self.head_size
        attention = 3 * (width * hidden_size + width) + width * hidden_size + hidden_size
        ffn = self.num_neurons * hidden_size + self.num_neurons + self.num_neurons * hidden_size + hidden_size
        return attention + ffn

    def forward(
        self,
        x: torch.Tensor,
        packing: TokenPacking | None,
        head_mask: torch.Tensor | None = None,
        neuron_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x [B, T, hidden] -> [B, T, hidden]`` (``[N, hidden]`` with ``packing``); masks are this layer's
        rows (``[>= num_heads]``, ``[>= num_neurons]``)."""
        x = self.attention(x, packing, self.num_heads, head_mask)
        activations = self.intermediate(x, self.num_neurons, neuron_mask) if self.num_neurons > 0 else None
        return self.output(activations, x, self.num_neurons)

    @torch.no_grad()
    def reorder(self, head_order: torch.Tensor | None, neuron_order: torch.Tensor | None) -> None:
        """Permute heads (``[physical_heads]``) and neurons (``[physical_neurons]``) in place."""
        if head_order is not None:
            rows = (head_order[:, None] * self.head_size + torch.arange(self.head_size)).flatten()
            rows = rows.to(self.attention.self.query.weight.device)
            for linear in (self.attention.self.query, self.attention.self.key, self.attention.self.value):
                linear.weight.copy_(linear.weight[rows])
                linear.bias.copy_(linear.bias[rows])
            dense = self.attention.output.dense
            dense.weight.copy_(dense.weight[:, rows])
        if neuron_order is not None:
            index = neuron_order.to(self.intermediate.dense.weight.device)
            self.intermediate.dense.weight.copy_(self.intermediate.dense.weight[index])
            self.intermediate.dense.bias.copy_(self.intermediate.dense.bias[index])
            self.output.dense.weight.copy_(self.output.dense.weight[:, index])

    def densify(self) -> None:
        """Replace the prunable parameters by new tensors at the current widths."""
        width = self.num_heads * self.head_size
        for linear in (self.attention.self.query, self.attention.self.key, self.attention.self.value):
            _shrink_linear(linear, rows=width)
        _shrink_linear(self.attention.output.dense, cols=width)
        _shrink_linear(self.intermediate.dense, rows=self.num_neurons)
        _shrink_linear(self.output.dense, cols=self.num_neurons)


class SparseBertEncoder(nn.Module):
    """The stack of :class:`SparseBertLayer` (``encoder.layer.{i}``)."""

    def __init__(self, config: BertConfig, heads: Sequence[int], neurons: Sequence[int]):
        super().__init__()
        self.layer = nn.ModuleList(SparseBertLayer(config, h, n) for h, n in zip(heads, neurons, strict=True))


class SparseBertPreTrainedModel(PreTrainedModel):
    """Base class: ``BertConfig``, HF-compatible save/load, BERT weight initialisation."""

    config_class = BertConfig
    base_model_prefix = "bert"
    # Old BERT checkpoints (e.g. all-MiniLM-L6-v2) store the position-id buffer; it is recomputed here.
    # The pooler of BERT checkpoints is unused by our heads and not part of the model.
    _keys_to_ignore_on_load_unexpected = [r"position_ids", r"pooler\."]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if module.weight.numel():
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                nn.init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def count_parameters(self) -> dict[str, int]:
        """Parameter counts at the CURRENT (possibly sliced) widths.

        Returns:
            ``{"prunable": n, "total": m}``: ``prunable`` counts the weights and biases of the six
            prunable linears of every encoder layer (Q, K, V, attention-output dense, intermediate
            dense, output dense); ``total`` counts every parameter the current model holds for use
            (embeddings, LayerNorms and task head included).
        """
        current, physical = self.base_model.prunable_parameter_counts()
        total = sum(p.numel() for p in self.parameters()) - physical + current
        return {"prunable": current, "total": total}


def _prepare_sparsity_config(config: BertConfig) -> None:
    """Give ``config`` int ``sparsity`` and an int-keyed ``sparsity_map`` restricted to its layers."""
    sparsity = int(getattr(config, "sparsity", 0) or 0)
    sparsity_map = normalize_sparsity_map(getattr(config, "sparsity_map", None))
    sparsity_map = truncate_sparsity_map(sparsity_map, num_layers=config.num_hidden_layers)
    if sparsity != 0 and sparsity not in sparsity_map:
        raise ModelConfigError(
            f"config.sparsity={sparsity} is not a level of config.sparsity_map {sorted(sparsity_map)}"
        )
    config.sparsity = sparsity
    config.sparsity_map = sparsity_map


def _widths_at(config: BertConfig, sparsity: int, num_layers: int) -> tuple[list[int], list[int]]:
    """Heads and neurons kept per layer at ``sparsity`` (``0`` with no map entry = full size)."""
    entry = config.sparsity_map.get(sparsity, {unit: {} for unit in UNITS})
    heads = [config.num_attention_heads - entry["head"].get(i, 0) for i in range(num_layers)]
    neurons = [config.intermediate_size - entry["neuron"].get(i, 0) for i in range(num_layers)]
    if min(heads + neurons, default=0) < 0:
        raise ModelConfigError(f"sparsity map level {sparsity} removes more heads or neurons than exist")
    return heads, neurons


class SparseBertModel(SparseBertPreTrainedModel):
    """The prunable BERT encoder (no pooler computation).

    Built at the physical widths given by ``config.sparsity`` and ``config.sparsity_map``, so a
    densified checkpoint reloads with ``from_pretrained``.

    ``forward(input_ids [B, T], attention_mask [B, T] (1 = token, 0 = padding), token_type_ids [B, T],
    head_mask [L, H], neuron_mask [L, I]) -> HiddenStates``, the L + 1 hidden states ``[B, T, hidden]``
    (embedding output first, then each layer's output; zero at padding positions).

    Example:
        >>> model = SparseBertModel(config)            # doctest: +SKIP
        >>> model.reorder(head_order, neuron_order)    # importance order, function unchanged
        >>> model.sparsify(90); model.densify()        # a physically pruned 90S encoder
    """

    def __init__(self, config: BertConfig):
        super().__init__(config)
        _prepare_sparsity_config(config)
        heads, neurons = _widths_at(config, config.sparsity, config.num_hidden_layers)
        self.embeddings = SparseBertEmbeddings(config)
        self.encoder = SparseBertEncoder(config, heads, neurons)
        self.current_sparsity = config.sparsity
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.layer

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        neuron_mask: torch.Tensor | None = None,
        embedding_output: torch.Tensor | None = None,
    ) -> HiddenStates:
        """Encode ``input_ids [B, T]``; returns the L + 1 hidden states, each ``[B, T, hidden]``, zero at padding.

        ``head_mask [L, H]`` / ``neuron_mask [L, I]`` (1 = keep) multiply each head's context and each
        FFN activation; row ``l`` is applied to layer ``l``'s leading ``num_heads``/``num_neurons``
        entries (give them at the model's physical widths). ``embedding_output`` is what
        :meth:`embed` returns for these inputs: given, the embeddings are not recomputed (dropout
        is still applied), so several forwards of one batch can share one embedding backward.
        """
        num_layers = len(self.layers)
        for name, mask, widths in (
            ("head_mask", head_mask, [layer.num_heads for layer in self.layers]),
            ("neuron_mask", neuron_mask, [layer.num_neurons for layer in self.layers]),
        ):
            if mask is not None and (
                mask.dim() != 2 or mask.shape[0] != num_layers or mask.shape[1] < max(widths, default=0)
            ):
                raise ValueError(
                    f"{name} must be [{num_layers}, >= {max(widths, default=0)}], got {tuple(mask.shape)}"
                )
        packing = self._packing(attention_mask)
        if embedding_output is None:
            hidden = self.embeddings(input_ids, token_type_ids, packing)
        else:
            expected = (input_ids.numel() if packing is None else len(packing.index), self.config.hidden_size)
            if embedding_output.shape[-1] != expected[1] or embedding_output.flatten(0, -2).shape[0] != expected[0]:
                raise ValueError(f"embedding_output must be what embed() returns for these inputs: "
                                 f"{expected[0]} tokens x {expected[1]}, got {tuple(embedding_output.shape)}")
            hidden = self.embeddings.dropout(embedding_output)
        hidden_states = [hidden]
        for i, layer in enumerate(self.layers):
            hidden = layer(
                hidden,
                packing,
                None if head_mask is None else head_mask[i],
                None if neuron_mask is None else neuron_mask[i],
            )
            hidden_states.append(hidden)
        return HiddenStates(hidden_states, packing)

    @staticmethod
    def _packing(attention_mask: torch.Tensor | None) -> TokenPacking | None:
        # No padding: no mask, and SDPA takes its fastest path. Padding: run on the real tokens only.
        if attention_mask is None or bool(attention_mask.all()):
            return None
        return TokenPacking(attention_mask)

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The embeddings' LayerNorm output (before dropout) as :meth:`forward` computes it: ``[B, T, hidden]``,
        or ``[N, hidden]`` at the real tokens when ``attention_mask`` has padding. Independent of the
        current width; pass it back as ``forward(..., embedding_output=...)``."""
        return self.embeddings.normalized(input_ids, token_type_ids, self._packing(attention_mask))

    # The verbs of pruning.

    def kept_widths(self) -> dict[str, list[int]]:
        """Current heads and neurons kept per layer: ``{"head": [L ints], "neuron": [L ints]}``."""
        return {
            "head": [layer.num_heads for layer in self.layers],
            "neuron": [layer.num_neurons for layer in self.layers],
        }

    def reorder(self, head_order=None, neuron_order=None) -> None:
        """Permute heads and FFN neurons of every layer; the model's function is unchanged.

        Args:
            head_order: LongTensor ``[L, H]`` or a list of L 1-D tensors; row ``l`` lists layer ``l``'s
                heads in their new order (e.g. by descending importance), so ``sparsify`` keeps the first.
            neuron_order: LongTensor ``[L, I]`` or a list of L 1-D tensors, likewise for neurons.

        Raises:
            ValueError: on a sliced or densified model (``config.sparsity != 0``), or if a row is not a
                permutation.
        """
        if self.config.sparsity != 0 or self.current_sparsity != 0:
            raise ValueError(
                "reorder needs the full, unpruned model (config.sparsity == 0 and not sparsified), "
                f"got config.sparsity={self.config.sparsity}, current sparsity={self.current_sparsity}"
            )
        num_layers = len(self.layers)
        for name, order in (("head_order", head_order), ("neuron_order", neuron_order)):
            if order is not None and len(order) != num_layers:
                raise ValueError(f"{name} must have one row per layer ({num_layers}), got {len(order)}")
        for i, layer in enumerate(self.layers):
            heads = None
            neurons = None
            if head_order is not None:
                heads = _as_permutation(head_order[i], layer.physical_heads, f"head_order[{i}]")
            if neuron_order is not None:
                neurons = _as_permutation(neuron_order[i], layer.physical_neurons, f"neuron_order[{i}]")
            layer.reorder(heads, neurons)

    def available_sparsities(self) -> list[int]:
        """The levels :meth:`sparsify` accepts: ``config.sparsity`` and the map's levels above it."""
        base = self.config.sparsity
        return sorted({base} | {s for s in self.config.sparsity_map if s >= base})

    def sparsify(self, sparsity: int) -> None:
        """Slice every layer to its widths at ``sparsity`` (virtual pruning; weights untouched).

        Cheap (only integer widths change) and autograd-safe: sliced forwards use views of the full
        parameters, so gradients reach the full tensors. ``sparsify(config.sparsity)`` restores the
        physical widths.

        Raises:
            ValueError: if ``sparsity`` is not in :meth:`available_sparsities`.
            TypeError: if ``sparsity`` is not an int.
        """
        sparsity = operator.index(sparsity)
        if sparsity not in self.available_sparsities():
            raise ValueError(
                f"sparsity {sparsity} is not available; choose from {self.available_sparsities()}"
            )
        if sparsity == self.config.sparsity:
            heads = [layer.physical_heads for layer in self.layers]
            neurons = [layer.physical_neurons for layer in self.layers]
        else:
            heads, neurons = _widths_at(self.config, sparsity, len(self.layers))
        for i, (layer, h, n) in enumerate(zip(self.layers, heads, neurons, strict=True)):
            if h > layer.physical_heads or n > layer.physical_neurons:
                raise ValueError(
                    f"sparsity {sparsity} keeps {h} heads / {n} neurons in layer {i}, more than its "
                    f"physical {layer.physical_heads} / {layer.physical_neurons}"
                )
            layer.num_heads, layer.num_neurons = h, n
        self.current_sparsity = sparsity

    def densify(self) -> None:
        """Physically prune to the current slice: new, smaller (contiguous) ``nn.Parameter`` tensors.

        Sets ``config.sparsity`` to the current level and truncates the map to levels ``>=`` it, so
        the model saves/reloads at its new shapes and can be sparsified further. Optimisers holding
        the old parameters must be rebuilt.
        """
        for layer in self.layers:
            layer.densify()
        self.config.sparsity = self.current_sparsity
        self.config.sparsity_map = truncate_sparsity_map(self.config.sparsity_map, self.current_sparsity)
        logger.info("densified to sparsity %d: %s", self.current_sparsity, self.kept_widths())

    def drop_layers(self, num_layers: int) -> None:
        """Keep the bottom ``num_layers`` layers (``config.num_hidden_layers`` and the map follow).

        Raises:
            ValueError: unless ``1 <= num_layers <= current number of layers``.
        """
        num_layers = operator.index(num_layers)
        if not 1 <= num_layers <= len(self.layers):
            raise ValueError(f"can keep between 1 and {len(self.layers)} layers, got {num_layers}")
        self.encoder.layer = self.encoder.layer[:num_layers]
        self.config.num_hidden_layers = num_layers
        self.config.sparsity_map = truncate_sparsity_map(self.config.sparsity_map, num_layers=num_layers)

    def prunable_parameter_counts(self) -> tuple[int, int]:
        """``(current, physical)`` parameter counts of the six prunable linears over all layers."""
        current = sum(layer.prunable_parameter_count(self.config.hidden_size) for layer in self.layers)
        physical = sum(
            p.numel() for layer in self.layers for lin in layer.prunable_linears() for p in lin.parameters()
        )
        return current, physical
