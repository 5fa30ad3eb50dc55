"""Task models on the SparseBERT encoder (sequence classification/regression and token tagging).

The BERT task models expose the pruning verbs of their encoder (:class:`~models.core.PrunableTaskModel`),
so the training loop never reaches into ``model.bert``.
"""

import logging

import torch
from torch import nn
from transformers import BertConfig

from .core import PrunableTaskModel
from .outputs import TaskOutput, sequence_loss, token_loss
from .sparse_bert import SparseBertModel, SparseBertPreTrainedModel

logger = logging.getLogger(__name__)


class _SparseBertTaskModel(PrunableTaskModel, SparseBertPreTrainedModel):
    """Shared part of the BERT task models: the ``bert`` encoder (whose verbs they expose) and one forward."""

    reads_token_types = True

    base_model_class = SparseBertModel

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = SparseBertModel(config)

    @property
    def classifier_dropout(self) -> float:
        dropout = getattr(self.config, "classifier_dropout", None)
        return self.config.hidden_dropout_prob if dropout is None else dropout

    def get_input_embeddings(self) -> nn.Embedding:
        return self.bert.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.bert.set_input_embeddings(value)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        neuron_mask: torch.Tensor | None = None,
        embedding_output: torch.Tensor | None = None,
    ) -> TaskOutput:
        """Encode, then the head's ``logits_from`` the hidden states and, with ``labels``, its ``task_loss``."""
        hidden_states = self.encode(input_ids, attention_mask, token_type_ids, head_mask, neuron_mask,
                                    embedding_output)
        logits = self.logits_from(hidden_states)
        loss = None if labels is None else self.task_loss(logits, labels)
        return TaskOutput(logits=logits, hidden_states=hidden_states, loss=loss)

    def logits_from(self, hidden_states) -> torch.Tensor:
        """The task logits from the L + 1 hidden states."""
        raise NotImplementedError

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The task loss of ``logits`` against gold ``labels``."""
        raise NotImplementedError

    def embed(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """The embeddings before dropout, to share between forwards; see :meth:`SparseBertModel.embed`."""
        return self.bert.embed(input_ids, attention_mask, token_type_ids)

    def encode(self, input_ids, attention_mask=None, token_type_ids=None, head_mask=None, neuron_mask=None,
               embedding_output=None):
        """Run the encoder; returns the L + 1 hidden states ``[B, T, hidden]``."""
        return self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            head_mask=head_mask,
            neuron_mask=neuron_mask,
            embedding_output=embedding_output,
        )


class SparseBertCls(_SparseBertTaskModel):
    """Sequence classification (``num_labels > 1``) or regression (``num_labels == 1``).

    Head (``cls``): the final hidden state of [CLS] (position 0) -> Linear(H, H) -> tanh -> Dropout
    -> Linear(H, num_labels); parameter names ``cls.0.*`` and ``cls.3.*`` as in the authors'
    published teachers. There is no pooler.

    ``forward(input_ids [B, T], attention_mask [B, T], token_type_ids [B, T], labels, head_mask [L, H],
    neuron_mask [L, I], embedding_output) -> TaskOutput`` with ``logits [B, num_labels]``. ``labels`` is a
    LongTensor ``[B]`` (cross-entropy) or, for regression, a FloatTensor ``[B]`` (MSE on the squeezed
    logits).
    """

    data_type = "bert_cls"

    def __init__(self, config: BertConfig):
        super().__init__(config)
        hidden = config.hidden_size
        self.cls = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Dropout(self.classifier_dropout),
            nn.Linear(hidden, config.num_labels),
        )
        self.post_init()

    def logits_from(self, hidden_states) -> torch.Tensor:
        return self.cls(hidden_states[-1][:, 0])

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return sequence_loss(logits, labels)


class SparseBertNer(_SparseBertTaskModel):
    """Token tagging (NER): ``cls`` = Dropout -> Linear(H, num_labels) on every token.

    ``forward(...) -> TaskOutput`` with ``logits [B, T, num_labels]``. ``labels`` is a
    LongTensor ``[B, T]`` holding -100 at positions not scored (padding, special tokens and every
    sub-word but a word's first); the loss is the token cross-entropy over the scored positions.
    """

    data_type = "bert_ner"

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.cls = nn.Sequential(
            nn.Dropout(self.classifier_dropout), nn.Linear(config.hidden_size, config.num_labels)
        )
        self.post_init()

    def logits_from(self, hidden_states) -> torch.Tensor:
        return self.cls(hidden_states[-1])

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return token_loss(logits, labels)
