"""The language-modelling task's data: split assignment by file name, the held-out dev rule, ``*.txt`` paragraphs
and ``*.jsonl`` records, packing into blocks of token ids, batching, and the error cases."""

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from data.pipelines import IGNORE_INDEX, TextBlock, encode_dataset, pack_documents
from data.readers import (
    DataFormatError,
    LMDocument,
    MissingDataError,
    find_split_file,
    find_split_files,
    lm_split_of,
    read_examples,
    read_lm_file,
)
from data.tasks import DataError, get_task, validate_selection_metric
from tests.helpers import save_tiny_decoder_tokenizer

LM = get_task("lm")
# Ids of the tiny decoder tokenizer: <unk> 0, <s> 1, </s> 2, then T5_WORDS from 3.
THE, MOVIE, GOOD, GREAT, WAS, PETER, BLACKBURN, EOS = 3, 4, 15, 16, 10, 21, 22, 2


@pytest.fixture(scope="module")
def decoder_tokenizer(tmp_path_factory):
    """The Llama-style word-level tokenizer as saved: ``</s>`` but no pad token."""
    return AutoTokenizer.from_pretrained(save_tiny_decoder_tokenizer(tmp_path_factory.mktemp("decoder_tokenizer")))


def _write(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def _texts(documents):
    return [doc.text for doc in documents]


def _docs(*texts):
    return [LMDocument(guid=f"train-{k}", text=t) for k, t in enumerate(texts)]


# ---- the task ------------------------------------------------------------------------------------


def test_lm_task_spec():
    assert LM.is_lm_task and LM.kind == "language_modeling" and LM.labels == () and LM.num_labels == 0
    assert LM.metric_names == ("perplexity", "nll", "inverse_perplexity")
    assert validate_selection_metric("lm", None) == "inverse_perplexity"
    assert LM.submission_name is None and LM.file_format == "lm"
    assert not any(get_task(name).is_lm_task for name in ("sst2", "stsb", "conll", "pos"))


# ---- reading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, split", [
    ("train.txt", "train"), ("wiki.TRAIN.jsonl", "train"), ("dev.txt", "dev"), ("wiki.valid.jsonl", "dev"),
    ("Validation-01.txt", "dev"), ("test.txt", "test"), ("News_Test.jsonl", "test"), ("corpus.txt", "train"),
    ("train_and_test.txt", "train"), ("dev-test.txt", "dev"),
])
def test_split_of_file_name(name, split):
    assert lm_split_of(name) == split


def test_splits_by_file_name_in_sorted_order(tmp_path):
    folder = tmp_path / "lm"
    _write(folder, "b_train.txt", "the movie\n\ngood\n")
    _write(folder, "a_corpus.txt", "peter blackburn\n")  # no split in its name: train, read first by name
    _write(folder, "wiki.valid.jsonl", json.dumps({"text": "a great film"}) + "\n")
    _write(folder, "Test.txt", "it was dull\n")
    _write(folder, "notes.md", "not a document\n")
    train = read_examples(LM, tmp_path, "train")
    assert train == [LMDocument("train-0", "peter blackburn"), LMDocument("train-1", "the movie"),
                     LMDocument("train-2", "good")]
    assert read_examples(LM, tmp_path, "dev") == [LMDocument("dev-0", "a great film")]
    assert read_examples(LM, tmp_path, "test") == [LMDocument("test-0", "it was dull")]
    assert find_split_files(LM, tmp_path, "train") == [folder / "a_corpus.txt", folder / "b_train.txt"]
    assert find_split_files(LM, tmp_path, "dev") == [folder / "wiki.valid.jsonl"]


def test_data_dir_itself_when_there_is_no_lm_folder(tmp_path):
    _write(tmp_path, "train.txt", "the plot\n")
    assert _texts(read_examples(LM, tmp_path, "train")) == ["the plot"]
    _write(tmp_path / "lm", "train.txt", "the story\n")  # the lm folder wins once it exists
    assert _texts(read_examples(LM, tmp_path, "train")) == ["the story"]


