"""Prunable model families (BERT, EncT5, decoder LLMs) on one core, and the registry of model types.

>>> from models import get_model_class
>>> get_model_class("sparsebert_cls").__name__
'SparseBertCls'
"""

from .enc_t5 import SparseEncT5Cls, SparseEncT5Ner
from .heads import SparseBertCls, SparseBertNer, SparseDecoderCls, SparseDecoderLM, SparseDecoderNer
from .outputs import TaskOutput
from .packing import HiddenStates
from .sparse_bert import SparseBertModel
from .sparsity_map import normalize_sparsity_map, truncate_sparsity_map

MODEL_REGISTRY = {
    "sparsebert_cls": SparseBertCls,
    "sparsebert_ner": SparseBertNer,
    "sparseenct5_cls": SparseEncT5Cls,
    "sparseenct5_ner": SparseEncT5Ner,
    "sparsedecoder_cls": SparseDecoderCls,
    "sparsedecoder_ner": SparseDecoderNer,
    "sparsedecoder_lm": SparseDecoderLM,
}


def checkpoint_types(cls: type) -> tuple[str, ...]:
    """The HF ``model_type`` values of the checkpoints ``cls`` loads."""
    return getattr(cls, "checkpoint_types", (cls.config_class.model_type,))


def get_model_class(model_type: str) -> type:
    """Return the model class registered as ``model_type``.

    Raises:
        ValueError: naming the unknown type and listing the known ones.
    """
    try:
        return MODEL_REGISTRY[model_type]
    except KeyError:
        raise ValueError(
            f"unknown model type {model_type!r}; known types: {', '.join(sorted(MODEL_REGISTRY))}"
        ) from None


__all__ = [
    "MODEL_REGISTRY",
    "HiddenStates",
    "SparseBertCls",
    "SparseBertModel",
    "SparseBertNer",
    "SparseDecoderCls",
    "SparseDecoderLM",
    "SparseDecoderNer",
    "SparseEncT5Cls",
    "SparseEncT5Ner",
    "TaskOutput",
    "checkpoint_types",
    "get_model_class",
    "normalize_sparsity_map",
    "truncate_sparsity_map",
]
