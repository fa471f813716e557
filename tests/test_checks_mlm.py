"""The lesson-07 checks: correct answers pass; typical wrong answers, written as a student would
write them, fail with a message that names the mistake."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import fails_with
from mmcourse.classroom.checks import mlm as checks
from mmcourse.data.masking import mask_tokens as library_mask_tokens


# ---------------------------------------------------------------------------- exercise 1: masking
def masking(p_special=True, p_pad=True, labels_minus_100=True, random_from="rest", random_share=0.5,
            labels_from="original", only_mask_labelled=False, rate=None):
    """A student's mask_tokens, with one switch per typical mistake."""
    def fn(input_ids, attention_mask, special_ids, vocab_size, mask_token_id, mlm_probability=0.15):
        p = mlm_probability if rate is None else rate
        prob = torch.full(input_ids.shape, p)
        if p_pad:
            prob[attention_mask == 0] = 0
        if p_special:
            prob[torch.isin(input_ids, torch.tensor(special_ids))] = 0
        chosen = torch.bernoulli(prob).bool()
        masked = input_ids.clone()
        replaced = torch.bernoulli(torch.full(input_ids.shape, 0.8)).bool() & chosen
        if random_from == "all":
            randomised = torch.bernoulli(torch.full(input_ids.shape, 0.1)).bool() & ~replaced
        elif random_from == "chosen":
            randomised = torch.bernoulli(torch.full(input_ids.shape, random_share)).bool() & chosen
        else:
            randomised = torch.bernoulli(torch.full(input_ids.shape, random_share)).bool() & chosen & ~replaced
        original = input_ids.clone()
        masked[replaced] = mask_token_id
        masked[randomised] = torch.randint(vocab_size, input_ids.shape)[randomised]
        labels = (original if labels_from == "original" else masked).clone()
        target = replaced if only_mask_labelled else chosen
        if labels_minus_100:
            labels[~target] = -100
        return masked, labels
    return fn


def library(input_ids, attention_mask, special_ids, vocab_size, mask_token_id, mlm_probability=0.15):
    return library_mask_tokens(input_ids, attention_mask, special_ids, vocab_size, mask_token_id, mlm_probability)


@pytest.mark.parametrize("fn", [masking(), library])
def test_mask_tokens_correct_passes(fn):
    assert checks.check_mask_tokens(fn, raise_on_fail=False).passed


@pytest.mark.parametrize("fn, expected", [
    (masking(p_pad=False, p_special=False), "padding positions were chosen"),
    (masking(p_special=False), "special tokens"),
    (masking(labels_minus_100=False), "labels are not -100 off the chosen positions"),
    (masking(random_from="all"), "UNCHOSEN positions (padding and special tokens included) were changed"),
    (masking(random_from="chosen", random_share=0.1), "[MASK] positions were overwritten"),
    (masking(random_share=0.1), "HALF must be random"),
    (masking(rate=0.3), "far from 15%"),
    (masking(labels_from="masked"), "corrupted ids"),
    (masking(only_mask_labelled=True), "only the [MASK] positions are labelled"),
])
def test_mask_tokens_mistakes_are_named(fn, expected):
    fails_with(checks.check_mask_tokens, fn, expected)


def test_mask_tokens_in_place_and_wrong_types_are_named():
    def in_place(input_ids, attention_mask, special_ids, vocab_size, mask_token_id, mlm_probability=0.15):
        masked, labels = library(input_ids.clone(), attention_mask, special_ids, vocab_size, mask_token_id)
        input_ids.copy_(masked)
        return masked, labels

    fails_with(checks.check_mask_tokens, in_place, "in place")
    fails_with(checks.check_mask_tokens, lambda *a, **k: library(*a, **k)[0], "pair of tensors")
    fails_with(checks.check_mask_tokens, lambda *a, **k: tuple(t.float() for t in library(*a, **k)), "integer")
    with pytest.raises(NotImplementedError):
        checks.check_mask_tokens(lambda *a, **k: (_ for _ in ()).throw(NotImplementedError()))


# ---------------------------------------------------------------------------- exercise 2: the loss
def loss_correct(logits, labels):
    if (labels != -100).sum() == 0:
        return logits.sum() * 0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def loss_masked_select(logits, labels):  # also correct, written by selecting the targets
    t = labels != -100
    if not t.any():
        return torch.zeros((), dtype=logits.dtype)
    return -logits[t].log_softmax(-1).gather(-1, labels[t].unsqueeze(-1)).mean()


@pytest.mark.parametrize("fn", [loss_correct, loss_masked_select])
def test_mlm_loss_correct_passes(fn):
    assert checks.check_mlm_loss(fn, raise_on_fail=False).passed


@pytest.mark.parametrize("fn, expected", [
    (checks._ce_all, "counted as targets"),
    (checks._ce_over_all_positions, "divided by ALL positions"),
    (checks._ce_sum, "summed"),
    (checks._ce_wrong_dim, "over the positions"),
    (checks._ce_plain, "NaN"),
    (lambda logits, labels: F.cross_entropy(logits, labels), "your code raised"),
])
def test_mlm_loss_mistakes_are_named(fn, expected):
    fails_with(checks.check_mlm_loss, fn, expected)


