"""The task models of the families that wrap a backbone: each declares its backbone and its head.

The forward, the loss, the embeddings and the pruning verbs are :class:`~models.task.TaskModel`'s. The heads'
parameter names are those of the checkpoints they load: BERT's ``cls.*`` as in the MiniDisc authors'
published teachers, the decoders' ``score`` as in HF's ``*ForSequenceClassification`` and
``*ForTokenClassification``, the language model's ``lm_head`` as in ``*ForCausalLM``.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig

from .decoder import SparseDecoderModel, SparseDecoderPreTrainedModel
from .outputs import TaskOutput, next_token_nll, token_kl
from .sparse_bert import SparseBertModel, SparseBertPreTrainedModel
from .task import TaskModel


class _BertTask(TaskModel, SparseBertPreTrainedModel):
    backbone_class = SparseBertModel
    reads_token_types = True

    @property
    def classifier_dropout(self) -> float:
        dropout = getattr(self.config, "classifier_dropout", None)
        return self.config.hidden_dropout_prob if dropout is None else dropout


class SparseBertCls(_BertTask):
    """Sequence classification (``num_labels > 1``) or regression (``num_labels == 1``).

    Head (``cls``): the final hidden state of [CLS] (position 0) -> Linear(H, H) -> tanh -> Dropout
    -> Linear(H, num_labels); parameter names ``cls.0.*`` and ``cls.3.*``. There is no pooler. ``labels`` is
    a LongTensor ``[B]`` (cross-entropy) or, for regression, a FloatTensor ``[B]`` (MSE on the squeezed logits).
    """

    data_type = "bert_cls"

    def build_head(self, config: BertConfig) -> None:
        hidden = config.hidden_size
        self.cls = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Dropout(self.classifier_dropout),
                                 nn.Linear(hidden, config.num_labels))

    def logits_from(self, states, attention_mask) -> torch.Tensor:
        return self.cls(states[-1][:, 0])


class SparseBertNer(_BertTask):
    """Token tagging (NER): ``cls`` = Dropout -> Linear(H, num_labels) on every token. ``labels`` is a LongTensor
    ``[B, T]`` holding -100 at positions not scored (padding, special tokens and every sub-word but a word's
    first)."""

    data_type = "bert_ner"
    token_level = True

    def build_head(self, config: BertConfig) -> None:
        self.cls = nn.Sequential(nn.Dropout(self.classifier_dropout), nn.Linear(config.hidden_size, config.num_labels))

    def logits_from(self, states, attention_mask) -> torch.Tensor:
        return self.cls(states[-1])


class _DecoderTask(TaskModel, SparseDecoderPreTrainedModel):
    backbone_class = SparseDecoderModel
    distill_objective = "hidden_cos"  # pre-norm: raw residual states (docs/results.md, the objectives table)
    sink_first_token = True

    def set_head_unit(self, unit: str) -> None:
        """Choose the head unit; see :meth:`~models.decoder.SparseDecoderModel.set_head_unit`."""
        self.model.set_head_unit(unit)

    def stock_sizes(self) -> dict[str, int] | None:
        """The stock config fields of a uniform-width model; see :meth:`~models.decoder.SparseDecoderModel.stock_sizes`."""
        return self.model.stock_sizes()


class SparseDecoderCls(_DecoderTask):
    """Sequence classification or regression from the last real token: ``score`` (Linear, no bias), as HF's
    ``*ForSequenceClassification``."""

    data_type = "decoder_cls"

    def build_head(self, config) -> None:
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)

    def logits_from(self, states, attention_mask) -> torch.Tensor:
        last = states[-1]
        if attention_mask is None:
            index = torch.full((last.shape[0],), last.shape[1] - 1, device=last.device)
        else:
            positions = torch.arange(last.shape[1], device=last.device)
            index = (attention_mask.long() * positions).argmax(-1)
        return self.score(last[torch.arange(last.shape[0], device=last.device), index])


class SparseDecoderNer(_DecoderTask):
    """Token tagging: ``dropout`` then ``score`` (Linear) on every token, as HF's ``*ForTokenClassification``."""

    data_type = "decoder_ner"
    token_level = True

    def build_head(self, config) -> None:
        dropout = getattr(config, "classifier_dropout", None)
        self.dropout = nn.Dropout(0.1 if dropout is None else dropout)
        self.score = nn.Linear(config.hidden_size, config.num_labels)

    def logits_from(self, states, attention_mask) -> torch.Tensor:
        return self.score(self.dropout(states[-1]))


