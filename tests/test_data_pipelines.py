"""Tokenisation, windows for long sentences, collate padding, decode -> metrics round trips."""

import pytest
import torch

from data.pipelines import IGNORE_INDEX, collate, encode_dataset, make_collate
from data.readers import ClsExample, TokenExample, read_examples
from data.tasks import CONLL_TAGS, get_task
from tests.helpers import FIXTURE_DATA, SHARED_DATA, requires_shared_data
from utils.maths.metrics import compute_metrics


def _tag_ids(*tags):
    return [CONLL_TAGS.index(t) for t in tags]


def _perfect_token_outputs(dataset):
    """Logits at each feature's scored positions putting all mass on the gold tag."""
    outputs = {}
    for i, f in enumerate(dataset.features):
        gold = [label for label, m in zip(f["labels"], f["label_mask"], strict=True) if m]
        outputs[i] = torch.nn.functional.one_hot(torch.tensor(gold), dataset.task.num_labels).float()
    return outputs


def test_single_sentence_encoding(tokenizer):
    examples = [ClsExample("0", "the movie was good", None, 1), ClsExample("1", "bad", None, 0)]
    ds = encode_dataset(get_task("sst2"), examples, tokenizer, max_length=16)
    item = ds[0]
    tokens = tokenizer.convert_ids_to_tokens(item["input_ids"])
    assert tokens == ["[CLS]", "the", "movie", "was", "good", "[SEP]"]
    assert item["token_type_ids"] == [0] * 6
    assert item["labels"] == 1 and item["feature_index"] == 0
    assert "label_mask" not in item
    assert ds.has_labels and ds.lengths == [6, 3]


def test_pair_encoding_segments_and_longest_first_truncation(tokenizer):
    a = "the movie was good and the plot was great"
    b = "bad"
    ds = encode_dataset("mrpc", [ClsExample("0", a, b, 1)], tokenizer, max_length=8)
    item = ds[0]
    tokens = tokenizer.convert_ids_to_tokens(item["input_ids"])
    # 8 = [CLS] + 4 of a + [SEP] + 1 of b + [SEP]: only the longer text a was cut
    assert tokens == ["[CLS]", "the", "movie", "was", "good", "[SEP]", "bad", "[SEP]"]
    assert item["token_type_ids"] == [0, 0, 0, 0, 0, 0, 1, 1]


def test_unlabelled_examples_have_no_labels_key(tokenizer):
    examples = read_examples("sst2", FIXTURE_DATA, "test")
    ds = encode_dataset("sst2", examples, tokenizer, max_length=16)
    assert not ds.has_labels and "labels" not in ds[0]
    assert "labels" not in ds.collate_fn([ds[0], ds[1]])
    with pytest.raises(ValueError, match="no gold labels"):
        ds.references()


def test_regression_labels_are_float(tokenizer):
    ds = encode_dataset("stsb", read_examples("stsb", FIXTURE_DATA, "dev"), tokenizer, max_length=16)
    batch = ds.collate_fn([ds[0], ds[1]])
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == pytest.approx([2.5, 4.2])
    assert ds.decode({0: torch.tensor([1.5]), 1: torch.tensor([3.0])}) == [1.5, 3.0]


