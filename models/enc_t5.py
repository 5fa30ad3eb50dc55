"""EncT5 on the prunable core: a T5 encoder, one T5 decoder block fed a learned vector, a classifier.

The architecture of the original MiniDisc code's T5 path (its billion-parameter run used ``t5-3b``):

* ``shared`` token embeddings, then the T5 encoder (``encoder.block.{i}``, ``encoder.final_layer_norm``);
* for sequence tasks (:class:`SparseEncT5Cls`), the first block of the T5 decoder
  (``decoder.block.0``: self-attention, cross-attention to the encoder, FFN) and
  ``decoder.final_layer_norm``, run on ONE position whose input is a learned vector ``decoder_input
  [1, d_model]``, and a linear ``classifier`` (``d_model -> num_labels``; 1 for regression) on that
  position;
* for token tasks (:class:`SparseEncT5Ner`), no decoder: a per-token ``classifier`` (dropout, then
  linear) on the encoder's final states, as for BERT. The reference fed one learned decoder input
  per position instead; a head on the encoder states needs no decoder pass, trains the same
  encoder states the distillation loss matches, and loads the same checkpoints.

Parameter names are HF T5's, so the encoder and decoder block 0 of any ``t5-*``, ``google/t5-v1_1-*``
or ``google/flan-t5-*`` checkpoint load (the other decoder blocks and the LM head are skipped). The
configuration is a ``transformers.T5Config`` with ``sparsity`` and ``sparsity_map`` added.

Prunable units (:mod:`models.core`): the heads of every encoder self-attention, of the decoder
self-attention and of the decoder cross-attention (head rows ``0..L-1``, ``L``, ``L+1``), and the
neurons of every encoder FFN and of the decoder FFN (neuron rows ``0..L-1``, ``L``). A ReLU FFN's
neuron is a row of ``wi`` and a column of ``wo``; a gated-GELU neuron is a row of ``wi_0`` and of
``wi_1`` and a column of ``wo``.

Relative position bias: only the first block of each stack owns a table (``[buckets, heads]``) that
every layer of the stack adds. Each attention keeps ``head_ids``, an integer buffer of the original
head id of each stored head: reorder permutes it, densify slices it, and each layer adds the table
columns of its own kept heads.

Empty blocks: T5 is pre-LayerNorm without biases, so a block with no heads (or no neurons) adds
nothing and the residual passes through. Importance-built maps never remove the last
cross-attention head (its ``min_units`` is 1): without it the classifier would not see the input.

Padding: the encoder runs on the padded batch with an additive key mask; the returned hidden
states are zero at padding positions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, T5Config
from transformers.activations import ACT2FN

from .core import Normalization, PrunableModel
from .outputs import TaskOutput, task_loss
from .packing import padding_kept
from .units import PrunableBlock, new_linear


class T5Norm(Normalization):
    """T5's LayerNorm: scale by the root mean square (in fp32), no mean subtraction, no bias."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.variance_epsilon)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


def relative_buckets(query_length: int, key_length: int, bidirectional: bool, num_buckets: int,
                     max_distance: int, device) -> torch.Tensor:
    """T5's bucket of every (query, key) offset ``key - query``: LongTensor ``[query_length, key_length]``.

    Half the buckets (per direction when bidirectional) are exact offsets; the rest grow
    logarithmically up to ``max_distance``, beyond which offsets share the last bucket.
    """
    offset = (torch.arange(key_length, device=device)[None, :]
              - torch.arange(query_length, device=device)[:, None])
    buckets = torch.zeros_like(offset)
    if bidirectional:
        num_buckets //= 2
        buckets += (offset > 0).long() * num_buckets
        distance = offset.abs()
    else:
        distance = (-offset).clamp(min=0)
    exact = num_buckets // 2
    logarithmic = exact + (torch.log(distance.float() / exact) / math.log(max_distance / exact)
                           * (num_buckets - exact)).long()
    logarithmic = logarithmic.clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < exact, distance, logarithmic)


