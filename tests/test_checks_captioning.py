"""Tests for mmcourse.classroom.checks.captioning: the right answers pass, typical wrong answers are named."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import fails_with
from mmcourse.classroom.checks.captioning import (METRIC_CHOICES, _beam_variant, _bp, _closest, _greedy_variant,
                                                  _loss_variant, _mask_variant, check_beam_step,
                                                  check_brevity_penalty, check_caption_loss, check_decoder_mask,
                                                  check_greedy_decode, check_metric_choice,
                                                  reference_brevity_penalty, reference_decoder_mask, toy_step)


# -- exercise 1: the mask ------------------------------------------------------------------------

def good_mask(attention_mask, prefix_length):
    B, L = attention_mask.shape
    n = prefix_length + L
    full = torch.cat([torch.ones(B, prefix_length, dtype=torch.long), attention_mask], 1).bool()  # (B, n)
    causal = torch.ones(n, n).tril().bool()
    return (causal[None] & full[:, None, :])[:, None]


def test_decoder_mask_right_answers_pass(capsys):
    assert check_decoder_mask(good_mask).passed
    assert check_decoder_mask(reference_decoder_mask).passed
    assert "causal" in capsys.readouterr().out


def test_reference_mask_is_what_the_captioner_uses():
    from mmcourse.models import text_attention_mask
    m = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(reference_decoder_mask(m, 2), text_attention_mask(torch.tensor([[1, 1, 1, 1, 0]]), True))


@pytest.mark.parametrize("wrong, fragment", [
    (_mask_variant(causal="none"), "no causal mask"),
    (_mask_variant(causal="upper"), "wrong way round"),
    (_mask_variant(causal="strict"), "itself"),
    (_mask_variant(padding=False), "padding is attended"),
    (_mask_variant(prefix=False), "caption only"),
])
def test_decoder_mask_wrong_answers_are_named(wrong, fragment):
    fails_with(check_decoder_mask, wrong, fragment)


# -- exercise 2: the loss ------------------------------------------------------------------------

def good_loss(logits, input_ids, attention_mask, prefix_length):
    k, L = prefix_length, input_ids.shape[1]
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)  # (B, L-1) tokens after [SOT]
    preds = logits[:, k : k + L - 1]  # (B, L-1, V): the logits at position k + t - 1 predict token t
    return F.cross_entropy(preds.reshape(-1, preds.shape[-1]), targets.reshape(-1), ignore_index=-100)


def test_caption_loss_right_answers_pass():
    assert check_caption_loss(good_loss).passed


def test_caption_loss_reference_is_the_library_loss():
    from mmcourse.models import caption_labels
    from mmcourse.classroom.checks.captioning import _loss_cases, reference_caption_loss
    logits, ids, mask, k = _loss_cases()[1].args
    labels = caption_labels(ids, mask, k)
    naive = torch.stack([F.cross_entropy(logits[b, i - 1][None], labels[b, i][None])
                         for b in range(len(ids)) for i in range(1, labels.shape[1]) if labels[b, i] != -100]).mean()
    torch.testing.assert_close(reference_caption_loss(logits, ids, mask, k), naive)


@pytest.mark.parametrize("wrong, fragment", [
    (_loss_variant(shift="none"), "off by one"),
    (_loss_variant(shift="prefix"), "prefix positions"),
    (_loss_variant(ignore="id0"), "ignore_index=0"),
    (_loss_variant(ignore="none"), "padding is in the loss"),
    (_loss_variant(sot=True), "[SOT] is scored"),
])
def test_caption_loss_wrong_answers_are_named(wrong, fragment):
    fails_with(check_caption_loss, wrong, fragment)


# -- exercise 3: greedy --------------------------------------------------------------------------

def good_greedy(step, context, sot_token_id, eot_token_id, pad_token_id, max_new_tokens):
    seqs = torch.full((context.shape[0], 1), sot_token_id)
    done = torch.zeros(context.shape[0], dtype=torch.bool)
    for _ in range(max_new_tokens):
        nxt = step(context, seqs).argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
        seqs = torch.cat([seqs, nxt[:, None]], 1)
        done |= nxt == eot_token_id
    return seqs


def test_greedy_right_answer_passes_and_cases_need_stopping():
    assert check_greedy_decode(good_greedy).passed
    out = good_greedy(toy_step(), torch.arange(6)[:, None], 2, 3, 0, 9)
    stopped = [(row == 3).any() and row[-1] == 0 for row in out]
    assert any(stopped) and not all((row == 3).any() for row in out)  # some end early, some run to the limit


@pytest.mark.parametrize("wrong, fragment", [
    (_greedy_variant(stop=False), "after its [EOT]"),
    (_greedy_variant(last_only=True), "only the last token"),
    (lambda step, context, **ids: good_greedy(step, context, **ids)[:, 1:], "[SOT] column is missing"),
])
def test_greedy_wrong_answers_are_named(wrong, fragment):
    fails_with(check_greedy_decode, wrong, fragment)


# -- exercise 4: beam step -----------------------------------------------------------------------

def good_beam_step(scores, lengths, finished, log_probs, beam_width, pad_token_id=0, length_penalty=1.0):
    B, K, V = log_probs.shape
    cand = log_probs.clone()
    cand[finished] = float("-inf")
    cand[..., pad_token_id][finished] = 0.0
    total = scores[..., None] + cand
    new_len = lengths + (~finished).long()
    rank = (total / new_len[..., None].double() ** length_penalty).reshape(B, K * V)
    idx = rank.topk(beam_width, dim=1).indices
    return idx // V, idx % V, total.reshape(B, K * V).gather(1, idx)


def test_beam_step_right_answers_pass():
    assert check_beam_step(good_beam_step).passed


@pytest.mark.parametrize("kw, fragment", [
    ({"normalise": False}, "length normalisation forgotten"),
    ({"old_length": True}, "old length"),
    ({"per_beam": True}, "per beam"),
    ({"extend_finished": True}, "finished beam was extended"),
    ({"swap": True}, "mixed up"),
])
def test_beam_step_wrong_answers_are_named(kw, fragment):
    fails_with(check_beam_step, _beam_variant(**kw), fragment)


# -- exercise 5: brevity penalty -----------------------------------------------------------------

def good_bp(hyp_lengths, ref_lengths):
    c = sum(hyp_lengths)
    r = sum(min(refs, key=lambda x: (abs(x - h), x)) for h, refs in zip(hyp_lengths, ref_lengths))
    return 1.0 if c > r else math.exp(1 - r / c)


def test_brevity_penalty_right_answer_passes_and_reference_is_sacrebleu():
    assert check_brevity_penalty(good_bp).passed
    assert reference_brevity_penalty([5, 7, 3], [[9, 6], [8, 12], [4, 1, 7]]) == pytest.approx(math.exp(1 - 18 / 15))


@pytest.mark.parametrize("wrong, fragment", [
    (_bp(lambda h, refs: min(refs)), "shortest reference"),
    (_bp(lambda h, refs: sum(refs) / len(refs)), "mean reference length"),
    (_bp(_closest, per_sentence=True), "per caption"),
    (_bp(_closest, formula="always"), "penalty is 1 when c > r"),
    (_bp(_closest, formula="inverted"), "upside down"),
])
def test_brevity_penalty_wrong_answers_are_named(wrong, fragment):
    fails_with(check_brevity_penalty, wrong, fragment)


# -- exercise 6: the choice ----------------------------------------------------------------------

def test_metric_choice():
    assert check_metric_choice("c").passed and check_metric_choice(" C ").passed
    for letter in "abd":
        assert not check_metric_choice(letter, raise_on_fail=False).passed
    fails_with(check_metric_choice, "a", "bigrams")
    fails_with(check_metric_choice, "e", "one letter")
    assert set(METRIC_CHOICES) == set("abcd")


def test_untouched_blanks_raise_the_students_not_implemented_error():
    def blank(*args, **kwargs):
        raise NotImplementedError()
    for check in (check_decoder_mask, check_caption_loss, check_greedy_decode, check_beam_step, check_brevity_penalty):
        with pytest.raises(NotImplementedError):
            check(blank)