def test_dev_held_out_of_train_without_dev_files(tmp_path):
    # 10 + 35 documents over two files, so the held-out rule runs over the documents in reading order
    _write(tmp_path, "a.txt", "".join(f"first {i}\n\n" for i in range(10)))
    _write(tmp_path, "b_train.jsonl", "".join(json.dumps({"text": f"second {i}"}) + "\n" for i in range(35)))
    everything = [f"first {i}" for i in range(10)] + [f"second {i}" for i in range(35)]
    dev = read_examples(LM, tmp_path, "dev")
    train = read_examples(LM, tmp_path, "train")
    assert _texts(dev) == ["second 9", "second 29"] == [everything[19], everything[39]]
    assert _texts(train) == [t for i, t in enumerate(everything) if i not in (19, 39)]
    assert [doc.guid for doc in dev] == ["dev-0", "dev-1"] and train[-1].guid == "train-42"
    assert find_split_files(LM, tmp_path, "dev") == [tmp_path / "a.txt", tmp_path / "b_train.jsonl"]
    with pytest.raises(MissingDataError, match="test") as info:  # test is never held out
        read_examples(LM, tmp_path, "test")
    assert str(tmp_path / "a.txt") in str(info.value) and str(tmp_path / "b_train.jsonl") in str(info.value)


def test_dev_file_keeps_every_train_document(tmp_path):
    _write(tmp_path, "train.txt", "".join(f"doc {i}\n\n" for i in range(40)))
    _write(tmp_path, "dev.txt", "the end\n")
    assert len(read_examples(LM, tmp_path, "train")) == 40
    assert _texts(read_examples(LM, tmp_path, "dev")) == ["the end"]


def test_txt_paragraphs(tmp_path):
    text = "\n\n  \nthe movie\nwas good\n\n\n\t \n\nit was great  \r\n\r\npeter\n   \n"
    path = _write(tmp_path, "train.txt", text)
    assert read_lm_file(path) == ["the movie\nwas good", "it was great  ", "peter"]
    assert read_lm_file(_write(tmp_path, "empty.txt", " \n\n")) == []


def test_jsonl_records(tmp_path):
    lines = [json.dumps({"text": "the movie", "id": 7}), "", json.dumps({"text": "  "}), json.dumps({"text": "a\n\nb"})]
    path = _write(tmp_path, "train.jsonl", "\n".join(lines) + "\n")
    assert read_lm_file(path) == ["the movie", "a\n\nb"]  # whitespace-only texts skipped; a text is one document


@pytest.mark.parametrize("bad", ['{"text": "the"', '["the movie"]', '{"body": "the movie"}', '{"text": 3}',
                                 '{"text": null}'])
def test_jsonl_bad_line_names_file_and_line(tmp_path, bad):
    path = _write(tmp_path / "lm", "train.jsonl", json.dumps({"text": "the movie"}) + "\n\n" + bad + "\n")
    with pytest.raises(DataFormatError) as info:
        read_examples(LM, tmp_path, "train")
    assert f"{path}:3:" in str(info.value)


