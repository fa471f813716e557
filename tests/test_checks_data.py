"""The lesson-03 checks: a correct answer passes; typical wrong answers, written as a student
would write them, fail with a message that names the mistake."""
from __future__ import annotations

import pytest
import torch

from mmcourse.data import zero_shot_metadata as meta
from mmcourse.classroom.checks import data as checks
from mmcourse.classroom.checks.core import CheckFailed
from mmcourse.models import TextTransformer, eot_positions


def _message(result) -> str:
    assert not result.passed, "the wrong answer passed the check"
    return result.message


# ---------------------------------------------------------------------------- make_caption
def caption_correct(template, label, numeral):
    name = meta.DIGIT_NUMERALS[label] if numeral else meta.DIGIT_CLASSNAMES[label]
    return template.format(name)


def caption_str_label(template, label, numeral):  # also correct: str(label) is the numeral
    return template.format(str(label) if numeral else meta.DIGIT_CLASSNAMES[label])


@pytest.mark.parametrize("fn", [caption_correct, caption_str_label])
def test_make_caption_correct_passes(fn, capsys):
    assert checks.check_make_caption(fn, raise_on_fail=False).passed
    assert "label 0 included" in capsys.readouterr().out


@pytest.mark.parametrize("fn, expected", [
    (lambda t, label, numeral: t.format(meta.DIGIT_CLASSNAMES[label]), "always uses the word"),
    (lambda t, label, numeral: t.format(label), "always uses the numeral"),
    (lambda t, label, numeral: t.format(meta.DIGIT_CLASSNAMES[label] if numeral else meta.DIGIT_NUMERALS[label]),
     "swapped"),
    (lambda t, label, numeral: t.format(meta.DIGIT_NUMERALS[label] if numeral else meta.DIGIT_CLASSNAMES[label - 1]),
     "off by one"),
    (lambda t, label, numeral: t + " " + (str(label) if numeral else meta.DIGIT_CLASSNAMES[label]), "glued"),
])
def test_make_caption_mistakes_are_named(fn, expected):
    assert expected in _message(checks.check_make_caption(fn, raise_on_fail=False))


def test_make_caption_raises_in_notebooks():
    with pytest.raises(CheckFailed, match="swapped"):
        checks.check_make_caption(lambda t, label, numeral: t.format(
            meta.DIGIT_CLASSNAMES[label] if numeral else meta.DIGIT_NUMERALS[label]))


# ---------------------------------------------------------------------------- attention mask
def test_attention_mask_correct_passes():
    assert checks.check_attention_mask(lambda ids, pad: (ids != pad).long(), raise_on_fail=False).passed
    assert checks.check_attention_mask(lambda ids, pad: torch.where(ids == pad, 0, 1), raise_on_fail=False).passed


def test_attention_mask_reference_agrees_with_tokenizer():
    from mmcourse.data.tokenizer import default_tokenizer

    tok = default_tokenizer()
    enc = tok(["a handwritten 7.", "a picture of a small red circle to the left of a cyan cross."])
    torch.testing.assert_close(checks._attention_mask(enc["input_ids"], tok.pad_token_id), enc["attention_mask"])


@pytest.mark.parametrize("fn, expected", [
    (lambda ids, pad: (ids == pad).long(), "inverted"),
    (lambda ids, pad: torch.ones_like(ids), "padding included"),
    (lambda ids, pad: ((ids != pad) & (ids > 3)).long(), "[SOT] and [EOT] are marked 0"),
    (lambda ids, pad: (ids != 0).long(), "instead of pad_token_id"),
    (lambda ids, pad: (ids != pad), "dtype is bool"),
    (lambda ids, pad: (ids != pad).float(), "integer tensor"),
    (lambda ids, pad: (ids > pad).long(), "below the pad id"),
])
def test_attention_mask_mistakes_are_named(fn, expected):
    assert expected in _message(checks.check_attention_mask(fn, raise_on_fail=False))


# ---------------------------------------------------------------------------- pool at EOT
def pool_correct(x, attention_mask):
    return x[torch.arange(x.shape[0]), attention_mask.sum(-1) - 1]


def pool_gather(x, attention_mask):  # also correct, written with gather
    idx = (attention_mask.sum(-1) - 1).view(-1, 1, 1).expand(-1, 1, x.shape[-1])
    return x.gather(1, idx).squeeze(1)


@pytest.mark.parametrize("fn", [pool_correct, pool_gather])
def test_pool_eot_correct_passes(fn):
    assert checks.check_pool_eot(fn, raise_on_fail=False).passed


def test_pool_eot_reference_matches_the_text_encoder():
    torch.manual_seed(0)
    enc = TextTransformer(vocab_size=20, context_length=7, width=8, layers=1, heads=2).eval()
    ids = torch.randint(5, 20, (3, 7))
    mask = (torch.arange(7)[None] < torch.tensor([[3], [7], [1]])).long()
    hidden = {}
    enc.ln_final.register_forward_hook(lambda m, i, o: hidden.__setitem__("x", o))
    with torch.no_grad():
        out = enc(ids, mask)
    torch.testing.assert_close(checks._pool_eot(hidden["x"], mask), out)
    torch.testing.assert_close(eot_positions(mask), mask.sum(-1) - 1)


@pytest.mark.parametrize("fn, expected", [
    (lambda x, m: x[:, -1], "last position"),
    (lambda x, m: x[:, 0], "first position"),
    (lambda x, m: x[torch.arange(len(x)), m.sum(-1)], "one position too far"),
    (lambda x, m: (x * m[..., None]).sum(1) / m.sum(1, keepdim=True), "mean pooling"),
    (lambda x, m: x.mean(1), "padding included"),
    (lambda x, m: x[:, m.sum(-1) - 1], "(B, B, E)"),
])
def test_pool_eot_mistakes_are_named(fn, expected):
    assert expected in _message(checks.check_pool_eot(fn, raise_on_fail=False))


def test_checks_are_importable_from_the_package():
    from mmcourse.classroom.checks import check_attention_mask, check_make_caption, check_pool_eot

    assert check_pool_eot is checks.check_pool_eot
    assert check_make_caption is checks.check_make_caption and check_attention_mask is checks.check_attention_mask
