"""Tests for mmcourse.classroom.checks.fusion: right answers pass, typical wrong answers are named."""
import pytest
import torch

from conftest import fails_with
from mmcourse.classroom.checks.fusion import (check_colour_chance, check_gated_fusion, check_hard_negatives,
                                              check_prior_answer, check_question_prior, check_tensor_fusion,
                                              check_xor_answer, reference_gated_fusion,
                                              reference_hard_negative_weights, reference_question_prior,
                                              reference_tensor_fusion)
from mmcourse.objectives import hard_negative_weights, sample_hard_negatives


# -- exercise 1: hard negatives ----------------------------------------------------------------------

def good_sample(sim, same, generator):
    weights = torch.softmax(sim.masked_fill(same, float("-inf")), dim=1)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def test_hard_negatives_right_answers_pass(capsys):
    assert check_hard_negatives(good_sample).passed
    assert check_hard_negatives(lambda s, m, g: sample_hard_negatives(s, m, g)).passed
    assert "never the positive nor a duplicate" in capsys.readouterr().out


def test_reference_weights_equal_the_library():
    from mmcourse.classroom.checks.fusion import hard_negative_case
    sim, same = hard_negative_case()
    torch.testing.assert_close(reference_hard_negative_weights(sim, same).float(), hard_negative_weights(sim, same))


def _draw(weights, generator):
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


@pytest.mark.parametrize("wrong, fragment", [
    (lambda s, m, g: _draw(torch.softmax(s, 1), g), "positive caption was drawn"),
    (lambda s, m, g: _draw(torch.softmax(s.masked_fill(torch.eye(len(s), dtype=torch.bool), float("-inf")), 1), g),
     "equal to the positive"),
    (lambda s, m, g: _draw(torch.softmax(s.masked_fill(m, float("-inf")), 0).masked_fill(m, 0), g), "wrong axis"),
    (lambda s, m, g: torch.multinomial(torch.softmax(s.masked_fill(m, float("-inf")), 1).mean(0).masked_fill(
        m.any(0) & m.all(0), 0), len(s), replacement=True, generator=g), None),
    (lambda s, m, g: s.masked_fill(m, float("-inf")).argmax(1), "argmax"),
    (lambda s, m, g: _draw((~m).float(), g), "uniform"),
    (lambda s, m, g: torch.multinomial(torch.softmax(s.masked_fill(m, float("-inf")), 1).flatten(), len(s),
                                       generator=g), "flattened"),
    (lambda s, m, g: _draw(torch.softmax(s.masked_fill(m, float("-inf")), 1), g).float(), "integers"),
])
def test_hard_negatives_wrong_answers_are_named(wrong, fragment):
    message = fails_with(check_hard_negatives, wrong)
    if fragment:
        assert fragment in message, message


def test_pooled_and_without_replacement_sampling_are_named():
    def pooled(s, m, g):  # one distribution for the batch (allowed for nobody's positive... still pooled)
        w = torch.softmax(s.masked_fill(m, float("-inf")), 1)
        col = torch.multinomial(w.mean(0), len(s), replacement=True, generator=g)
        return col
    message = fails_with(check_hard_negatives, pooled)
    assert "positive" in message or "pooled" in message or "equal to the positive" in message

    def no_replacement(s, m, g):  # a permutation-like draw: rows never share a negative
        w = torch.softmax(s.masked_fill(m, float("-inf")), 1)
        for _ in range(100):
            draw = _draw(w, g)
            if len(set(draw.tolist())) == len(draw):
                return draw
        return draw
    fails_with(check_hard_negatives, no_replacement, "without replacement")


# -- exercise 2: the GMU -------------------------------------------------------------------------------

def good_gmu(x_v, x_t, fusion):
    h_v = torch.tanh(fusion.image_proj(x_v))
    h_t = torch.tanh(fusion.text_proj(x_t))
    z = torch.sigmoid(fusion.gate(torch.cat([x_v, x_t], dim=1)))
    return z * h_v + (1 - z) * h_t


def test_gated_fusion_right_answers_pass():
    assert check_gated_fusion(good_gmu).passed
    assert check_gated_fusion(reference_gated_fusion).passed


