"""BERT's 80/10/10 masking: rates within binomial tolerance, what may never be chosen, labels,
edge cases, and agreement with Hugging Face's `DataCollatorForLanguageModeling`."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import DataCollatorForLanguageModeling

from mmcourse.data import Shapes
from mmcourse.data.masking import (IGNORE_INDEX, MaskingCollator, mask_selected, mask_tokens, maskable_positions,
                                   special_token_ids)
from mmcourse.data.tokenizer import default_tokenizer

TOK = default_tokenizer()
SPECIAL = special_token_ids(TOK)
CAPTIONS = ["a small red circle in the top left.", "a blue square.", "a photo of the digit seven.",
            "there is a large cyan cross.", "the number 7.", "a picture of a small red circle to the left of a cyan cross."]


def _batch(repeat: int = 1):
    enc = TOK(CAPTIONS * repeat)
    return enc["input_ids"], enc["attention_mask"]


def _mask(ids, mask, seed=0, **kw):
    return mask_tokens(ids, mask, SPECIAL, TOK.vocab_size, TOK.mask_token_id,
                       generator=torch.Generator().manual_seed(seed), **kw)


def _within(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """`count` successes of `n` trials is within `sigmas` binomial standard deviations of n*p."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


def _rates(ids, mask, masked, labels):
    can = maskable_positions(ids, mask, SPECIAL)
    chosen = labels != IGNORE_INDEX
    is_mask = chosen & (masked == TOK.mask_token_id)
    unchanged = chosen & (masked == ids)
    other = chosen & ~is_mask & ~unchanged
    return int(can.sum()), int(chosen.sum()), int(is_mask.sum()), int(unchanged.sum()), int(other.sum())


def test_rates_are_bert_s_80_10_10_within_binomial_tolerance():
    ids, mask = _batch(repeat=700)  # about 30,000 maskable positions
    masked, labels = _mask(ids, mask)
    n_can, n_chosen, n_mask, n_same, n_other = _rates(ids, mask, masked, labels)
    V = TOK.vocab_size
    assert _within(n_chosen, n_can, 0.15), (n_chosen, n_can)
    # a random token equals [MASK] or the original with probability 1/V each
    assert _within(n_mask, n_chosen, 0.8 + 0.1 / V), n_mask / n_chosen
    assert _within(n_same, n_chosen, 0.1 + 0.1 / V), n_same / n_chosen
    assert _within(n_other, n_chosen, 0.1 * (1 - 2 / V)), n_other / n_chosen
    # and the rates are really near 15% / 80% / 10% / 10%
    assert abs(n_chosen / n_can - 0.15) < 0.01 and abs(n_mask / n_chosen - 0.8) < 0.02
    assert abs(n_other / n_chosen - 0.1) < 0.015 and abs(n_same / n_chosen - 0.1) < 0.015


@pytest.mark.parametrize("p, mrp, rrp", [(0.4, 0.5, 0.4), (0.15, 1.0, 0.0), (0.3, 0.0, 1.0), (0.2, 0.0, 0.0)])
def test_other_rates(p, mrp, rrp):
    ids, mask = _batch(repeat=400)
    masked, labels = _mask(ids, mask, seed=1, mlm_probability=p, mask_replace_prob=mrp, random_replace_prob=rrp)
    n_can, n_chosen, n_mask, n_same, n_other = _rates(ids, mask, masked, labels)
    V = TOK.vocab_size
    assert _within(n_chosen, n_can, p)
    assert _within(n_mask, n_chosen, mrp + rrp / V)
    assert _within(n_other, n_chosen, rrp * (1 - 2 / V))
    assert _within(n_same, n_chosen, 1 - mrp - rrp + rrp / V)


def test_padding_and_special_tokens_are_never_chosen_or_changed():
    ids, mask = _batch(repeat=200)
    masked, labels = _mask(ids, mask, mlm_probability=0.9)
    never = ~maskable_positions(ids, mask, SPECIAL)
    assert never.sum() > 0 and (mask == 0).sum() > 0
    assert (labels[never] == IGNORE_INDEX).all()
    assert torch.equal(masked[never], ids[never])
    assert torch.equal(maskable_positions(ids, mask, SPECIAL), (mask == 1) & (ids > 4))  # specials are ids 0..4