def test_split_without_documents_is_missing_data(tmp_path):
    with pytest.raises(MissingDataError, match="no data folder"):
        read_examples(LM, tmp_path / "absent", "train")
    with pytest.raises(MissingDataError, match="no train documents"):
        read_examples(LM, tmp_path, "train")  # a folder without any *.txt or *.jsonl
    path = _write(tmp_path, "train.txt", "".join(f"doc {i}\n\n" for i in range(19)))
    with pytest.raises(MissingDataError, match="every 20th") as info:  # 19 documents: none held out
        read_examples(LM, tmp_path, "dev")
    assert str(path) in str(info.value)
    dev = _write(tmp_path, "dev.txt", "\n \n")
    with pytest.raises(MissingDataError) as info:
        read_examples(LM, tmp_path, "dev")
    assert str(dev) in str(info.value) and str(path) not in str(info.value)
    with pytest.raises(MissingDataError):
        find_split_files(LM, tmp_path, "test")
    with pytest.raises(MissingDataError, match="find_split_files"):
        find_split_file(LM, tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split"):
        read_examples(LM, tmp_path, "validation")


# ---- packing -------------------------------------------------------------------------------------

DOCS = _docs("the movie", "good", "Peter Blackburn was great")  # 2 + 1 + 4 tokens, 10 with the boundaries
STREAM = [THE, MOVIE, EOS, GOOD, EOS, PETER, BLACKBURN, WAS, GREAT, EOS]


def test_packing_joins_documents_with_eos_into_blocks(decoder_tokenizer):
    ds = encode_dataset(LM, DOCS, decoder_tokenizer, max_length=4)
    assert ds.examples == [TextBlock("block-0", tuple(STREAM[:4])), TextBlock("block-1", tuple(STREAM[4:8])),
                           TextBlock("block-2", tuple(STREAM[8:]))]  # the last block of 2 tokens is kept
    assert ds.examples[1].label == tuple(STREAM[4:8])
    assert ds.features[2] == {"input_ids": STREAM[8:], "token_type_ids": [0, 0], "labels": STREAM[8:],
                              "example_index": 2}
    assert ds.has_labels and len(ds) == 3 and ds.lengths == [4, 4, 2]
    assert ds[1] == {"input_ids": STREAM[4:8], "token_type_ids": [0] * 4, "feature_index": 1,
                     "labels": STREAM[4:8]}
    assert ds.pad_token_id == EOS  # the saved tokenizer has no pad token


@pytest.mark.parametrize("max_length, lengths", [(3, [3, 3, 3]), (2, [2] * 5), (10, [10]), (9, [9]), (64, [10])])
def test_last_partial_block_needs_two_tokens(decoder_tokenizer, max_length, lengths):
    blocks = pack_documents(DOCS, decoder_tokenizer, max_length)
    assert [len(b.token_ids) for b in blocks] == lengths
    assert [i for b in blocks for i in b.token_ids] == STREAM[:sum(lengths)]  # 10 = 3·3 + 1: one token dropped


def test_take_subset_and_collate(decoder_tokenizer):
    ds = encode_dataset(LM, DOCS, decoder_tokenizer, max_length=4)
    first = ds.take(2)
    assert [b.token_ids for b in first.examples] == [tuple(STREAM[:4]), tuple(STREAM[4:8])] and len(first) == 2
    assert ds.take(5) is ds
    last_two = ds.subset([2, 0])
    assert [f["example_index"] for f in last_two.features] == [0, 1]
    assert last_two.features[0]["input_ids"] == STREAM[8:]
    batch = ds.collate_fn([ds[2], ds[0]])
    assert batch["input_ids"].tolist() == [STREAM[8:] + [EOS, EOS], STREAM[:4]]
    assert batch["labels"].tolist() == [STREAM[8:] + [IGNORE_INDEX] * 2, STREAM[:4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch["labels"].dtype == torch.long and batch["feature_index"].tolist() == [2, 0]


def test_read_then_encode(tmp_path, decoder_tokenizer):
    _write(tmp_path / "lm", "train.txt", "the movie\n\ngood\n\nPeter Blackburn\nwas great\n")
    ds = encode_dataset("lm", read_examples(LM, tmp_path, "train"), decoder_tokenizer, max_length=5)
    assert [list(b.token_ids) for b in ds.examples] == [STREAM[:5], STREAM[5:]]


def test_decode_and_references_refuse(decoder_tokenizer):
    ds = encode_dataset(LM, DOCS, decoder_tokenizer, max_length=4)
    with pytest.raises(ValueError, match="from the loss"):
        ds.decode({i: torch.zeros(4, 30) for i in range(len(ds))})
    with pytest.raises(ValueError, match="from the loss"):
        ds.references()


def test_boundary_falls_back_to_sep(tokenizer):
    # the BERT tokenizer has no end-of-sequence token: its [SEP] marks the document ends
    blocks = pack_documents(_docs("the movie", "good"), tokenizer, max_length=16)
    assert blocks[0].token_ids == tuple(tokenizer.convert_tokens_to_ids(["the", "movie", "[SEP]", "good", "[SEP]"]))


def test_packing_errors(decoder_tokenizer):
    with pytest.raises(DataError, match="max_length 1"):
        encode_dataset(LM, DOCS, decoder_tokenizer, max_length=1)
    no_boundary = SimpleNamespace(eos_token_id=None, sep_token_id=None, pad_token_id=None)
    with pytest.raises(DataError, match="end of a document"):
        pack_documents(DOCS, no_boundary, max_length=4)
    with pytest.raises(DataError, match="0 documents"):
        encode_dataset(LM, [], decoder_tokenizer, max_length=4)