@pytest.mark.parametrize("wrong, fragment", [
    (lambda v, t, m: good_gmu(t, v, m) if False else (lambda z, hv, ht: z * ht + (1 - z) * hv)(
        torch.sigmoid(m.gate(torch.cat([v, t], 1))), torch.tanh(m.image_proj(v)), torch.tanh(m.text_proj(t))),
     "wrong modality"),
    (lambda v, t, m: (lambda z: z * m.image_proj(v) + (1 - z) * m.text_proj(t))(torch.sigmoid(m.gate(torch.cat([v, t], 1)))),
     "tanh is missing"),
    (lambda v, t, m: (lambda z: z * torch.tanh(m.image_proj(v)) + (1 - z) * torch.tanh(m.text_proj(t)))(
        m.gate(torch.cat([v, t], 1))), "not squashed"),
    (lambda v, t, m: (lambda z: z * torch.tanh(m.image_proj(v)) + z * torch.tanh(m.text_proj(t)))(
        torch.sigmoid(m.gate(torch.cat([v, t], 1)))), "(1 - z)"),
    (lambda v, t, m: m(v, t), "adds an MLP"),
    (lambda v, t, m: (lambda z: z * torch.tanh(m.image_proj(v)) + (1 - z) * torch.tanh(m.text_proj(t)))(
        torch.softmax(m.gate(torch.cat([v, t], 1)), -1)), "softmax"),
])
def test_gated_fusion_wrong_answers_are_named(wrong, fragment):
    fails_with(check_gated_fusion, wrong, fragment)


# -- exercise 3: the question-only baseline -------------------------------------------------------------

def good_prior(train_q, train_a, test_q):
    from collections import Counter
    by_q = {}
    for q, a in zip(train_q, train_a.tolist()):
        by_q.setdefault(q, Counter())[a] += 1
    overall = Counter(train_a.tolist())
    def best(c):
        top = max(c.values())
        return min(a for a, n in c.items() if n == top)
    return torch.tensor([best(by_q.get(q, overall)) for q in test_q])


def test_question_prior_right_answers_pass():
    assert check_question_prior(good_prior).passed
    assert check_question_prior(reference_question_prior).passed


def first_seen(train_q, train_a, test_q):
    first = {}
    for q, a in zip(train_q, train_a.tolist()):
        first.setdefault(q, a)
    return torch.tensor([first.get(q, int(torch.bincount(train_a).argmax())) for q in test_q])


@pytest.mark.parametrize("wrong, fragment", [
    (lambda q, a, t: torch.full((len(t),), int(torch.bincount(a).argmax())), "most frequent answer overall"),
    (first_seen, "first answer seen"),
    (lambda q, a, t: torch.zeros(len(t), dtype=torch.long), None),
    (lambda q, a, t: torch.zeros(len(t)), "dtype"),
])
def test_question_prior_wrong_answers_are_named(wrong, fragment):
    message = fails_with(check_question_prior, wrong)
    if fragment:
        assert fragment in message, message


def test_value_and_choice_checks():
    assert check_colour_chance(1 / 6).passed and check_colour_chance(0.17).passed
    fails_with(check_colour_chance, 0.25, "counts shapes")
    fails_with(check_colour_chance, 1 / 15, "whole answer vocabulary")
    assert check_prior_answer("b").passed and check_prior_answer(" B ").passed
    fails_with(check_prior_answer, "d", "only the baseline shows")
    assert check_xor_answer("b").passed
    fails_with(check_xor_answer, "a", "x·y")


# -- exercise 4: tensor fusion ------------------------------------------------------------------------

def good_tensor_fusion(x, y):
    x1 = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    y1 = torch.cat([y, torch.ones(len(y), 1)], dim=1)
    return (x1[:, :, None] * y1[:, None, :]).reshape(len(x), -1)


def test_tensor_fusion_right_answers_pass():
    assert check_tensor_fusion(good_tensor_fusion).passed
    assert check_tensor_fusion(reference_tensor_fusion).passed


@pytest.mark.parametrize("wrong, fragment", [
    (lambda x, y: (x[:, :, None] * y[:, None, :]).flatten(1), "appended 1s are missing"),
    (lambda x, y: good_tensor_fusion(y, x), "text-major"),
    (lambda x, y: (torch.cat([torch.ones(len(x), 1), x], 1)[:, :, None]
                   * torch.cat([torch.ones(len(y), 1), y], 1)[:, None, :]).flatten(1), "goes at the end"),
    (lambda x, y: torch.cat([x, y], 1), "wrong shape"),
])
def test_tensor_fusion_wrong_answers_are_named(wrong, fragment):
    fails_with(check_tensor_fusion, wrong, fragment)


def test_untouched_blanks_raise_the_students_not_implemented_error():
    def blank(*args, **kwargs):
        raise NotImplementedError()
    for check in (check_hard_negatives, check_gated_fusion, check_question_prior, check_tensor_fusion):
        with pytest.raises(NotImplementedError):
            check(blank)
        assert not check(blank, raise_on_fail=False).passed
