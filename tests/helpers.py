"""Builders for script-level tests: a tiny SST-2-format task folder and tiny saved teachers."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from models import SparseBertCls
from tests.conftest import make_tiny_config, save_tiny_tokenizer

POSITIVE = ["good", "great", "fun"]
NEGATIVE = ["bad", "awful", "dull"]
FILLER = ["the", "movie", "film", "plot", "story", "actor", "is", "was", "a", "this", "and", "it"]


def write_sst2_task(root: Path, n_train: int = 40, n_dev: int = 16, n_test: int = 8, seed: int = 0,
                    dev_is_train: bool = False) -> Path:
    """``root/sst2/{train,dev,test}.tsv`` in the GLUE SST-2 format; the label is the sentiment word's.

    ``dev_is_train`` writes the training rows as the dev set too (to measure memorisation).
    """
    rng = random.Random(seed)

    def sentence(label: int) -> str:
        words = rng.sample(FILLER, rng.randint(2, 7))
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label else NEGATIVE))
        return " ".join(words)

    folder = root / "sst2"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = ["sentence\tlabel"] + [f"{sentence(i % 2)}\t{i % 2}" for i in range(n)]
        (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    if dev_is_train:
        (folder / "dev.tsv").write_text((folder / "train.tsv").read_text())
    rows = ["index\tsentence"] + [f"{i}\t{sentence(i % 2)}" for i in range(n_test)]
    (folder / "test.tsv").write_text("\n".join(rows) + "\n")
    return root


def random_sparsity_map(num_layers: int, heads: int, neurons: int, levels, seed: int = 0) -> dict:
    """A nested map: each level removes round(s% · total) units, spread at random over layers."""
    g = torch.Generator().manual_seed(seed)
    head_rank = torch.randperm(num_layers * heads, generator=g).tolist()
    neuron_rank = torch.randperm(num_layers * neurons, generator=g).tolist()
    result = {}
    for s in levels:
        entry = {"head": {}, "neuron": {}}
        for kind, rank, per_layer in (("head", head_rank, heads), ("neuron", neuron_rank, neurons)):
            removed = rank[: round(s / 100 * len(rank))]
            for unit in removed:
                layer = unit // per_layer
                entry[kind][layer] = entry[kind].get(layer, 0) + 1
        result[s] = entry
    return result


def save_tiny_teacher(directory: Path, num_labels: int = 2, levels=None, seed: int = 0, **config) -> Path:
    """A random tiny ``sparsebert_cls`` teacher (+ tokenizer), with a sparsity map when ``levels`` given."""
    torch.manual_seed(seed)
    cfg = make_tiny_config(num_labels=num_labels, **config)
    if levels is not None:
        cfg.sparsity_map = random_sparsity_map(cfg.num_hidden_layers, cfg.num_attention_heads,
                                               cfg.intermediate_size, levels, seed)
    model = SparseBertCls(cfg)
    model.save_pretrained(directory)
    save_tiny_tokenizer(Path(directory))
    return Path(directory)


def write_conll_task(root: Path, n_train: int = 16, n_dev: int = 8, seed: int = 0) -> Path:
    """``root/conll/{train,dev,test}.txt`` in the CoNLL-2003 format, sentences of 2 to 9 words.

    Names are tagged B-PER/I-PER, places B-LOC, everything else O, so the tags are learnable.
    """
    rng = random.Random(seed)
    names, places = ["peter", "blackburn"], ["eu", "german", "british"]

    def sentence() -> str:
        rows = []
        for _ in range(rng.randint(2, 9)):
            kind = rng.random()
            if kind < 0.2:
                rows += [f"{names[0]} NNP I-NP B-PER", f"{names[1]} NNP I-NP I-PER"]
            elif kind < 0.35:
                rows.append(f"{rng.choice(places)} NNP I-NP B-LOC")
            else:
                rows.append(f"{rng.choice(FILLER)} NN I-NP O")
        return "\n".join(rows)

    folder = root / "conll"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_dev)):
        text = "-DOCSTART- -X- O O\n\n" + "\n\n".join(sentence() for _ in range(n)) + "\n"
        (folder / f"{split}.txt").write_text(text)
    return root
