"""The task models of the families that wrap a backbone: each declares its backbone and its head.

The forward, the loss, the embeddings and the pruning verbs are :class:`~models.task.TaskModel`'s. The heads'
parameter names are those of the checkpoints they load: BERT's ``cls.*`` as in the MiniDisc authors'
published teachers, the decoders' ``score`` as in HF's ``*ForSequenceClassification`` and
``*ForTokenClassification``.
"""

import torch
from torch import nn
from transformers import BertConfig

from .decoder import SparseDecoderModel, SparseDecoderPreTrainedModel
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