class SparseT5Attention(PrunableBlock):
    """T5 attention (no biases, no score scaling) over the kept heads; ``head_ids`` maps them to the
    original heads, whose relative-position bias columns they add.

    ``forward(x [B, Tq, d], keys [B, Tk, d] or None (self-attention), bias [1, H, Tq, Tk] (full-head
    position bias, or None), mask [B, 1, 1, Tk] additive or None, head_mask [>= kept]) -> [B, Tq, d]``.
    """

    unit_kind = "head"
    unit_rows = ("q", "k", "v")
    unit_cols = ("o",)
    unit_index = ("head_ids",)

    def __init__(self, config: T5Config, num_heads: int, has_bias_table: bool = False, min_units: int = 0):
        super().__init__()
        self.head_size = config.d_kv
        width = num_heads * config.d_kv
        self.q = new_linear(config.d_model, width, bias=False)
        self.k = new_linear(config.d_model, width, bias=False)
        self.v = new_linear(config.d_model, width, bias=False)
        self.o = new_linear(width, config.d_model, bias=False)
        if has_bias_table:
            self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_heads)
        self.register_buffer("head_ids", torch.arange(num_heads), persistent=True)
        self.dropout_p = config.dropout_rate
        self.min_units = min_units
        self.init_units(config.d_kv)

    def forward(self, x, keys=None, bias=None, mask=None, head_mask=None) -> torch.Tensor:
        batch, q_len = x.shape[:2]
        keys = x if keys is None else keys
        k_len = keys.shape[1]

        def heads(name: str, source: torch.Tensor, length: int) -> torch.Tensor:
            return self.rows(name, source).view(batch, length, self.kept, self.head_size).transpose(1, 2)

        scores_bias = None
        if bias is not None:
            scores_bias = bias.index_select(1, self.index("head_ids"))
        if mask is not None:
            scores_bias = mask if scores_bias is None else scores_bias + mask
        query, key, value = heads("q", x, q_len), heads("k", keys, k_len), heads("v", keys, k_len)
        if scores_bias is not None:
            scores_bias = scores_bias.to(query.dtype)
        if torch.compiler.is_exporting():
            # SDPA's decomposition for ONNX gives an output whose strides it then cannot reshape; the same
            # attention spelled out exports cleanly (T5 does not scale the scores).
            scores = query @ key.transpose(-1, -2)
            context = (scores if scores_bias is None else scores + scores_bias).softmax(-1) @ value
        else:
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=scores_bias, scale=1.0,
                                                     dropout_p=self.dropout_p if self.training else 0.0)
        if head_mask is not None:
            context = context * head_mask[:self.kept].to(context.dtype).view(1, self.kept, 1, 1)
        return self.cols("o", context.transpose(1, 2).reshape(batch, q_len, self.kept_width))