# ---------------------------------------------------------------------------- exercise 3: accuracy
def acc_correct(logits, labels):
    t = labels != -100
    return (logits.argmax(-1)[t] == labels[t]).float().mean().item()


@pytest.mark.parametrize("fn", [acc_correct, lambda lo, la: (lo.argmax(-1)[la != -100] == la[la != -100]).float().mean()])
def test_masked_accuracy_correct_passes(fn):
    assert checks.check_masked_accuracy(fn, raise_on_fail=False).passed


@pytest.mark.parametrize("fn, expected", [
    (lambda lo, la: (lo.argmax(-1) == la).float().mean().item(), "ALL positions"),
    (lambda lo, la: (lo.argmax(-1) == la.clamp(min=0)).float().mean().item(), "counted (as token 0)"),
    (lambda lo, la: int((lo.argmax(-1)[la != -100] == la[la != -100]).sum()), "NUMBER"),
    (lambda lo, la: (lo.argmax(1) == la).float().mean().item(), "your code raised RuntimeError"),  # argmax over L
])
def test_masked_accuracy_mistakes_are_named(fn, expected):
    fails_with(checks.check_masked_accuracy, fn, expected)


# ---------------------------------------------------------------------------- exercise 4: PLL
def pll_correct(model, input_ids, attention_mask, special_ids, image=None):
    from mmcourse.data.tokenizer import default_tokenizer

    mask_id = default_tokenizer().mask_token_id
    score = torch.zeros(len(input_ids), dtype=torch.float64)
    with torch.no_grad():
        for t in range(input_ids.shape[1]):
            ids = input_ids.clone()
            ids[:, t] = mask_id
            logp = model(ids, attention_mask, image=image).logits[:, t].log_softmax(-1)
            keep = (attention_mask[:, t] == 1) & ~torch.isin(input_ids[:, t], torch.tensor(special_ids))
            score += torch.where(keep, logp.gather(1, input_ids[:, t:t + 1]).squeeze(1).double(), 0.0)
    return score


def test_pll_reference_passes_and_the_cases_tell_the_variants_apart():
    assert checks.check_pseudo_log_likelihood(pll_correct, raise_on_fail=False).passed
    assert checks.check_pseudo_log_likelihood(checks.reference_pseudo_log_likelihood, raise_on_fail=False).passed


@pytest.mark.parametrize("kwargs, expected", [
    ({"all_at_once": True}, "ONE token at a time"),
    ({"include_special": True}, "[SOT] and [EOT]"),
    ({"include_pad": True, "include_special": True}, "padding positions"),
    ({"prob": True}, "LOGARITHMS"),
    ({"mean": True}, "the SUM"),
])
def test_pll_mistakes_are_named(kwargs, expected):
    wrong = _pll_variant(**kwargs)
    fails_with(checks.check_pseudo_log_likelihood, wrong, expected)


def _pll_variant(**kwargs):
    """The check's own variant builder is internal; rebuild the same mistakes here as a student would."""
    from mmcourse.data.tokenizer import default_tokenizer

    mask_id = default_tokenizer().mask_token_id

    def fn(model, input_ids, attention_mask, special_ids, image=None):
        can = torch.ones_like(attention_mask, dtype=torch.bool) if kwargs.get("include_pad") else attention_mask.bool()
        if not kwargs.get("include_special"):
            can &= ~torch.isin(input_ids, torch.tensor(special_ids))
        with torch.no_grad():
            if kwargs.get("all_at_once"):
                logp = model(input_ids.masked_fill(can, mask_id), attention_mask, image=image).logits.log_softmax(-1)
                per = logp.gather(-1, input_ids.unsqueeze(-1)).squeeze(-1).double()
            else:
                per = torch.zeros(input_ids.shape, dtype=torch.float64)
                for t in range(input_ids.shape[1]):
                    ids = input_ids.clone()
                    ids[:, t] = mask_id
                    out = model(ids, attention_mask, image=image).logits[:, t]
                    vals = out.softmax(-1) if kwargs.get("prob") else out.log_softmax(-1)
                    per[:, t] = vals.gather(1, input_ids[:, t:t + 1]).squeeze(1).double()
        per = torch.where(can, per, 0.0)
        return per.sum(1) / can.sum(1) if kwargs.get("mean") else per.sum(1)
    return fn


# ---------------------------------------------------------------------------- questions
def test_questions():
    assert checks.check_mask_fraction(0.12, raise_on_fail=False).passed
    assert checks.check_mask_fraction(0.15 * 0.8, raise_on_fail=False).passed
    fails_with(checks.check_mask_fraction, 0.15, "chosen as targets")
    fails_with(checks.check_mask_fraction, 0.8, "CHOSEN positions")
    fails_with(checks.check_mask_fraction, 0.135, "random replacements")
    assert checks.check_text_only_answer("b", raise_on_fail=False).passed
    assert checks.check_text_only_answer(" (B) ", raise_on_fail=False).passed
    fails_with(checks.check_text_only_answer, "a", "template words")
    fails_with(checks.check_text_only_answer, "c", "no image tower")
    fails_with(checks.check_text_only_answer, "d", "no information")


def test_checks_are_importable_from_the_package():
    from mmcourse.classroom.checks import check_mask_tokens, check_mlm_loss

    assert check_mask_tokens is checks.check_mask_tokens and check_mlm_loss is checks.check_mlm_loss
