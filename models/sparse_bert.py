"""SparseBERT: a BERT encoder that can be masked, reordered, sliced and physically pruned.

Parameter names are those of HF ``BertModel`` (``embeddings.*``, ``encoder.layer.{i}.attention.self.
{query,key,value}``, ``encoder.layer.{i}.attention.output.{dense,LayerNorm}``,
``encoder.layer.{i}.intermediate.dense``, ``encoder.layer.{i}.output.{dense,LayerNorm}``), so any
HF BERT checkpoint loads. The configuration is a plain
``transformers.BertConfig`` with two extra attributes:

* ``config.sparsity`` (``int``): the sparsity level the physical weights are pruned to (0 = none);
* ``config.sparsity_map``: see :mod:`models.sparsity_map`.

BERT on the prunable core (:mod:`models.core`, :mod:`models.units`): each layer's attention is a block of head units
(Q/K/V rows and ``attention.output.dense`` columns) and each layer is a block of neuron units
(``intermediate.dense`` rows and ``output.dense`` columns); the verbs (``reorder``, ``sparsify``,
``densify``, ``drop_layers``, the counts) are the core's. ``head_mask [L, H]`` and ``neuron_mask
[L, I]`` forward inputs multiply each head's context and each FFN activation (differentiable, for
importance scoring).

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

from collections.abc import Sequence

import torch
from torch import nn
from transformers import BertConfig, PreTrainedModel
from transformers.activations import ACT2FN

from .core import PrunableModel, init_standard
from .fast_ops import FastDropout, attention, residual_linear
from .packing import HiddenStates, PaddedBatch, TokenPacking, padding_kept
from .sparsity_map import ModelConfigError
from .units import PrunableBlock, cols_linear, new_linear


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

    ``forward(x [B, T, hidden], packing None, block, head_mask [>= kept heads] or None) -> context
    [B, T, kept · head_size]``; with a :class:`TokenPacking`, ``x [N, hidden] -> [N, width]``. ``block``
    is the enclosing :class:`SparseBertAttention`, which knows the kept heads.
    """

    def __init__(self, config: BertConfig, num_heads: int):
        super().__init__()
        self.head_size = config.hidden_size // config.num_attention_heads
        width = num_heads * self.head_size
        self.query = new_linear(config.hidden_size, width)
        self.key = new_linear(config.hidden_size, width)
        self.value = new_linear(config.hidden_size, width)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(
        self,
        x: torch.Tensor,
        packing: TokenPacking | None,
        block: PrunableBlock,
        head_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, seq_len = (x.shape[0], x.shape[1]) if packing is None else (packing.batch, packing.seq_len)
        num_heads, width = block.kept, block.kept_width

        def heads(name: str) -> torch.Tensor:
            projected = block.rows(name, x)
            if packing is not None:
                projected = packing.pad(projected)
            return projected.view(batch, seq_len, num_heads, self.head_size).transpose(1, 2)

        context = attention(
            heads("self.query"),
            heads("self.key"),
            heads("self.value"),
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
        self.dense = new_linear(width, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = FastDropout(config.hidden_dropout_prob)

    def forward(self, features: torch.Tensor | None, residual: torch.Tensor, width: int) -> torch.Tensor:
        if features is None or width == 0:
            return self.LayerNorm(residual + self.dropout(self.dense.bias.expand_as(residual)))
        if (self.training and self.dropout.p > 0) or torch.is_autocast_enabled(features.device.type):
            projected = cols_linear(self.dense, features, width)
            return self.LayerNorm(residual + self.dropout(projected))
        weight = self.dense.weight if width == self.dense.in_features else self.dense.weight[:, :width]
        return self.LayerNorm(residual_linear(residual, features, weight, self.dense.bias))


class SparseBertAttention(PrunableBlock):
    """Self-attention block, the head units: ``self`` (Q/K/V + SDPA) and ``output`` (dense + residual LayerNorm)."""

    unit_kind = "head"
    unit_rows = ("self.query", "self.key", "self.value")
    unit_cols = ("output.dense",)

    def __init__(self, config: BertConfig, num_heads: int):
        super().__init__()
        self.self = SparseBertSelfAttention(config, num_heads)
        self.output = SparseBertResidualOutput(config, num_heads * self.self.head_size)
        self.init_units(self.self.head_size)

    def forward(
        self,
        x: torch.Tensor,
        packing: TokenPacking | None,
        head_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x [B, T, hidden] -> [B, T, hidden]`` (``[N, hidden]`` packed) using the kept heads."""
        context = self.self(x, packing, self, head_mask) if self.kept > 0 else None
        return self.output(context, x, self.kept_width)


class SparseBertIntermediate(nn.Module):
    """FFN up-projection and activation: ``[B, T, hidden] -> [B, T, kept]``, then the neuron mask."""

    def __init__(self, config: BertConfig, num_neurons: int):
        super().__init__()
        self.dense = new_linear(config.hidden_size, num_neurons)
        act = config.hidden_act
        self.act = ACT2FN[act] if isinstance(act, str) else act

    def forward(self, x: torch.Tensor, block: PrunableBlock, neuron_mask: torch.Tensor | None = None) -> torch.Tensor:
        activations = self.act(block.rows("intermediate.dense", x))
        if neuron_mask is not None:
            activations = activations * neuron_mask[:block.kept].to(activations.dtype)
        return activations


class SparseBertLayer(PrunableBlock):
    """One Transformer layer: the attention block (head units), then the FFN, whose neurons are this
    block's units (``intermediate.dense`` rows and ``output.dense`` columns)."""

    unit_kind = "neuron"
    unit_rows = ("intermediate.dense",)
    unit_cols = ("output.dense",)

    def __init__(self, config: BertConfig, num_heads: int, num_neurons: int):
        super().__init__()
        self.attention = SparseBertAttention(config, num_heads)
        self.intermediate = SparseBertIntermediate(config, num_neurons)
        self.output = SparseBertResidualOutput(config, num_neurons)
        self.init_units()

    def forward(
        self,
        x: torch.Tensor,
        packing: TokenPacking | None,
        head_mask: torch.Tensor | None = None,
        neuron_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x [B, T, hidden] -> [B, T, hidden]`` (``[N, hidden]`` with ``packing``); masks are this layer's
        rows (``[>= kept heads]``, ``[>= kept neurons]``)."""
        x = self.attention(x, packing, head_mask)
        activations = self.intermediate(x, self, neuron_mask) if self.kept > 0 else None
        return self.output(activations, x, self.kept)


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

    @classmethod
    def is_backbone_key(cls, key: str) -> bool:
        """Whether a checkpoint key belongs to the pretrained encoder (embeddings or layers), with or
        without the ``bert.`` prefix; other keys are a task head's."""
        key = key.removeprefix(cls.base_model_prefix + ".")
        return key.startswith(("embeddings.", "encoder."))

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if init_standard(module, self.config.initializer_range):
            return
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class SparseBertModel(PrunableModel, SparseBertPreTrainedModel):
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

    unit_config = {"head": "num_attention_heads", "neuron": "intermediate_size"}
    depth_config = "num_hidden_layers"

    def __init__(self, config: BertConfig):
        super().__init__(config)
        widths = self.prepare_config(config)
        self.embeddings = SparseBertEmbeddings(config)
        self.encoder = SparseBertEncoder(config, widths["head"], widths["neuron"])
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
        self.check_masks(head_mask=head_mask, neuron_mask=neuron_mask)
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
            hidden = self.call_layer(
                layer,
                hidden,
                packing,
                None if head_mask is None else head_mask[i],
                None if neuron_mask is None else neuron_mask[i],
            )
            hidden_states.append(hidden)
        return HiddenStates(hidden_states, packing)

    @staticmethod
    def _packing(attention_mask: torch.Tensor | None) -> TokenPacking | PaddedBatch | None:
        # Exported (ONNX) or keep_padding(): one graph for every input, padding masked. Eager, no padding: no
        # mask, and SDPA takes its fastest path. Eager with padding: run on the real tokens only.
        if attention_mask is not None and padding_kept():
            return PaddedBatch(attention_mask)
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

    # What the prunable core needs to know.

    @classmethod
    def unit_row_counts(cls, config: BertConfig) -> dict[str, int]:
        """One head row and one neuron row per layer."""
        return {"head": config.num_hidden_layers, "neuron": config.num_hidden_layers}

    def _keep_layers(self, num_layers: int) -> None:
        self.encoder.layer = self.encoder.layer[:num_layers]

    def layer_modules(self) -> list[nn.Module]:
        return list(self.encoder.layer)
