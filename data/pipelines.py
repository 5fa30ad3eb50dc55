"""Tokenisation and batching: examples → features (once, not per epoch) → padded tensors.

The checkpoint's own tokenizer frames the text, so one pipeline serves every family. Sequence tasks
(``bert_cls``, ``enct5_cls``, ``decoder_cls``): BERT's ``[CLS] a [SEP] (b [SEP])`` with segment ids
0/1, T5's ``a </s> (b </s>)``, a decoder's own template (Llama's ``<s> a …``); pairs truncated
longest-first to ``max_length``. Token tasks
(``bert_ner``, ``enct5_ner``, ``decoder_ner``): the tokenizer's own frame (``[CLS] words [SEP]``, ``words
</s>``, ``<s> words``); every word is tokenised as it appears in the sentence's running text (after a
space, but the first), so tokenizers that mark spaces see the pieces they were trained on; its
first piece carries the word's label and is the only scored position (``label_mask``). A sentence
whose pieces do not fit in ``max_length`` is cut into consecutive, non-overlapping word windows,
one feature each, so every word is predicted exactly once (the reference code silently dropped the
overflow); :meth:`EncodedDataset.decode` joins the windows back per sentence. Language modelling
(``lm``): the documents are tokenised without special tokens, joined into one stream with the end-of-sequence
token after each (the document boundary) and cut into blocks of ``max_length`` tokens (:class:`TextBlock`),
each its own example whose labels are its input ids (the loss shifts them).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from data.readers import ClsExample, Example, LMDocument, TokenExample
from data.tasks import DataError, TaskSpec, get_task

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of unscored positions (torch's cross-entropy default ignore_index)


@dataclass(frozen=True)
class TextBlock:
    """One block of a packed language-modelling stream: ``max_length`` consecutive token ids (the last block
    may be shorter), document boundaries marked by the end-of-sequence id. ``guid``: ``block-{i}``."""

    guid: str
    token_ids: tuple[int, ...]

    @property
    def label(self) -> tuple[int, ...]:
        """The gold next tokens are the block itself (shifted by the loss), so a block is always labelled."""
        return self.token_ids


def collate(features: Sequence[Mapping], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad a list of features to the longest in the batch (dynamic padding: far less wasted compute than
    padding every batch to ``max_length``).

    Returns ``input_ids``, ``attention_mask``, ``token_type_ids`` ``[B, T]`` long, ``feature_index``
    ``[B]`` long and, when the features have them, ``labels`` (``[B]`` long, ``[B]`` float for
    regression, or ``[B, T]`` long padded with -100 for token tasks) and ``label_mask`` ``[B, T]`` bool.
    """
    if not features:
        raise ValueError("collate got an empty batch")
    width = max(len(f["input_ids"]) for f in features)
    batch = len(features)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    token_type_ids = torch.zeros((batch, width), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[row, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
        attention_mask[row, :n] = 1
        token_type_ids[row, :n] = torch.tensor(f["token_type_ids"], dtype=torch.long)
    out = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "feature_index": torch.tensor([f["feature_index"] for f in features], dtype=torch.long),
    }
    first = features[0]
    if "label_mask" in first:
        mask = torch.zeros((batch, width), dtype=torch.bool)
        for row, f in enumerate(features):
            mask[row, : len(f["label_mask"])] = torch.tensor(f["label_mask"], dtype=torch.bool)
        out["label_mask"] = mask
    if "labels" in first:
        if isinstance(first["labels"], list):
            labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
            for row, f in enumerate(features):
                labels[row, : len(f["labels"])] = torch.tensor(f["labels"], dtype=torch.long)
        else:
            dtype = torch.float if isinstance(first["labels"], float) else torch.long
            labels = torch.tensor([f["labels"] for f in features], dtype=dtype)
        out["labels"] = labels
    return out


def make_collate(tokenizer_or_pad_id) -> functools.partial:
    """A ``collate_fn`` for ``DataLoader`` bound to the tokenizer's pad id (or an int pad id)."""
    pad_id = tokenizer_or_pad_id if isinstance(tokenizer_or_pad_id, int) else tokenizer_or_pad_id.pad_token_id
    return functools.partial(collate, pad_token_id=pad_id)


class EncodedDataset(Dataset):
    """Tokenised examples of one task and split, ready for a ``DataLoader``.

    ``self[i]`` is a dict of python lists/ints: ``input_ids``, ``token_type_ids``, ``feature_index``
    (= i), ``labels`` only when gold labels exist, and ``label_mask`` for token tasks (1 at each
    word's first piece, also for unlabelled data). Attributes: ``task``, ``examples``, ``features``,
    ``has_labels``, ``lengths`` (tokens per feature, for length-grouped batching), ``collate_fn``.
    A feature's ``example_index`` (and, for token tasks, ``word_start``/``word_end``) maps it back.
    """

    def __init__(self, task: TaskSpec, examples: list[Example], features: list[dict], pad_token_id: int):
        self.task = task
        self.examples = examples
        self.features = features
        self.pad_token_id = pad_token_id
        self.has_labels = bool(examples) and all(
            (ex.labels if isinstance(ex, TokenExample) else ex.label) is not None for ex in examples
        )
        self.lengths = [len(f["input_ids"]) for f in features]
        self.collate_fn = make_collate(pad_token_id)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        f = self.features[i]
        item = {"input_ids": f["input_ids"], "token_type_ids": f["token_type_ids"], "feature_index": i}
        if self.task.is_token_task:
            item["label_mask"] = f["label_mask"]
        if self.has_labels:
            item["labels"] = f["labels"]
        return item

    def take(self, num_examples: int | None) -> EncodedDataset:
        """The first ``num_examples`` examples with their features (for ``--max_*_samples``)."""
        if num_examples is None or num_examples >= len(self.examples):
            return self
        return self.subset(range(num_examples))

    def subset(self, example_indices) -> EncodedDataset:
        """The examples at ``example_indices`` (in that order) with their features, renumbered from 0."""
        position = {index: k for k, index in enumerate(example_indices)}
        if len(position) != len(example_indices) or not all(0 <= i < len(self.examples) for i in position):
            raise ValueError(f"subset: expected distinct example indices below {len(self.examples)}")
        features = sorted(({**f, "example_index": position[f["example_index"]]} for f in self.features
                           if f["example_index"] in position), key=lambda f: f["example_index"])
        return EncodedDataset(self.task, [self.examples[i] for i in position], features, self.pad_token_id)

    def decode(self, outputs: Mapping[int, torch.Tensor]) -> list:
        """Turn per-feature model outputs into one prediction per example.

        ``outputs[feature_index]``: for sequence tasks the logits row ``[C]`` (``[1]`` for regression);
        for token tasks the logits at that feature's ``label_mask`` positions ``[n_scored, C]``, in order.
        Returns class ids (int), scores (float, regression) or, for token tasks, one list of tag strings
        per sentence with its windows joined back. Every feature must be present. Not for ``lm``
        (ValueError): perplexity is computed from the loss.
        """
        self._refuse_lm("decode")
        missing = [i for i in range(len(self.features)) if i not in outputs]
        if missing:
            raise ValueError(f"decode: outputs lack {len(missing)} of {len(self.features)} features (first: {missing[0]})")
        if not self.task.is_token_task:
            predictions = []
            for i in range(len(self.features)):
                row = torch.as_tensor(outputs[i]).detach().float().cpu().reshape(-1)
                if self.task.kind == "regression":
                    predictions.append(float(row[0]))
                else:
                    predictions.append(int(row.argmax()))
            return predictions
        tags: list[list[str]] = [[] for _ in self.examples]
        for i, f in enumerate(self.features):
            logits = torch.as_tensor(outputs[i]).detach().float().cpu()
            n_scored = sum(f["label_mask"])
            if logits.dim() != 2 or logits.shape[0] != n_scored:
                raise ValueError(
                    f"decode: feature {i} has {n_scored} scored positions but outputs[{i}] has shape {tuple(logits.shape)}"
                )
            tags[f["example_index"]].extend(self.task.labels[j] for j in logits.argmax(-1).tolist())
        for ex, sentence in zip(self.examples, tags, strict=True):
            if len(sentence) != len(ex.words):  # cannot happen unless features were edited
                raise ValueError(f"decode: sentence {ex.guid} has {len(ex.words)} words, {len(sentence)} predictions")
        return tags

    def references(self) -> list:
        """Gold labels per example in the form :meth:`decode` returns (tag strings for token tasks). Not for
        ``lm`` (ValueError): perplexity is computed from the loss."""
        self._refuse_lm("references")
        if not self.has_labels:
            raise ValueError(f"{self.task.name}: these examples carry no gold labels")
        if self.task.is_token_task:
            return [[self.task.labels[j] for j in ex.labels] for ex in self.examples]
        return [ex.label for ex in self.examples]

    def _refuse_lm(self, method: str) -> None:
        if self.task.is_lm_task:
            raise ValueError(f"{method}: task {self.task.name} has no per-example predictions; perplexity is "
                             f"computed from the loss (utils.engine.evaluation), not from predictions")


def encode_dataset(task: TaskSpec | str, examples: list[Example], tokenizer, max_length: int) -> EncodedDataset:
    """Tokenise ``examples`` once into an :class:`EncodedDataset` (batched tokenizer calls).

    ``max_length`` counts the special tokens. Token tasks need ``max_length >= 3``. For ``lm`` the examples
    are :class:`~data.readers.LMDocument` objects, and the dataset's examples are the :class:`TextBlock`
    objects they are packed into (:func:`pack_documents`).
    """
    task = get_task(task)
    if task.is_lm_task:
        blocks = pack_documents(examples, tokenizer, max_length, task.name)
        features = [{"input_ids": list(block.token_ids), "token_type_ids": [0] * len(block.token_ids),
                     "labels": list(block.token_ids), "example_index": i} for i, block in enumerate(blocks)]
        pad_id = tokenizer.pad_token_id
        return EncodedDataset(task, blocks, features, _boundary_id(tokenizer) if pad_id is None else pad_id)
    if task.is_token_task:
        features = _encode_tokens(task, examples, tokenizer, max_length)
    else:
        features = _encode_sequences(task, examples, tokenizer, max_length)
    return EncodedDataset(task, examples, features, tokenizer.pad_token_id)


def _boundary_id(tokenizer) -> int:
    """The document boundary of a packed stream: the end-of-sequence id, else the separator's, else the pad's."""
    for name in ("eos_token_id", "sep_token_id", "pad_token_id"):
        token_id = getattr(tokenizer, name, None)
        if token_id is not None:
            return token_id
    raise DataError(f"{type(tokenizer).__name__} has no end-of-sequence, separator or pad token to mark the end "
                    f"of a document with")


def pack_documents(documents: Sequence[LMDocument], tokenizer, max_length: int, name: str = "lm") -> list[TextBlock]:
    """Tokenise ``documents`` (batched, no special tokens), join them into one stream in order, each followed by
    the boundary id (end of sequence; else separator; else pad), and cut it into consecutive blocks of
    ``max_length`` tokens; a last, shorter block is kept if it holds at least 2 tokens (one next-token pair).

    Example, ``max_length=4`` and eos 2: documents ``[5, 6, 7]``, ``[8, 9]`` → stream ``5 6 7 2 8 9 2`` →
    blocks ``[5, 6, 7, 2]``, ``[8, 9, 2]``.

    Raises:
        DataError: ``max_length < 2``, a tokenizer without a boundary token, or no block at all.
    """
    if max_length < 2:
        raise DataError(f"max_length {max_length} is too short for language modelling: a block needs 2 tokens")
    boundary = _boundary_id(tokenizer)
    texts = [doc.text for doc in documents]
    # verbose=False: documents longer than the model's limit are expected here, they are cut into blocks below
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False,
                        verbose=False)["input_ids"] if texts else []
    stream = [token_id for ids in encoded for token_id in (*ids, boundary)]
    blocks = [TextBlock(guid=f"block-{i // max_length}", token_ids=tuple(stream[i:i + max_length]))
              for i in range(0, len(stream), max_length) if len(stream) - i >= 2]
    if not blocks:
        raise DataError(f"{name}: {len(documents)} documents hold {len(stream)} tokens with their boundaries: "
                        f"too few for one block of at least 2")
    logger.info("%s: packed %d documents (%d tokens with boundaries) into %d blocks of %d tokens",
                name, len(documents), len(stream), len(blocks), max_length)
    return blocks