class SparseDecoderLM(_DecoderTask):
    """Causal language modelling, as HF's ``*ForCausalLM``: every position's next-token logits through ``lm_head``
    (no bias), or through the input embeddings when ``tie_word_embeddings`` (then no ``lm_head`` is stored, as HF
    stores none). Pruning never touches the vocabulary or the hidden size, so the head is the checkpoint's.

    With ``labels [B, T]`` (the input ids, -100 where not scored) the forward returns the mean next-token
    cross-entropy and no logits: the ``[tokens, vocabulary]`` logits never exist whole
    (:func:`~models.outputs.next_token_nll`). ``logits=False`` leaves them out too. ``teacher=(states,
    weight)``, a teacher's last hidden states ``[B, T, d']`` and output weight ``[V, d']``, adds ``distill_loss``:
    the mean over real tokens of the KL from the teacher's next-token distribution
    (:func:`~models.outputs.token_kl`), computed in the forward so that the head takes part in it as
    DistributedDataParallel expects.
    """

    data_type = "decoder_lm"
    token_level = True
    distill_objective = "lm_kd"
    lm_chunk = 1024  # positions whose logits exist at once in the loss
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq"]

    def build_head(self, config) -> None:
        if not getattr(config, "tie_word_embeddings", False):
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    @classmethod
    def is_backbone_key(cls, key: str) -> bool:
        """The decoder's keys and the LM head's: a language model's head comes from its checkpoint."""
        return key.startswith("lm_head.") or super().is_backbone_key(key)

    def output_weight(self) -> torch.Tensor:
        """The ``[vocabulary, hidden]`` weight of the next-token logits."""
        return self.lm_head.weight if hasattr(self, "lm_head") else self.model.embed_tokens.weight

    def logits_from(self, states, attention_mask) -> torch.Tensor:
        return F.linear(states[-1], self.output_weight())

    def training_cost(self, seq_len: int) -> dict[str, int]:
        """The decoder's (:meth:`~models.core.PrunableModel.training_cost`), plus the vocabulary projection of every
        position and, as ``transient_elements`` (fp32, once per step, not per sequence), one chunk's logits,
        log-probabilities and the teacher's: what the chunked losses hold at once."""
        cost = self.model.training_cost(seq_len)
        vocab = self.output_weight().shape[0]
        cost["forward_flops"] += 2 * self.config.hidden_size * vocab * seq_len
        cost["transient_elements"] = 3 * self.lm_chunk * vocab
        return cost

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, head_mask=None,
                neuron_mask=None, embedding_output=None, logits: bool = True, teacher=None) -> TaskOutput:
        states = self.model(input_ids, attention_mask=attention_mask, head_mask=head_mask, neuron_mask=neuron_mask,
                            embedding_output=embedding_output)
        out = TaskOutput(hidden_states=states)
        if labels is None and logits and teacher is None:
            out.logits = self.logits_from(states, attention_mask)
        if labels is not None:
            total, count = next_token_nll(states[-1], self.output_weight(), labels, self.lm_chunk)
            out.loss = total / max(count, 1)
        if teacher is not None:
            real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            student = states[-1][real]
            kl = token_kl(student, self.output_weight(), teacher[0][real], teacher[1], self.lm_chunk)
            out.distill_loss = kl / max(student.shape[0], 1)
        return out
