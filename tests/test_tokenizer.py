"""The caption tokenizer: vocabulary, CLIP-style special tokens, padding, truncation, masks,
and save/load through `transformers.PreTrainedTokenizerFast`."""
import re

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from mmcourse.data import zero_shot_metadata as meta
from mmcourse.data.tokenizer import (DEFAULT_CONTEXT_LENGTH, SPECIAL_TOKENS, build_tokenizer, caption_corpus,
                                     default_tokenizer, load_tokenizer)


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def words(text: str) -> list[str]:
    """Reference pre-tokenisation: lower-case, words and punctuation runs."""
    return re.findall(r"\w+|[^\w\s]+", text.lower())


def test_special_tokens_have_fixed_ids(tok):
    vocab = tok.get_vocab()
    assert [vocab[t] for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tok.pad_token_id, tok.unk_token_id, tok.sot_token_id, tok.eot_token_id, tok.mask_token_id) == (0, 1, 2, 3, 4)
    assert tok.hf.pad_token == "[PAD]" and tok.hf.mask_token == "[MASK]" and tok.hf.eos_token == "[EOT]"


def test_known_caption_tokens(tok):
    assert tok.tokenize("A photo of the digit Seven.") == ["[SOT]", "a", "photo", "of", "the", "digit", "seven", ".", "[EOT]"]


def test_vocabulary_covers_every_template_caption(tok):
    corpus = caption_corpus()
    expected = {w for c in corpus for w in words(c)}
    assert set(tok.get_vocab()) == expected | set(SPECIAL_TOKENS)
    ids = tok(corpus)["input_ids"]
    assert not (ids == tok.unk_token_id).any()


def test_round_trip_decode(tok):
    for caption in caption_corpus()[::97]:
        assert tok.decode(tok.encode(caption)) == " ".join(words(caption))
        assert tok.decode(tok([caption])["input_ids"][0]) == " ".join(words(caption))


def test_unknown_word_maps_to_unk(tok):
    assert tok.tokenize("a zebra") == ["[SOT]", "a", "[UNK]", "[EOT]"]


def test_batch_layout_sot_words_eot_then_padding(tok):
    captions = ["a handwritten 7.", "a picture of a small red circle to the left of a cyan cross.", "two"]
    out = tok(captions)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (3, DEFAULT_CONTEXT_LENGTH)
    assert ids.dtype == mask.dtype == torch.long
    lengths = [len(words(c)) + 2 for c in captions]
    assert mask.sum(1).tolist() == lengths
    for row, (r, n) in enumerate(zip(ids, lengths)):
        assert r[0] == tok.sot_token_id and r[n - 1] == tok.eot_token_id
        assert (r[n:] == tok.pad_token_id).all() and (r[1:n - 1] > 4).all()
        assert mask[row, :n].all() and not mask[row, n:].any()
    # The two documented ways to find [EOT] agree.
    by_id = (ids == tok.eot_token_id).int().argmax(-1)
    torch.testing.assert_close(by_id, mask.sum(-1) - 1)
    torch.testing.assert_close(mask, (ids != tok.pad_token_id).long())


def test_truncation_keeps_eot_last(tok):
    long = "a " + "red circle " * 30
    out = tok([long, "seven"], context_length=8)
    assert out["input_ids"].shape == (2, 8)
    assert out["input_ids"][0].tolist() == [2, tok.get_vocab()["a"]] + [tok.get_vocab()["red"], tok.get_vocab()["circle"]] * 2 + [tok.get_vocab()["red"], 3]
    assert out["attention_mask"][0].all()
    assert out["input_ids"][1].tolist()[:3] == [2, tok.get_vocab()["seven"], 3]


def test_matches_transformers_call_and_cache_is_consistent(tok):
    captions = caption_corpus()[::41] + ["An unseen caption, with ZEBRAS!"]
    for length in (DEFAULT_CONTEXT_LENGTH, 6):
        ref = tok.hf(captions, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
        for _ in range(2):  # second call is served from the cache
            out = tok(captions, context_length=length)
            torch.testing.assert_close(out["input_ids"], ref["input_ids"].long())
            torch.testing.assert_close(out["attention_mask"], ref["attention_mask"].long())


def test_deterministic_build():
    a, b = build_tokenizer(caption_corpus()), build_tokenizer(caption_corpus())
    assert a.get_vocab() == b.get_vocab()
    # Ids: specials, then decreasing frequency, ties alphabetical.
    small = build_tokenizer(["b b a", "c a b"])
    assert small.get_vocab() == {"[PAD]": 0, "[UNK]": 1, "[SOT]": 2, "[EOT]": 3, "[MASK]": 4, "b": 5, "a": 6, "c": 7}


def test_save_and_load_directory_and_file(tok, tmp_path):
    captions = [t.format(c) for t in meta.DIGIT_TEMPLATES_HELDOUT for c in meta.DIGIT_NUMERALS[:3]]
    tok12 = build_tokenizer(caption_corpus(), context_length=12)
    file = tok12.save(tmp_path / "dir")
    assert file.name == "tokenizer.json" and file.exists()
    loaded = load_tokenizer(tmp_path / "dir")
    assert loaded.context_length == 12 and loaded.get_vocab() == tok12.get_vocab()
    for key in ("input_ids", "attention_mask"):
        torch.testing.assert_close(loaded(captions)[key], tok12(captions)[key])
    # A single tokenizer.json, read by transformers itself.
    single = tok.save(tmp_path / "tok.json")
    hf = PreTrainedTokenizerFast(tokenizer_file=str(single))
    ref = hf(captions, padding="max_length", truncation=True, max_length=tok.context_length, return_tensors="pt")
    torch.testing.assert_close(ref["input_ids"].long(), tok(captions)["input_ids"])
    torch.testing.assert_close(ref["attention_mask"].long(), tok(captions)["attention_mask"])
    assert load_tokenizer(single).get_vocab() == tok.get_vocab()


@pytest.mark.parametrize("bad, match", [([], "empty"), ([3], "must be a str"), (["ok", None], "must be a str")])
def test_bad_texts_raise(tok, bad, match):
    with pytest.raises(ValueError, match=match):
        tok(bad)


def test_bad_arguments_raise(tok, tmp_path):
    with pytest.raises(ValueError, match="context_length"):
        tok(["a"], context_length=1)
    with pytest.raises(ValueError, match="context_length"):
        build_tokenizer(["a"], context_length=1)
    with pytest.raises(ValueError, match="corpus is empty"):
        build_tokenizer([])
    with pytest.raises(ValueError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "missing")


def test_single_string_is_a_batch_of_one(tok):
    assert tok("a handwritten 7.")["input_ids"].shape == (1, DEFAULT_CONTEXT_LENGTH)