def _encode_sequences(task: TaskSpec, examples: list[ClsExample], tokenizer, max_length: int) -> list[dict]:
    pair = any(ex.text_b is not None for ex in examples)
    texts_a = [ex.text_a for ex in examples]
    texts_b = [ex.text_b or "" for ex in examples] if pair else None
    encoded = tokenizer(
        texts_a, texts_b, truncation="longest_first" if pair else True, max_length=max_length,
        return_token_type_ids=True, return_attention_mask=False,
    )
    features = []
    for i, ex in enumerate(examples):
        feature = {
            "input_ids": encoded["input_ids"][i],
            "token_type_ids": encoded["token_type_ids"][i],
            "example_index": i,
        }
        if ex.label is not None:
            feature["labels"] = float(ex.label) if task.kind == "regression" else int(ex.label)
        features.append(feature)
    return features


def _word_pieces(tokenizer, examples: list[TokenExample]) -> dict[tuple[str, bool], list[int]]:
    """Piece ids of every distinct word as it appears in running text, tokenised in batched calls:
    ``(word, False)`` for a sentence's first word, ``(word, True)`` for a word after a space.

    Tokenizers that mark spaces (byte-level BPE: Llama-3, Qwen2/3, SmolLM2; ``Ġblackburn``, not
    ``b|lac|kburn``) give another piece for a word after a space than for the same word alone: a word
    after a space is read off ``"x word"`` with the pieces of ``"x"`` removed, so that a sentence's pieces are
    those of its running text. WordPiece and sentencepiece give the same pieces either way. A word that
    yields no pieces (e.g. a lone control character) becomes [UNK] so that it still gets a prediction.
    """
    firsts = sorted({ex.words[0] for ex in examples if ex.words})
    laters = sorted({w for ex in examples for w in ex.words[1:]})
    if not firsts:
        return {}

    def encode(texts):
        return tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                         return_token_type_ids=False)["input_ids"] if texts else []

    probe = encode(["x"])[0]
    pieces = {(w, False): ids for w, ids in zip(firsts, encode(firsts), strict=True)}
    for w, ids in zip(laters, encode([f"x {w}" for w in laters]), strict=True):
        if ids[:len(probe)] != probe:
            raise ValueError(f"{type(tokenizer).__name__} encodes {'x ' + w!r} as {ids}, which does not start with the "
                             f"pieces of 'x' {probe}: cannot tell the pieces of {w!r} in running text")
        pieces[(w, True)] = ids[len(probe):]
    return {key: (ids or [tokenizer.unk_token_id]) for key, ids in pieces.items()}


