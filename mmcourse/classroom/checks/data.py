"""Checks for the data and encoders assignment (lesson 03).

- `check_make_caption(fn)`: `fn(template, label, numeral) -> str`, a digit caption.
- `check_attention_mask(fn)`: `fn(input_ids, pad_token_id) -> (B, L) long`, 1 on real tokens.
- `check_pool_eot(fn)`: `fn(x, attention_mask) -> (B, E)`, the hidden state at [EOT].

Inputs come from the course's own tokenizer, so a student's answer is tested on what the
encoders really receive; each typical mistake is named.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from mmcourse.data import zero_shot_metadata as meta
from mmcourse.data.tokenizer import default_tokenizer
from mmcourse.classroom.checks.core import Case, CheckResult, Property, Variant, call_safely, finish, run_check


def _is(fn: Callable, args: tuple, expected: Any) -> bool:
    """True when `fn(*args)` runs and returns exactly `expected` (a diagnosis helper)."""
    got = call_safely(fn, *args)
    return got.ok and isinstance(got.value, str) and got.value == expected


# ---------------------------------------------------------------------------- captions
def _make_caption(template: str, label: int, numeral: bool) -> str:
    return template.format(meta.DIGIT_NUMERALS[label] if numeral else meta.DIGIT_CLASSNAMES[label])


_T = "a handwritten {}."
_CAPTION_CASES = [
    Case(args=(_T, 7, False), label="'a handwritten {}.', label 7, word"),
    Case(args=(_T, 7, True), label="'a handwritten {}.', label 7, numeral"),
    Case(args=("the number {} in ink.", 0, False), label="label 0, word"),
    Case(args=("{}: a photo of the digit.", 9, True), label="placeholder first, label 9, numeral"),
]
_CAPTION_DIAGNOSES = [
    Property(lambda fn: _is(fn, (_T, 7, False), "a handwritten 7.") and _is(fn, (_T, 7, True), "a handwritten seven."),
             "the numeral and the word are swapped: numeral=True must give '7', numeral=False 'seven'",
             ("the numeral is the digit written with a figure ('7'), the word is the spelled-out name ('seven')", 'two lists in zero_shot_metadata hold the two spellings: which one does numeral=True ask for?')),
    Property(lambda fn: _is(fn, (_T, 7, False), "a handwritten seven.") and _is(fn, (_T, 7, True), "a handwritten seven."),
             "`numeral` is ignored: the caption always uses the word",
             ('the `numeral` argument chooses between two spellings of the class', 'look at what you do when numeral is True')),
    Property(lambda fn: _is(fn, (_T, 7, False), "a handwritten 7.") and _is(fn, (_T, 7, True), "a handwritten 7."),
             "`numeral` is ignored: the caption always uses the numeral",
             ('the `numeral` argument chooses between two spellings of the class', 'look at what you do when numeral is False')),
    Property(lambda fn: _is(fn, (_T, 7, False), "a handwritten six.") or _is(fn, (_T, 7, False), "a handwritten eight."),
             "the class name is off by one",
             ('the class names list starts at zero', "label 7 must pick the name 'seven': check which index you use")),
    Property(lambda fn: _is(fn, (_T, 7, False), _T + " seven") or _is(fn, (_T, 7, False), _T + "seven")
             or _is(fn, (_T, 7, False), "seven " + _T),
             "the name is glued to the template instead of filling its `{}`",
             ('a template has a `{}` placeholder where the name goes', 'Python strings have a method that fills placeholders')),
]


def check_make_caption(fn: Callable[[str, int, bool], str], raise_on_fail: bool = True) -> CheckResult:
    """Check `fn(template, label, numeral) -> str`."""
    return run_check("make_caption", fn, _make_caption, _CAPTION_CASES, _CAPTION_DIAGNOSES,
                     fallback_hint="print your caption for label 7 with numeral=True and numeral=False and compare "
                                   "them letter by letter with 'a handwritten 7.' and 'a handwritten seven.'",
                     success="fills templates with the word or the numeral on {n} cases, label 0 included",
                     raise_on_fail=raise_on_fail)


# ---------------------------------------------------------------------------- attention mask
def _attention_mask(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    return (input_ids != pad_token_id).long()  # (B, L)


def _mask_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    tok = default_tokenizer()
    captions = ["a handwritten 7.", "a picture of a small red circle to the left of a cyan cross.", "seven",
                "a red circle " * 10]  # the last one fills the whole context
    ids = tok(captions, context_length=12)["input_ids"]  # (4, 12), [PAD] = 0
    # The same captions from a tokenizer whose [PAD] is id 7 (and whose id 7 is [PAD]).
    swapped = ids.clone()
    swapped[ids == 0], swapped[ids == 7] = 7, 0
    return ids, swapped


_IDS, _IDS_PAD7 = _mask_inputs()
_SOT, _EOT = default_tokenizer().sot_token_id, default_tokenizer().eot_token_id
_MASK_CASES = [
    Case(args=(_IDS, 0), label="4 captions, [PAD] = 0"),
    Case(args=(_IDS_PAD7, 7), label="a tokenizer whose [PAD] id is 7"),
]
_MASK_DIAGNOSES = [
    Variant(lambda ids, pad: (ids == pad).long(), "the mask is inverted",
            ('1 marks a real token, 0 marks padding', 'which comparison with the pad id is True on real tokens?')),
    Variant(lambda ids, pad: torch.ones_like(ids), "every position is marked 1, padding included",
            "positions holding pad_token_id must be 0"),
    Property(lambda fn: bool((torch.as_tensor(fn(_IDS, 0))[(_IDS == _SOT) | (_IDS == _EOT)] == 0).all()),
             "[SOT] and [EOT] are marked 0, but they are real tokens",
             ("only padding gets 0; the text encoder even reads its summary at [EOT]",
              "which ids does your mask test? Only the pad id decides")),
    Variant(lambda ids, pad: (ids != 0).long(), "padding is found by comparing with 0 instead of pad_token_id",
            "use the pad_token_id argument: not every tokenizer pads with id 0"),
    Variant(lambda ids, pad: (ids > pad).long(), "`ids > pad_token_id` misses tokens whose id is below the pad id",
            "test for inequality (`!=`), not order"),
]


def check_attention_mask(fn: Callable[[torch.Tensor, int], torch.Tensor], raise_on_fail: bool = True) -> CheckResult:
    """Check `fn(input_ids, pad_token_id) -> (B, L) long`."""
    got = call_safely(fn, _IDS, 0)
    if got.ok and isinstance(got.value, torch.Tensor) and got.value.dtype == torch.bool \
            and torch.equal(got.value, _IDS != 0):
        return finish(CheckResult("attention_mask", False, "the values are right but the dtype is bool",
                                  ('tokenizers return attention masks as integers (0 and 1), not booleans', 'convert the dtype')), raise_on_fail)
    return run_check("attention_mask", fn, _attention_mask, _MASK_CASES, _MASK_DIAGNOSES,
                     fallback_hint="print the token ids of one short caption next to your mask: 1 under every "
                                   "real token, 0 under every padding id",
                     success="1 on every real token ([SOT] and [EOT] included), 0 on padding, on {n} batches",
                     raise_on_fail=raise_on_fail)


# ---------------------------------------------------------------------------- EOT pooling
def _pool_eot(x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return x[torch.arange(x.shape[0]), attention_mask.sum(-1) - 1]  # (B, E)


def _pool_inputs(lengths: list[int], L: int = 6, E: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), L, E, generator=g)  # (B, L, E)
    mask = (torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]).long()  # (B, L)
    return x, mask


def _real_mean(x, m):
    m = m.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1)


_POOL_CASES = [
    Case(args=_pool_inputs([3, 5, 2, 4]), label="B=4, L=6, lengths 3, 5, 2, 4"),
    Case(args=_pool_inputs([6, 1, 4], seed=1), label="a full-length caption and a 1-token one"),
    Case(args=_pool_inputs([2, 7, 5, 3, 8], L=8, E=5, seed=2), label="B=5, L=8, E=5"),
]
_POOL_DIAGNOSES = [
    Variant(lambda x, m: x[:, -1], "takes the last position, which is padding for short captions",
            ('[EOT] is the last REAL token, and padding follows it', 'how many real tokens does row b have, and where is the last one?')),
    Variant(lambda x, m: x[:, 0], "takes the first position ([SOT]), which with causal attention has seen nothing",
            "read the vector at [EOT], the last real token"),
    Variant(lambda x, m: x[torch.arange(x.shape[0]), m.sum(-1).clamp(max=x.shape[1] - 1)],
            "one position too far: attention_mask.sum(-1) is the first padding position",
            ('counting the real tokens gives the position AFTER the last one', 'positions start at 0')),
    Variant(_real_mean, "averages the real tokens (mean pooling) instead of reading the one at [EOT]",
            ('CLIP keeps a single vector per caption: the one at [EOT], not an average', 'index one position per row')),
    Variant(lambda x, m: x.mean(1), "averages over every position, padding included",
            ('CLIP keeps a single vector per caption: the one at [EOT], not an average', 'index one position per row')),
    Variant(lambda x, m: x[:, m.sum(-1) - 1], "pairs every caption with every caption's [EOT] position (a (B, B, E) result)",
            ('you need ONE position per caption, paired with its own row', 'advanced indexing pairs index tensors element by element')),
]


def check_pool_eot(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], raise_on_fail: bool = True) -> CheckResult:
    """Check `fn(x, attention_mask) -> (B, E)`, the hidden state at each caption's [EOT]."""
    return run_check("pool_eot", fn, _pool_eot, _POOL_CASES, _POOL_DIAGNOSES,
                     fallback_hint="for a batch of two captions of different lengths, write down by hand which "
                                   "position of each row holds [EOT], then print what your function reads",
                     success="reads the vector at [EOT] on {n} batches, full-length and 1-token captions included",
                     raise_on_fail=raise_on_fail)
