"""Decoder LLMs on the prunable core: Llama, Mistral, Qwen2, Qwen3 and Phi-3, with grouped-query attention.

Parameter names are HF's (``model.embed_tokens``, ``model.layers.{i}.self_attn.{q,k,v,o}_proj`` or Phi-3's
fused ``qkv_proj``, Qwen3's ``self_attn.{q,k}_norm``, ``model.layers.{i}.mlp.{gate,up,down}_proj`` or Phi-3's
fused ``gate_up_proj``, ``model.layers.{i}.{input,post_attention}_layernorm``, ``model.norm``), so a
``*ForCausalLM`` or ``*Model`` checkpoint of these families loads; its LM head is not used. The configuration is
the checkpoint's own (``LlamaConfig``, ``Qwen3Config``, ...) with ``sparsity``, ``sparsity_map`` and
``head_unit`` added. Family differences are declared once, in :data:`DECODER_FAMILIES`: Qwen2 has biases on
Q/K/V, ``attention_bias`` puts them on Q/K/V/O (Llama, Qwen3), Qwen3 normalises each query and key head
(RMSNorm over ``head_dim``) before RoPE, Phi-3 fuses its projections (the units are index sets at offsets of
the fused tensors, :mod:`models.units`, so nothing is split or joined) and drops each sublayer's output
(``resid_pdrop``). RoPE comes from the family's own HF rotary-embedding module (so every ``rope_scaling`` type
and a ``partial_rotary_factor`` are computed as HF does) and, like the norms, is untouched by pruning. The task
models on this decoder are in :mod:`models.heads`.

Units. FFN neurons are SwiGLU channels: a row of ``gate_proj`` and of ``up_proj`` and a column of
``down_proj``. Attention heads are grouped: ``num_key_value_heads`` KV heads each serve
``g = num_attention_heads / num_key_value_heads`` query heads (query head ``h`` uses KV head
``h // g``, HF's layout). ``config.head_unit`` says what one head unit is:

* ``"group"``: a KV group, i.e. one KV head (its K and V rows) with its ``g`` query heads (their Q
  rows and O columns). A layer keeps its first ``m`` groups: ``m·g`` query heads over ``m`` KV heads.
* ``"query"``: a *slot* ``r``: the ``r``-th query head of every group (``num_key_value_heads`` query
  heads). A layer keeps its first ``k`` slots: ``k`` query heads in every group, every KV head kept (none
  once no slot is left).
  The kept Q rows are not a prefix of the stored tensor, so they are gathered with an index.

Either way every layer stays a valid GQA layer. Importance is scored per query head; a group's
score is the sum of its query heads', a slot's the sum over groups of each group's ``r``-th best
head. Reordering is two-level: groups by score, then the heads within each group by score.

Causal attention with padding on either side: each token attends to the real tokens at or before
it (and, under ``sliding_window``, within the window); positions count real tokens only, so a
left-padded sequence is computed exactly as its unpadded self. Sequence heads read the last real
token (HF's ``*ForSequenceClassification``); token heads read every token.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, LlamaConfig, PreTrainedModel
from transformers.activations import ACT2FN

from .core import Normalization, PrunableModel, init_standard
from .packing import padding_kept
from .sparsity_map import ModelConfigError
from .units import PrunableBlock, Span, new_linear

HEAD_UNITS = ("group", "query")


@dataclass(frozen=True)
class DecoderFamily:
    """What sets a decoder family apart; the one place a ``config.model_type`` is looked up."""

    rotary: str  # the HF modeling module whose ``{Name}RotaryEmbedding`` computes its RoPE
    qkv_bias: bool = False  # biases on Q, K and V whatever ``attention_bias`` says (and none on O)
    qk_norm: bool = False  # an RMSNorm over ``head_dim`` on each query and key head before RoPE
    layer_windows: bool = False  # ``use_sliding_window`` may apply to some layers only (``layer_types``)
    fused: bool = False  # Q, K and V in one ``qkv_proj``, gate and up in one ``gate_up_proj`` (Phi-3)


DECODER_FAMILIES = {"llama": DecoderFamily("Llama"), "mistral": DecoderFamily("Mistral"),
                    "qwen2": DecoderFamily("Qwen2", qkv_bias=True, layer_windows=True),
                    "qwen3": DecoderFamily("Qwen3", qk_norm=True, layer_windows=True),
                    "phi3": DecoderFamily("Phi3", fused=True)}
DECODER_TYPES = tuple(DECODER_FAMILIES)


def head_dim(config) -> int:
    """Per-head size: the config's ``head_dim`` when set (Qwen3), else ``hidden_size / num_attention_heads``."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