def test_labels_are_the_original_ids_at_chosen_positions_and_minus_100_elsewhere():
    ids, mask = _batch(repeat=50)
    masked, labels = _mask(ids, mask)
    chosen = labels != IGNORE_INDEX
    assert torch.equal(labels[chosen], ids[chosen])
    assert set(labels[~chosen].unique().tolist()) == {IGNORE_INDEX}
    # the classic slip (random tokens drawn from all positions) would change unchosen positions
    assert torch.equal(masked[~chosen], ids[~chosen])
    assert masked.dtype == labels.dtype == torch.long and masked.shape == ids.shape


def test_inputs_are_not_modified_and_draws_repeat_with_a_seed():
    ids, mask = _batch()
    before = ids.clone()
    a = _mask(ids, mask, seed=3)
    b = _mask(ids, mask, seed=3)
    assert torch.equal(ids, before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_batch_of_one_short_caption():
    enc = TOK(["a blue square."], context_length=8)  # [SOT] a blue square . [EOT] [PAD] [PAD]
    counts = torch.zeros(8)
    for seed in range(400):
        masked, labels = _mask(enc["input_ids"], enc["attention_mask"], seed=seed)
        assert masked.shape == (1, 8)
        counts += (labels[0] != IGNORE_INDEX).float()
    assert counts[[0, 5, 6, 7]].sum() == 0  # [SOT], [EOT], padding
    assert all(_within(int(c), 400, 0.15) for c in counts[1:5])
    # only special tokens: nothing can be chosen, every label is -100
    masked, labels = _mask(torch.tensor([[2, 3, 0]]), torch.tensor([[1, 1, 0]]), mlm_probability=1.0)
    assert (labels == IGNORE_INDEX).all() and torch.equal(masked, torch.tensor([[2, 3, 0]]))


def test_mlm_probability_one_chooses_every_real_word():
    ids, mask = _batch()
    _, labels = _mask(ids, mask, mlm_probability=1.0)
    assert torch.equal(labels != IGNORE_INDEX, maskable_positions(ids, mask, SPECIAL))


def _hf_collator(seed=None, **kw):
    return DataCollatorForLanguageModeling(tokenizer=TOK.hf, seed=seed, **kw)


@pytest.mark.parametrize("kw", [{}, {"mlm_probability": 0.4, "mask_replace_prob": 0.5, "random_replace_prob": 0.4},
                                {"mask_replace_prob": 1.0, "random_replace_prob": 0.0}])
def test_same_tensors_as_hugging_face_with_the_same_generator(kw):
    """Same draws in the same order: with generators in the same state, the same tensors."""
    ids, mask = _batch(repeat=20)
    hf = _hf_collator(**kw)
    hf.generator = torch.Generator().manual_seed(7)
    hf_inputs, hf_labels = hf.torch_mask_tokens(ids.clone())  # special tokens found by the HF tokenizer
    ours, labels = mask_tokens(ids, mask, SPECIAL, TOK.vocab_size, TOK.mask_token_id,
                               generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(ours, hf_inputs) and torch.equal(labels, hf_labels)


def test_agrees_in_distribution_with_hugging_face_collator():
    """Independent draws (HF's collator on token lists with its own seed, ours with another):
    every rate agrees within binomial tolerance, position by position class."""
    ids, mask = _batch(repeat=600)
    examples = [{"input_ids": row[m.bool()].tolist()} for row, m in zip(ids, mask)]
    hf_batch = _hf_collator(seed=11)(examples)  # pads each batch itself, to its longest caption
    L = hf_batch["input_ids"].shape[1]
    hf_ids, hf_mask = ids[:, :L], mask[:, :L]
    ours, labels = _mask(hf_ids, hf_mask, seed=12)
    ours_rates = _rates(hf_ids, hf_mask, ours, labels)
    hf_rates = _rates(hf_ids, hf_mask, hf_batch["input_ids"], hf_batch["labels"])
    n_can = ours_rates[0]
    assert hf_rates[0] == n_can
    for k, name in enumerate(["chosen", "[MASK]", "unchanged", "random"], start=1):
        total = n_can if k == 1 else (ours_rates[1] + hf_rates[1]) / 2
        p = (ours_rates[k] + hf_rates[k]) / (2 * total)
        sd = math.sqrt(2 * total * p * (1 - p))  # sd of the difference of two binomial counts
        assert abs(ours_rates[k] - hf_rates[k]) <= 5 * sd + 2, (name, ours_rates, hf_rates)
    # both choose the same kind of positions: never padding or special tokens
    assert (hf_batch["labels"][~maskable_positions(hf_ids, hf_mask, SPECIAL)] == IGNORE_INDEX).all()


def test_random_replacements_are_uniform_over_the_vocabulary():
    ids, mask = _batch(repeat=800)
    masked, labels = _mask(ids, mask, mlm_probability=1.0, mask_replace_prob=0.0, random_replace_prob=1.0)
    draws = masked[labels != IGNORE_INDEX]
    counts = torch.bincount(draws, minlength=TOK.vocab_size).float()
    expected = len(draws) / TOK.vocab_size
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < TOK.vocab_size - 1 + 6 * math.sqrt(2 * (TOK.vocab_size - 1)), chi2  # df + 6 sd


@pytest.mark.parametrize("kw, match", [
    ({"mlm_probability": 1.5}, "mlm_probability"),
    ({"mask_replace_prob": -0.1}, "mask_replace_prob"),
    ({"mask_replace_prob": 0.8, "random_replace_prob": 0.3}, "<= 1"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"vocab_size": 10}, r"\[0, vocab_size=10\)"),
    ({"mask_token_id": 50}, "not among special_ids"),
])
def test_bad_arguments_name_the_problem(kw, match):
    ids, mask = _batch()
    args = {"special_ids": SPECIAL, "vocab_size": TOK.vocab_size, "mask_token_id": TOK.mask_token_id, **kw}
    with pytest.raises(ValueError, match=match):
        mask_tokens(ids, mask, **args)


def test_bad_tensors_name_the_problem():
    ids, mask = _batch()
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        mask_tokens(ids[0], mask[0], SPECIAL, TOK.vocab_size, TOK.mask_token_id)
    with pytest.raises(ValueError, match="integer"):
        mask_tokens(ids.float(), mask, SPECIAL, TOK.vocab_size, TOK.mask_token_id)
    with pytest.raises(ValueError, match="shape of input_ids"):
        mask_tokens(ids, mask[:, :3], SPECIAL, TOK.vocab_size, TOK.mask_token_id)
    with pytest.raises(ValueError, match="only 0"):
        mask_tokens(ids, mask * 2, SPECIAL, TOK.vocab_size, TOK.mask_token_id)


def test_mask_selected():
    ids, mask = _batch()
    colour_ids = torch.tensor([TOK.get_vocab()[c] for c in ("red", "blue", "cyan")])
    selected = torch.isin(ids, colour_ids)
    masked, labels = mask_selected(ids, selected, TOK.mask_token_id)
    assert torch.equal(masked[selected], torch.full((int(selected.sum()),), TOK.mask_token_id))
    assert torch.equal(masked[~selected], ids[~selected])
    assert torch.equal(labels[selected], ids[selected]) and (labels[~selected] == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match="bool tensor"):
        mask_selected(ids, selected.long(), TOK.mask_token_id)


def test_collator_on_dataset_items_and_on_captions():
    shapes = Shapes("val", n=8)
    collate = MaskingCollator(TOK, seed=0)
    batch = collate([shapes[i] for i in range(8)])
    assert batch["image"].shape == (8, 3, 32, 32) and batch["label"].shape == (8,)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    chosen = batch["labels"] != IGNORE_INDEX
    assert torch.equal(batch["labels"][chosen], batch["original_input_ids"][chosen])
    full = TOK(batch["caption"])
    L = batch["input_ids"].shape[1]
    assert L == int(full["attention_mask"].sum(1).max()) < TOK.context_length  # padded to the longest caption
    assert torch.equal(batch["original_input_ids"], full["input_ids"][:, :L])
    text = MaskingCollator(TOK, with_images=False)(CAPTIONS)
    assert "image" not in text and text["input_ids"].shape[0] == len(CAPTIONS)
    assert "image" not in MaskingCollator(TOK, with_images=False)([shapes[0]])
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
    with pytest.raises(ValueError, match="CaptionTokenizer"):
        MaskingCollator(lambda texts: texts)
    assert "mlm_probability=0.15" in repr(collate)


def test_collator_seed_repeats_and_defaults_to_the_global_generator():
    a = MaskingCollator(TOK, seed=5)(CAPTIONS)["input_ids"]
    b = MaskingCollator(TOK, seed=5)(CAPTIONS)["input_ids"]
    assert torch.equal(a, b)
    torch.manual_seed(0)
    c = MaskingCollator(TOK)(CAPTIONS * 10)["labels"]
    torch.manual_seed(0)
    d = MaskingCollator(TOK)(CAPTIONS * 10)["labels"]
    assert torch.equal(c, d)