class SparseT5FFN(PrunableBlock):
    """T5's FFN over the kept neurons: ``wo(act(wi x))`` (ReLU) or ``wo(act(wi_0 x) * wi_1 x)`` (gated-GELU).

    ``forward(x [B, T, d], neuron_mask [>= kept] or None) -> [B, T, d]``.
    """

    unit_kind = "neuron"
    unit_cols = ("wo",)

    def __init__(self, config: T5Config, num_neurons: int):
        super().__init__()
        self.gated = config.is_gated_act
        self.activation_copies = int(self.gated)  # a gated FFN also keeps its activation for backward
        self.unit_rows = ("wi_0", "wi_1") if self.gated else ("wi",)
        for name in self.unit_rows:
            setattr(self, name, new_linear(config.d_model, num_neurons, bias=False))
        self.wo = new_linear(num_neurons, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = ACT2FN[config.dense_act_fn]
        self.init_units()

    def forward(self, x: torch.Tensor, neuron_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.gated:
            hidden = self.act(self.rows("wi_0", x)) * self.rows("wi_1", x)
        else:
            hidden = self.act(self.rows("wi", x))
        if neuron_mask is not None:
            hidden = hidden * neuron_mask[:self.kept].to(hidden.dtype)
        hidden = self.dropout(hidden)
        if hidden.dtype != self.wo.weight.dtype and not torch.is_autocast_enabled(hidden.device.type):
            hidden = hidden.to(self.wo.weight.dtype)
        return self.cols("wo", hidden)


class _Residual(nn.Module):
    """Pre-LayerNorm residual around one sublayer: ``x + dropout(sublayer(norm(x)))``; ``x`` when the
    sublayer has no units left."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.layer_norm = T5Norm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def residual(self, block: PrunableBlock, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if block.kept == 0:
            return x
        return x + self.dropout(block(self.layer_norm(x), *args, **kwargs))


class T5SelfAttentionLayer(_Residual):
    def __init__(self, config: T5Config, num_heads: int, has_bias_table: bool):
        super().__init__(config)
        self.SelfAttention = SparseT5Attention(config, num_heads, has_bias_table)

    def forward(self, x, bias=None, mask=None, head_mask=None):
        return self.residual(self.SelfAttention, x, None, bias, mask, head_mask)


class T5CrossAttentionLayer(_Residual):
    def __init__(self, config: T5Config, num_heads: int):
        super().__init__(config)
        self.EncDecAttention = SparseT5Attention(config, num_heads, min_units=1)

    def forward(self, x, keys, mask=None, head_mask=None):
        return self.residual(self.EncDecAttention, x, keys, None, mask, head_mask)


class T5FFNLayer(_Residual):
    def __init__(self, config: T5Config, num_neurons: int):
        super().__init__(config)
        self.DenseReluDense = SparseT5FFN(config, num_neurons)

    def forward(self, x, neuron_mask=None):
        return self.residual(self.DenseReluDense, x, neuron_mask)


class SparseT5Block(nn.Module):
    """``layer[0]`` self-attention, ``layer[1]`` cross-attention (decoder only), ``layer[-1]`` FFN.

    ``forward`` runs an encoder block: ``(x, bias, mask, head_mask row, neuron_mask row) -> x``.
    """

    def __init__(self, config: T5Config, heads: Sequence[int], neurons: int, has_bias_table: bool):
        super().__init__()
        layers = [T5SelfAttentionLayer(config, heads[0], has_bias_table)]
        if len(heads) == 2:
            layers.append(T5CrossAttentionLayer(config, heads[1]))
        layers.append(T5FFNLayer(config, neurons))
        self.layer = nn.ModuleList(layers)

    def forward(self, x, bias=None, mask=None, head_mask=None, neuron_mask=None) -> torch.Tensor:
        return self.layer[-1](self.layer[0](x, bias, mask, head_mask), neuron_mask)


class SparseT5Stack(nn.Module):
    """``block`` (a ModuleList), ``final_layer_norm`` and ``dropout``, as HF's ``T5Stack`` (without its embeddings)."""

    def __init__(self, config: T5Config, heads: Sequence[Sequence[int]], neurons: Sequence[int]):
        super().__init__()
        self.block = nn.ModuleList(SparseT5Block(config, h, n, has_bias_table=(i == 0))
                                   for i, (h, n) in enumerate(zip(heads, neurons, strict=True)))
        self.final_layer_norm = T5Norm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def position_bias(self, config: T5Config, query_length: int, key_length: int, bidirectional: bool,
                      device) -> torch.Tensor:
        """The first block's relative-position bias for every original head: ``[1, H, Tq, Tk]``."""
        buckets = relative_buckets(query_length, key_length, bidirectional, config.relative_attention_num_buckets,
                                   config.relative_attention_max_distance, device)
        table = self.block[0].layer[0].SelfAttention.relative_attention_bias
        return table(buckets).permute(2, 0, 1).unsqueeze(0)


def _additive_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``[B, 1, 1, T]``: 0 at tokens, the dtype's minimum at padding; None without padding (eager only: an
    exported graph serves every input, so it always masks)."""
    if attention_mask is None or (not padding_kept() and bool(attention_mask.all())):
        return None
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class SparseEncT5PreTrainedModel(PrunableModel, PreTrainedModel):
    """EncT5's shared part: ``shared`` embeddings, the encoder, (for sequence tasks) decoder block 0, the
    pruning verbs over all of them, and a head. Subclasses set ``has_decoder`` and define the head."""

    config_class = T5Config
    base_model_prefix = "transformer"
    _supports_sdpa = True  # our attention is torch's scaled_dot_product_attention, whatever the config asks
    unit_config = {"head": "num_heads", "neuron": "d_ff"}
    depth_config = "num_layers"
    rows_are_layers = False  # the decoder's rows follow the encoder's
    has_decoder = True
    token_level = False
    distill_objective = "hidden_cos"  # pre-norm: raw residual states (see models.task.TaskModel)
    # T5 checkpoints hold decoder blocks beyond the first, an LM head and tied embedding copies: unused here.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\.block\.[1-9]", r"^lm_head\.", r"embed_tokens\.",
                                          r"EncDecAttention\.relative_attention_bias"]
    # ``head_ids`` are not in HF checkpoints: a checkpoint without them holds its heads in their original order.
    _keys_to_ignore_on_load_missing = [r"head_ids$"]
    # Parameters outside these are the task head's (a new head may be missing from a pretrained checkpoint).
    backbone_prefixes = ("shared.", "encoder.", "decoder.block.", "decoder.final_layer_norm.")

    def __init__(self, config: T5Config):
        super().__init__(config)
        widths = self.prepare_config(config)
        layers = config.num_layers
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        heads, neurons = widths["head"], widths["neuron"]
        self.encoder = SparseT5Stack(config, [[h] for h in heads[:layers]], neurons[:layers])
        if self.has_decoder:
            self.decoder = SparseT5Stack(config, [heads[layers:layers + 2]], neurons[layers:])
            self.decoder_input = nn.Parameter(torch.zeros(1, config.d_model))
        self.current_sparsity = config.sparsity

    @classmethod
    def unit_row_counts(cls, config: T5Config) -> dict[str, int]:
        """Encoder layers, plus the decoder's self- and cross-attention (heads) and FFN (neurons)."""
        extra = 1 if cls.has_decoder else 0
        return {"head": config.num_layers + 2 * extra, "neuron": config.num_layers + extra}

    def _keep_layers(self, num_layers: int) -> None:
        self.encoder.block = self.encoder.block[:num_layers]

    def layer_modules(self) -> list[nn.Module]:
        """Each stack's position-bias table first (every block reads it, outside its owner's forward), then
        the blocks."""
        stacks = [self.encoder] + ([self.decoder] if self.has_decoder else [])
        tables = [stack.block[0].layer[0].SelfAttention.relative_attention_bias for stack in stacks]
        return tables + [block for stack in stacks for block in stack.block]

    def training_cost(self, seq_len: int) -> dict[str, int]:
        """Encoder blocks as :meth:`PrunableModel.training_cost` counts them; the decoder block runs on one
        position, except the cross-attention keys and values over every token."""
        d = self.config.d_model
        cost = {"forward_flops": 0, "stream_elements": 0, "projection_elements": 0}
        for block in self.encoder.block:
            attention, ffn = block.layer[0].SelfAttention, block.layer[-1].DenseReluDense
            cost["forward_flops"] += (attention.projection_flops(seq_len) + ffn.projection_flops(seq_len)
                                      + attention.attention_flops(seq_len, seq_len))
            cost["stream_elements"] += 4 * d * seq_len
            cost["projection_elements"] += attention.saved_elements(seq_len) + ffn.saved_elements(seq_len)
        if self.has_decoder:
            block = self.decoder.block[0]
            attention, cross, ffn = (block.layer[0].SelfAttention, block.layer[1].EncDecAttention,
                                     block.layer[2].DenseReluDense)
            # Q and O of the cross-attention see the one position, K and V every encoder token.
            cross_flops = cross.projection_flops(1) // 2 + cross.projection_flops(seq_len) // 2
            cost["forward_flops"] += (attention.projection_flops(1) + attention.attention_flops(1, 1) + cross_flops
                                      + cross.attention_flops(1, seq_len) + ffn.projection_flops(1))
            cost["stream_elements"] += 6 * d
            cost["projection_elements"] += 2 * cross.kept_width * seq_len
        return cost

    @classmethod
    def is_backbone_key(cls, key: str) -> bool:
        """Whether a checkpoint key belongs to the pretrained part (embeddings, encoder, decoder block)."""
        return key.startswith(cls.backbone_prefixes)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.shared = value

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # HF T5's scheme: N(0, factor · fan_in^-0.5) for projections, N(0, factor) for embeddings. Only
        # torch.nn.init calls: transformers 5 runs this after loading and guards them to skip loaded tensors.
        factor = self.config.initializer_factor
        d_model, d_kv = self.config.d_model, self.config.d_kv
        if isinstance(module, T5Norm):
            nn.init.constant_(module.weight, factor)
        elif isinstance(module, SparseT5Attention):
            for name, std in (("q", (d_model * d_kv) ** -0.5), ("k", d_model ** -0.5), ("v", d_model ** -0.5),
                              ("o", max(module.o.in_features, 1) ** -0.5)):
                if getattr(module, name).weight.numel():
                    nn.init.normal_(getattr(module, name).weight, std=factor * std)
            if hasattr(module, "relative_attention_bias"):
                nn.init.normal_(module.relative_attention_bias.weight, std=factor * d_model ** -0.5)
            if not getattr(module.head_ids, "_is_hf_initialized", False):
                module.head_ids.copy_(torch.arange(module.head_ids.numel()))
        elif isinstance(module, SparseT5FFN):
            for name in module.unit_rows:
                if getattr(module, name).weight.numel():
                    nn.init.normal_(getattr(module, name).weight, std=factor * d_model ** -0.5)
            if module.wo.weight.numel():
                nn.init.normal_(module.wo.weight, std=factor * self.config.d_ff ** -0.5)
        elif isinstance(module, SparseEncT5PreTrainedModel):
            nn.init.normal_(module.shared.weight, std=factor)
            if module.has_decoder:
                nn.init.normal_(module.decoder_input, std=factor * d_model ** -0.5)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=factor * d_model ** -0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def embed(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """The token embeddings before dropout ``[B, T, d]``; pass back as ``forward(..., embedding_output=...)``."""
        return self.shared(input_ids)

    def encode(self, input_ids, attention_mask=None, head_mask=None, neuron_mask=None, embedding_output=None):
        """The L + 1 encoder hidden states ``[B, T, d]``, zero at padding: the embedding output, each block's
        output, the last after ``final_layer_norm`` (HF T5's convention)."""
        self.check_masks(head_mask=head_mask, neuron_mask=neuron_mask)
        embeddings = self.shared(input_ids) if embedding_output is None else embedding_output
        hidden = self.encoder.dropout(embeddings)
        length = input_ids.shape[1]
        bias = self.encoder.position_bias(self.config, length, length, True, hidden.device)
        mask = _additive_mask(attention_mask, hidden.dtype)
        states = [hidden]
        for i, block in enumerate(self.encoder.block):
            hidden = self.call_layer(block, hidden, bias, mask, None if head_mask is None else head_mask[i],
                                     None if neuron_mask is None else neuron_mask[i])
            states.append(hidden)
        states[-1] = self.encoder.dropout(self.encoder.final_layer_norm(hidden))
        if attention_mask is not None:
            keep = attention_mask[:, :, None].to(hidden.dtype)
            states = [state * keep for state in states]
        return tuple(states), mask

    def decode(self, encoded: torch.Tensor, mask, head_mask=None, neuron_mask=None) -> torch.Tensor:
        """Decoder block 0 on the learned input vector, attending to ``encoded [B, T, d]``: ``[B, d]``."""
        rows = self.config.num_layers
        block = self.decoder.block[0]
        hidden = self.decoder.dropout(self.decoder_input.expand(encoded.shape[0], 1, -1).to(encoded.dtype))
        bias = self.decoder.position_bias(self.config, 1, 1, False, hidden.device)
        hidden = block.layer[0](hidden, bias, None, None if head_mask is None else head_mask[rows])
        hidden = block.layer[1](hidden, encoded, mask, None if head_mask is None else head_mask[rows + 1])
        hidden = block.layer[2](hidden, None if neuron_mask is None else neuron_mask[rows])
        return self.decoder.dropout(self.decoder.final_layer_norm(hidden))[:, 0]

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, head_mask=None,
                neuron_mask=None, embedding_output=None) -> TaskOutput:
        """``input_ids [B, T]`` (``token_type_ids`` is accepted and unused) -> :class:`TaskOutput` with the
        encoder's L + 1 hidden states; ``head_mask [L + 2, H]`` and ``neuron_mask [L + 1, I]`` (``[L, .]``
        without a decoder) multiply each head's context and each FFN activation."""
        states, mask = self.encode(input_ids, attention_mask, head_mask, neuron_mask, embedding_output)
        logits = self.logits_from(states, mask, head_mask, neuron_mask)
        loss = None if labels is None else task_loss(logits, labels, self.token_level)
        return TaskOutput(logits=logits, hidden_states=states, loss=loss)


class SparseEncT5Cls(SparseEncT5PreTrainedModel):
    """EncT5 sequence classification (``num_labels > 1``) or regression (``num_labels == 1``): a linear
    ``classifier`` on decoder block 0's output at its one position."""

    data_type = "enct5_cls"

    def __init__(self, config: T5Config):
        super().__init__(config)
        self.classifier = nn.Linear(config.d_model, config.num_labels)
        self.post_init()

    def logits_from(self, states, mask, head_mask=None, neuron_mask=None) -> torch.Tensor:
        return self.classifier(self.decode(states[-1], mask, head_mask, neuron_mask))



class SparseEncT5Ner(SparseEncT5PreTrainedModel):
    """EncT5 token tagging: ``classifier`` = dropout, then linear, on every encoder final state (no decoder)."""

    data_type = "enct5_ner"
    token_level = True
    has_decoder = False
    _keys_to_ignore_on_load_unexpected = SparseEncT5PreTrainedModel._keys_to_ignore_on_load_unexpected + [
        r"^decoder\.", r"^decoder_input"]

    def __init__(self, config: T5Config):
        super().__init__(config)
        self.classifier = nn.Sequential(nn.Dropout(config.dropout_rate), nn.Linear(config.d_model, config.num_labels))
        self.post_init()

    def logits_from(self, states, mask, head_mask=None, neuron_mask=None) -> torch.Tensor:
        return self.classifier(states[-1])