STOCK_FIELDS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")


def full_size(config, field: str) -> int:
    """The unpruned value of one of :data:`STOCK_FIELDS`: from ``config.pruned_from`` when the checkpoint was saved
    as a stock architecture (its stock fields then hold the pruned sizes, :mod:`models.standalone`)."""
    return (getattr(config, "pruned_from", None) or {}).get(field, getattr(config, field))


def head_unit(config) -> str:
    """The config's head unit (``"group"`` when unset)."""
    unit = getattr(config, "head_unit", None) or "group"
    if unit not in HEAD_UNITS:
        raise ModelConfigError(f"config head_unit {unit!r}: expected one of {', '.join(HEAD_UNITS)}")
    return unit


class RMSNorm(Normalization):
    """Scale by the root mean square over the last dimension (computed in fp32), then by ``weight``."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on ``x [B, H, T, d]`` with ``cos``/``sin [B, T, r]``: ``x·cos + (-x₂, x₁)·sin`` over the two halves of
    the first ``r`` channels; the others pass (a ``partial_rotary_factor`` below 1, as Phi-4-mini's)."""
    if cos.shape[-1] < x.shape[-1]:
        rotary = cos.shape[-1]
        return torch.cat((rotate(x[..., :rotary], cos, sin), x[..., rotary:]), dim=-1)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)