def test_collate_pads_to_longest_in_batch(tokenizer):
    examples = [ClsExample("0", "good", None, 1), ClsExample("1", "the movie was bad", None, 0)]
    ds = encode_dataset("sst2", examples, tokenizer, max_length=64)
    batch = make_collate(tokenizer)([ds[0], ds[1]])
    assert batch["input_ids"].shape == (2, 6)  # padded to the longest in the batch, not to max_length 64
    pad = tokenizer.pad_token_id
    assert batch["input_ids"][0].tolist()[3:] == [pad, pad, pad]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6]
    assert batch["token_type_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dtype == torch.long
    assert batch["feature_index"].tolist() == [0, 1]


def test_word_pieces_first_piece_carries_the_label(tokenizer):
    words = ["Peter", "Blackburn", "rejects", "Germans", "lambs"]
    example = TokenExample("0", words, _tag_ids("B-PER", "I-PER", "O", "B-MISC", "O"), [])
    ds = encode_dataset("conll", [example], tokenizer, max_length=32)
    item = ds[0]
    tokens = tokenizer.convert_ids_to_tokens(item["input_ids"])
    assert tokens == ["[CLS]", "peter", "blackburn", "rejects", "german", "##s", "lamb", "##s", "[SEP]"]
    assert item["label_mask"] == [0, 1, 1, 1, 1, 0, 1, 0, 0]
    n = IGNORE_INDEX
    assert item["labels"] == [n, *_tag_ids("B-PER", "I-PER", "O", "B-MISC"), n, *_tag_ids("O"), n, n]


def test_long_sentence_is_split_into_windows_and_merged_back(tokenizer, caplog):
    words = ["Germans", "rejects", "lambs", "Peter", "Blackburn", "said", "on", "Thursday", "Peters", "."]
    tags = ["B-MISC", "O", "O", "B-PER", "I-PER", "O", "O", "O", "B-PER", "O"]
    long = TokenExample("0", words, _tag_ids(*tags), [])
    short = TokenExample("1", ["EU", "rejects"], _tag_ids("B-ORG", "O"), [])
    caplog.set_level("INFO")
    # 14 pieces in the long sentence; budget 6 per window -> windows of whole words
    ds = encode_dataset("conll", [long, short], tokenizer, max_length=8)
    assert "1 of 2 sentences" in caplog.text
    long_features = [f for f in ds.features if f["example_index"] == 0]
    assert len(long_features) > 1
    assert all(len(f["input_ids"]) <= 8 for f in ds.features)
    # windows are consecutive and non-overlapping, and every word is scored exactly once
    spans = [(f["word_start"], f["word_end"]) for f in long_features]
    assert spans[0][0] == 0 and spans[-1][1] == len(words)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert sum(sum(f["label_mask"]) for f in long_features) == len(words)
    predictions = ds.decode(_perfect_token_outputs(ds))
    assert predictions == [tags, ["B-ORG", "O"]]
    assert ds.references() == predictions
    assert compute_metrics("conll", predictions, ds.references()) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_word_longer_than_the_window_keeps_its_first_piece(tokenizer):
    example = TokenExample("0", ["Germans", "lambs"], _tag_ids("B-MISC", "O"), [])
    ds = encode_dataset("conll", [example], tokenizer, max_length=3)  # one piece per window
    assert [sum(f["label_mask"]) for f in ds.features] == [1, 1]
    assert ds.decode(_perfect_token_outputs(ds)) == [["B-MISC", "O"]]


def test_token_collate_pads_labels_and_mask(tokenizer):
    examples = read_examples("conll", FIXTURE_DATA, "train")
    ds = encode_dataset("conll", examples, tokenizer, max_length=64)
    batch = ds.collate_fn([ds[1], ds[0]])
    width = max(ds.lengths[0], ds.lengths[1])
    assert batch["labels"].shape == (2, width) and batch["label_mask"].shape == (2, width)
    assert batch["label_mask"].dtype == torch.bool
    assert (batch["labels"][0, ds.lengths[1]:] == IGNORE_INDEX).all()
    assert not batch["label_mask"][0, ds.lengths[1]:].any()
    # scored positions are exactly those with a label
    assert torch.equal(batch["label_mask"], batch["labels"] != IGNORE_INDEX)


def test_unlabelled_token_data_still_has_label_mask(tokenizer):
    example = TokenExample("0", ["EU", "rejects"], None, [])
    ds = encode_dataset("conll", [example], tokenizer, max_length=16)
    assert not ds.has_labels and "labels" not in ds[0] and sum(ds[0]["label_mask"]) == 2


@pytest.mark.parametrize("name", ["sst2", "mrpc", "cola", "mnli", "qnli"])
def test_perfect_logits_give_perfect_metrics(tokenizer, name):
    spec = get_task(name)
    ds = encode_dataset(spec, read_examples(spec, FIXTURE_DATA, "train"), tokenizer, max_length=32)
    outputs = {i: torch.nn.functional.one_hot(torch.tensor(f["labels"]), spec.num_labels).float()
               for i, f in enumerate(ds.features)}
    metrics = compute_metrics(spec, ds.decode(outputs), ds.references())
    assert set(metrics) == set(spec.metric_names)
    assert metrics[spec.selection_metric] == pytest.approx(1.0)


def test_decode_rejects_missing_or_misshaped_outputs(tokenizer):
    ds = encode_dataset("conll", read_examples("conll", FIXTURE_DATA, "dev"), tokenizer, max_length=32)
    with pytest.raises(ValueError, match="lack 1 of 1 features"):
        ds.decode({})
    with pytest.raises(ValueError, match="7 scored positions"):
        ds.decode({0: torch.zeros(3, 9)})


def test_take_keeps_the_first_examples_and_their_windows(tokenizer):
    ds = encode_dataset("sst2", read_examples("sst2", FIXTURE_DATA, "train"), tokenizer, max_length=16)
    small = ds.take(2)
    assert len(small) == 2 and len(small.examples) == 2 and small[1]["feature_index"] == 1


def test_subset_renumbers_examples_and_keeps_every_window(tokenizer):
    short = TokenExample("0", ["EU", "rejects"], _tag_ids("B-ORG", "O"), [])
    words = ["Germans", "rejects", "lambs", "Peter", "Blackburn", "said", "on", "Thursday", "Peters", "."]
    tags = ["B-MISC", "O", "O", "B-PER", "I-PER", "O", "O", "O", "B-PER", "O"]
    long = TokenExample("1", words, _tag_ids(*tags), [])
    ds = encode_dataset("conll", [short, long, short], tokenizer, max_length=8)
    part = ds.subset([1, 2])  # the windowed sentence becomes example 0, its windows in order
    assert [e.guid for e in part.examples] == ["1", "0"]
    assert [f["example_index"] for f in part.features] == [0] * (len(ds) - 2) + [1]
    assert part.decode(_perfect_token_outputs(part)) == part.references() == [tags, ["B-ORG", "O"]]
    assert ds.features[1]["example_index"] == 1  # the whole set is left as it was
    for bad in ([0, 0], [3]):
        with pytest.raises(ValueError, match="distinct example indices below 3"):
            ds.subset(bad)


def test_collate_function_is_plain(tokenizer):
    with pytest.raises(ValueError, match="empty batch"):
        collate([], pad_token_id=0)


@pytest.mark.real_data
@requires_shared_data
def test_real_conll_dev_every_word_predicted_once(tokenizer):
    examples = read_examples("conll", SHARED_DATA, "dev")
    ds = encode_dataset("conll", examples, tokenizer, max_length=32)  # short windows force many splits
    assert len(ds) > len(examples)
    assert sum(sum(f["label_mask"]) for f in ds.features) == sum(len(e.words) for e in examples) == 51362
    predictions = ds.decode(_perfect_token_outputs(ds))
    assert compute_metrics("conll", predictions, ds.references())["f1"] == 1.0


def _byte_level_bpe_tokenizer():
    """A byte-level BPE tokenizer (as Llama-3's, Qwen's, SmolLM2's) trained here on a few sentences, so that
    ``Ġblackburn`` (the word after a space) is one piece while ``blackburn`` alone is not."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = ["peter blackburn said the eu rejects german lambs , peter said ."] * 20
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>")


def test_words_are_tokenised_as_in_running_text_by_a_byte_level_bpe_tokenizer():
    tokenizer = _byte_level_bpe_tokenizer()
    words = ["peter", "blackburn", "said", "blackburn", "rejects", ",", "peter", "lambs", "."]
    running = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(running)[1] == "Ġblackburn"
    assert len(tokenizer("blackburn", add_special_tokens=False)["input_ids"]) > 1  # alone, it is split
    tags = _tag_ids("B-PER", "I-PER", "O", "B-PER", "O", "O", "B-PER", "B-MISC", "O")
    ds = encode_dataset("conll", [TokenExample("0", words, tags, [])], tokenizer, max_length=64)
    (feature,) = ds.features
    assert feature["input_ids"] == running
    # each word's first piece is scored: the pieces of "a b" split where the words do
    starts = [i for i, m in enumerate(feature["label_mask"]) if m]
    assert [tokenizer.decode(running[a:b]) for a, b in zip(starts, [*starts[1:], len(running)], strict=True)] == (
        [words[0]] + [" " + w for w in words[1:]])
    # a window cut mid-sentence keeps the pieces of running text; together the windows hold every piece once
    windows = encode_dataset("conll", [TokenExample("0", words, tags, [])], tokenizer, max_length=5).features
    assert len(windows) > 1
    assert [i for f in windows for i in f["input_ids"]] == running