def _frame(tokenizer) -> tuple[list[int], list[int]]:
    """Special-token ids the tokenizer puts before and after one sequence's pieces, read off a probe:
    ``[CLS] … [SEP]`` for BERT's tokenizers, ``… </s>`` for T5's, ``<s> …`` for Llama's."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    framed = tokenizer("x")["input_ids"]
    for start in range(len(framed) - len(plain) + 1):
        if framed[start:start + len(plain)] == plain:
            return framed[:start], framed[start + len(plain):]
    raise ValueError(f"{type(tokenizer).__name__} encodes 'x' as {framed}, which does not contain its plain "
                     f"pieces {plain}: cannot tell its special tokens")


def _encode_tokens(task: TaskSpec, examples: list[TokenExample], tokenizer, max_length: int) -> list[dict]:
    before, after = _frame(tokenizer)
    budget = max_length - len(before) - len(after)  # room left by the special tokens
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room for words; use at least 3")
    pieces = _word_pieces(tokenizer, examples)
    features: list[dict] = []
    split_sentences = truncated_words = 0
    for example_index, ex in enumerate(examples):
        # every word but the sentence's first follows a space, in every window
        word_pieces_of = [pieces[(w, i > 0)] for i, w in enumerate(ex.words)]
        windows = []
        start = 0
        while start < len(ex.words):
            used, end = 0, start
            # Greedily take whole words; a single word longer than the budget is cut to its first pieces
            # (its first piece, the scored one, always survives).
            while end < len(ex.words) and (end == start or used + len(word_pieces_of[end]) <= budget):
                used += min(len(word_pieces_of[end]), budget)
                end += 1
            windows.append((start, end))
            start = end
        if len(windows) > 1:
            split_sentences += 1
        for start, end in windows:
            input_ids, label_mask, labels = list(before), [0] * len(before), [IGNORE_INDEX] * len(before)
            for w in range(start, end):
                word_pieces = word_pieces_of[w]
                if len(word_pieces) > budget:
                    truncated_words += 1
                    word_pieces = word_pieces[:budget]
                input_ids.extend(word_pieces)
                label_mask.extend([1] + [0] * (len(word_pieces) - 1))
                gold = ex.labels[w] if ex.labels is not None else IGNORE_INDEX
                labels.extend([gold] + [IGNORE_INDEX] * (len(word_pieces) - 1))
            input_ids.extend(after)
            label_mask.extend([0] * len(after))
            labels.extend([IGNORE_INDEX] * len(after))
            feature = {
                "input_ids": input_ids,
                "token_type_ids": [0] * len(input_ids),
                "label_mask": label_mask,
                "example_index": example_index,
                "word_start": start,
                "word_end": end,
            }
            if ex.labels is not None:
                feature["labels"] = labels
            features.append(feature)
    if split_sentences:
        logger.info(
            "%s: %d of %d sentences longer than %d tokens were split into several windows",
            task.name, split_sentences, len(examples), max_length,
        )
    if truncated_words:
        logger.warning("%s: %d words longer than %d pieces were cut to their first pieces",
                       task.name, truncated_words, budget)
    return features