class SparseGQAttention(PrunableBlock):
    """Grouped-query self-attention over the kept head units (see the module docstring).

    ``forward(x [B, T, d], cos, sin, mask [B, 1, T, T] bool or None, head_mask [>= stored query heads])
    -> [B, T, d]``.
    """

    unit_kind = "head"

    def __init__(self, config, query_heads: int, kv_heads: int):
        super().__init__()
        self.head_dim = head_dim(config)
        family = DECODER_FAMILIES[config.model_type]
        qkv_bias = family.qkv_bias or bool(getattr(config, "attention_bias", False))
        o_bias = not family.qkv_bias and bool(getattr(config, "attention_bias", False))
        hidden, d = config.hidden_size, self.head_dim
        self.fused = family.fused
        if self.fused:
            self.qkv_proj = new_linear(hidden, (query_heads + 2 * kv_heads) * d, bias=qkv_bias)
        else:
            self.q_proj = new_linear(hidden, query_heads * d, bias=qkv_bias)
            self.k_proj = new_linear(hidden, kv_heads * d, bias=qkv_bias)
            self.v_proj = new_linear(hidden, kv_heads * d, bias=qkv_bias)
        self.o_proj = new_linear(query_heads * d, hidden, bias=o_bias)
        if family.qk_norm:
            self.q_norm = RMSNorm(d, config.rms_norm_eps)
            self.k_norm = RMSNorm(d, config.rms_norm_eps)
        self.dropout_p = float(getattr(config, "attention_dropout", 0.0) or 0.0)
        self.set_head_unit(head_unit(config))

    def set_head_unit(self, unit: str) -> None:
        """Make a head unit a KV group (``"group"``) or a slot of query heads (``"query"``); every unit kept."""
        self.head_unit = unit
        self.init_units()

    @property
    def query_heads(self) -> int:
        """Stored query heads."""
        return self.o_proj.in_features // self.head_dim

    @property
    def kv_heads(self) -> int:
        """Stored KV heads."""
        if self.fused:
            return (self.qkv_proj.out_features // self.head_dim - self.query_heads) // 2
        return self.k_proj.out_features // self.head_dim

    def unit_layout(self):
        """Entries are query heads, ``g`` to a KV head: a unit is a group's heads (``"group"``) or the ``r``-th
        head of every group (``"query"``); Q rows and O columns per head, K and V rows per group."""
        d, groups = self.head_dim, self.kv_heads
        g = self.query_heads // groups if groups else 0
        heads = torch.arange(groups * g).view(groups, g)
        units = heads if self.head_unit == "group" else heads.T
        q, k, v = ("qkv_proj",) * 3 if self.fused else ("q_proj", "k_proj", "v_proj")
        k_start, v_start = ((groups * g * d, (groups * g + groups) * d) if self.fused else (0, 0))
        return units, (Span(q, 0, d), Span(k, 0, d, k_start, max(g, 1)), Span(v, 0, d, v_start, max(g, 1)),
                       Span("o_proj", 1, d))

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K and V at the kept heads: ``[B, T, kept query heads · d]``, ``[B, T, kept KV heads · d]`` twice."""
        if self.fused:
            return self.rows("qkv_proj", x).split(self.span_widths()[:3], dim=-1)
        return self.rows("q_proj", x), self.rows("k_proj", x), self.rows("v_proj", x)

    def forward(self, x, cos, sin, mask=None, head_mask=None) -> torch.Tensor:
        batch, length = x.shape[:2]
        d = self.head_dim
        query, key, value = (part.view(batch, length, -1, d) for part in self.project(x))
        value = value.transpose(1, 2)
        if hasattr(self, "q_norm"):
            query, key = self.q_norm(query), self.k_norm(key)
        query, key = rotate(query.transpose(1, 2), cos, sin), rotate(key.transpose(1, 2), cos, sin)
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=d ** -0.5,
                                                 dropout_p=self.dropout_p if self.training else 0.0,
                                                 is_causal=mask is None and length > 1, enable_gqa=True)
        if head_mask is not None:
            ids = self.kept_entries().to(head_mask.device)
            context = context * head_mask.index_select(0, ids).to(context.dtype).view(1, -1, 1, 1)
        return self.cols("o_proj", context.transpose(1, 2).reshape(batch, length, self.kept_width))


class SparseSwiGLU(PrunableBlock):
    """``down_proj(act(gate x) · up x)`` over the kept neurons, the gate and up projections separate
    (``gate_proj``, ``up_proj``) or fused (``gate_up_proj``, gate rows first); ``forward(x, neuron_mask) ->
    [B, T, d]``."""

    unit_kind = "neuron"
    activation_copies = 1  # gate, up, the activation and the product are kept

    def __init__(self, config, neurons: int):
        super().__init__()
        bias = bool(getattr(config, "mlp_bias", False))
        self.fused = DECODER_FAMILIES[config.model_type].fused
        if self.fused:
            self.gate_up_proj = new_linear(config.hidden_size, 2 * neurons, bias=bias)
        else:
            self.gate_proj = new_linear(config.hidden_size, neurons, bias=bias)
            self.up_proj = new_linear(config.hidden_size, neurons, bias=bias)
        self.down_proj = new_linear(neurons, config.hidden_size, bias=bias)
        self.act_fn = ACT2FN[config.hidden_act]
        self.init_units()

    def unit_layout(self):
        """One channel per unit: a row of the gate and of the up projection, a column of ``down_proj``."""
        neurons = self.down_proj.in_features
        gate, up = ("gate_up_proj", "gate_up_proj") if self.fused else ("gate_proj", "up_proj")
        return torch.arange(neurons).view(neurons, 1), (Span(gate, 0), Span(up, 0, start=neurons if self.fused else 0),
                                                        Span("down_proj", 1))

    def forward(self, x: torch.Tensor, neuron_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.fused:
            gate, up = self.rows("gate_up_proj", x).chunk(2, dim=-1)
        else:
            gate, up = self.rows("gate_proj", x), self.rows("up_proj", x)
        hidden = self.act_fn(gate) * up
        if neuron_mask is not None:
            hidden = hidden * neuron_mask[:self.kept].to(hidden.dtype)
        return self.cols("down_proj", hidden)


class SparseDecoderLayer(nn.Module):
    """Pre-norm block: ``x + self_attn(input_layernorm x)``, then ``+ mlp(post_attention_layernorm ·)``;
    a sublayer with no units left adds nothing (no biases on its output, or only its bias)."""

    def __init__(self, config, query_heads: int, kv_heads: int, neurons: int):
        super().__init__()
        self.self_attn = SparseGQAttention(config, query_heads, kv_heads)
        self.mlp = SparseSwiGLU(config, neurons)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.resid_pdrop = float(getattr(config, "resid_pdrop", 0.0) or 0.0)  # Phi-3's dropout on each sublayer

    def _dropout(self, update: torch.Tensor) -> torch.Tensor:
        return F.dropout(update, self.resid_pdrop, training=True) if self.training and self.resid_pdrop else update

    def forward(self, x, cos, sin, mask, head_mask=None, neuron_mask=None) -> torch.Tensor:
        attention, mlp = self.self_attn, self.mlp
        if attention.kept:
            x = x + self._dropout(attention(self.input_layernorm(x), cos, sin, mask, head_mask))
        elif attention.o_proj.bias is not None:
            x = x + attention.o_proj.bias
        if mlp.kept:
            x = x + self._dropout(mlp(self.post_attention_layernorm(x), neuron_mask))
        elif mlp.down_proj.bias is not None:
            x = x + mlp.down_proj.bias
        return x


def _rotary(config) -> nn.Module:
    name = DECODER_FAMILIES[config.model_type].rotary
    module = importlib.import_module(f"transformers.models.{name.lower()}.modeling_{name.lower()}")
    return getattr(module, f"{name}RotaryEmbedding")(config=config)


class SparseDecoderPreTrainedModel(PreTrainedModel):
    """Base class: the checkpoint's own config class (read with ``AutoConfig``), HF save/load, Llama-style init."""

    config_class = LlamaConfig
    base_model_prefix = "model"
    checkpoint_types = DECODER_TYPES
    _supports_sdpa = True
    # The LM head of causal-LM checkpoints is unused here.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\.", r"rotary_emb\.inv_freq"]

    @classmethod
    def from_pretrained(cls, path, *args, config=None, **kwargs):
        """As HF's, with the checkpoint's own config class (``LlamaConfig``, ``Qwen3Config``, ...) by default;
        extra keyword arguments that are config fields override them."""
        if config is None:
            loading = {k: kwargs.pop(k) for k in ("gguf_file", "revision", "cache_dir", "token") if k in kwargs}
            config, kwargs = AutoConfig.from_pretrained(path, return_unused_kwargs=True, **loading, **kwargs)
            kwargs.update(loading)
        return super().from_pretrained(path, *args, config=config, **kwargs)

    @classmethod
    def is_backbone_key(cls, key: str) -> bool:
        """Whether a checkpoint key belongs to the pretrained decoder (``model.*``); other keys are a head's."""
        return key.startswith("model.") or key.startswith(("embed_tokens.", "layers.", "norm."))

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if init_standard(module, getattr(self.config, "initializer_range", 0.02)):
            return
        if isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif "RotaryEmbedding" in type(module).__name__:
            # transformers 5 builds models on the meta device: HF's own init recomputes the RoPE frequencies.
            super()._init_weights(module)


class SparseDecoderModel(PrunableModel, SparseDecoderPreTrainedModel):
    """The prunable decoder: ``embed_tokens``, ``layers``, ``norm`` (no LM head).

    ``forward(input_ids [B, T], attention_mask [B, T], token_type_ids (unused), head_mask [L, H], neuron_mask
    [L, I]) -> the L + 1 hidden states [B, T, d]`` (the embeddings, each layer's output, the last after ``norm``;
    zero at padding).
    """

    depth_config = "num_hidden_layers"

    def __init__(self, config):
        super().__init__(config)
        if config.model_type not in DECODER_TYPES:
            raise ModelConfigError(f"config model_type {config.model_type!r}: expected one of {', '.join(DECODER_TYPES)}")
        groups, heads = full_size(config, "num_key_value_heads"), full_size(config, "num_attention_heads")
        if heads % groups:
            raise ModelConfigError(f"config num_attention_heads {heads} is not a multiple of num_key_value_heads {groups}")
        types = set(getattr(config, "layer_types", None) or ())
        if DECODER_FAMILIES[config.model_type].layer_windows and getattr(config, "use_sliding_window", False) \
                and len(types) > 1:
            raise ModelConfigError("config use_sliding_window with mixed layer_types: per-layer sliding windows are "
                                   "not supported")
        config.head_unit = head_unit(config)
        widths = self.prepare_config(config)
        g = heads // groups
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        layers = []
        for units, neurons in zip(widths["head"], widths["neuron"], strict=True):
            query, kv = (units * g, units) if config.head_unit == "group" else (units * groups, groups if units else 0)
            layers.append(SparseDecoderLayer(config, query, kv, neurons))
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = _rotary(config)
        self.current_sparsity = config.sparsity
        self.post_init()

    @classmethod
    def unit_row_counts(cls, config) -> dict[str, int]:
        """One head row and one neuron row per layer."""
        return {"head": config.num_hidden_layers, "neuron": config.num_hidden_layers}

    @classmethod
    def full_units(cls, config) -> dict[str, int]:
        """KV groups (``"group"``) or query heads per group (``"query"``) per layer, and FFN channels."""
        groups, heads = full_size(config, "num_key_value_heads"), full_size(config, "num_attention_heads")
        units = groups if head_unit(config) == "group" else heads // groups
        return {"head": units, "neuron": full_size(config, "intermediate_size")}

    @classmethod
    def full_mask_entries(cls, config) -> dict[str, int]:
        """A head mask has one entry per query head."""
        return {"head": full_size(config, "num_attention_heads"), "neuron": full_size(config, "intermediate_size")}

    def set_head_unit(self, unit: str) -> None:
        """Choose what a head unit is (``"group"`` or ``"query"``) on the full, unpruned model.

        Raises:
            ValueError: for another unit name, or a model already sliced or pruned.
        """
        if unit not in HEAD_UNITS:
            raise ValueError(f"head unit {unit!r}: expected one of {', '.join(HEAD_UNITS)}")
        if self.config.sparsity != 0 or self.current_sparsity != 0:
            raise ValueError("the head unit can be changed only on the full, unpruned model")
        self.config.head_unit = unit
        for block in self.blocks("head"):
            block.set_head_unit(unit)

    def stock_sizes(self) -> dict[str, int] | None:
        """The stock config fields of the stored widths when every layer has the same, nonzero ones (a student of
        uniform widths): its family's own HF classes then hold it. None otherwise."""
        sizes = {(layer.self_attn.query_heads, layer.self_attn.kv_heads, layer.mlp.down_proj.in_features)
                 for layer in self.layers}
        if len(sizes) != 1 or 0 in next(iter(sizes)):
            return None
        return {**dict(zip(STOCK_FIELDS, sizes.pop(), strict=True)), "head_dim": head_dim(self.config)}

    def _keep_layers(self, num_layers: int) -> None:
        self.layers = self.layers[:num_layers]
        if getattr(self.config, "layer_types", None):
            self.config.layer_types = self.config.layer_types[:num_layers]

    def layer_modules(self) -> list[nn.Module]:
        return list(self.layers)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def _attention_mask(self, attention_mask, length: int, device) -> torch.Tensor | None:
        """``[B, 1, T, T]`` bool: key at or before the query (within the sliding window), and real; a token
        always sees itself, so padding rows stay finite. None for unpadded inputs without a window (eager
        only: an exported graph serves every input, so it always masks, as under keep_padding())."""
        window = getattr(self.config, "sliding_window", None)
        use_window = window is not None and getattr(self.config, "use_sliding_window", True) and length > window
        unpadded = attention_mask is None or (not padding_kept() and bool(attention_mask.all()))
        if unpadded and not use_window:
            return None
        positions = torch.arange(length, device=device)
        allowed = positions[None, :] <= positions[:, None]
        if use_window:
            allowed = allowed & (positions[:, None] - positions[None, :] < window)
        allowed = allowed[None, None]
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, None, :]
        return allowed | torch.eye(length, dtype=torch.bool, device=device)

    def embed(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """The token embeddings ``[B, T, d]``; pass back as ``forward(..., embedding_output=...)``."""
        return self.embed_tokens(input_ids)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, head_mask=None, neuron_mask=None,
                embedding_output=None):
        self.check_masks(head_mask=head_mask, neuron_mask=neuron_mask)
        hidden = self.embed_tokens(input_ids) if embedding_output is None else embedding_output
        batch, length = input_ids.shape
        if attention_mask is None:
            positions = torch.arange(length, device=input_ids.device).expand(batch, length)
        else:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        cos, sin = self.rotary_emb(hidden, positions)
        mask = self._attention_mask(attention_mask, length, input_ids.device)
        states = [hidden]
        for i, layer in enumerate(self.layers):
            hidden = self.call_layer(layer, hidden, cos, sin, mask, None if head_mask is None else head_mask[i],
                                     None if neuron_mask is None else neuron_mask[i])
            states.append(hidden)
        states[-1] = self.norm(hidden)
        if attention_mask is not None:
            keep = attention_mask.bool()[:, :, None]
            states = [torch.where(keep, state, torch.zeros((), dtype=state.dtype)) for state in states]
        return tuple(states)
