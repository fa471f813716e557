"""Each check in mmcourse.classroom.checks.infonce: typical wrong answers, written as a student would,
get a message naming the mistake; correct answers (several styles) pass."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import fails_with
from mmcourse.classroom.checks import CheckFailed
from mmcourse.classroom.checks.infonce import (check_clip_loss, check_gradient_weights, check_info_nce,
                                               check_info_nce_grad, check_info_nce_naive,
                                               check_temperature_predictions)


# ----------------------------------------------------------------------------- students' info_nce

def naive_ok(z, z_pos, temperature=0.07):
    z, z_pos = z / z.norm(dim=1, keepdim=True), z_pos / z_pos.norm(dim=1, keepdim=True)
    sim = z @ z_pos.T / temperature
    e = torch.exp(sim)
    return -torch.log(torch.diag(e) / e.sum(dim=1)).mean()


def loop_ok(z, z_pos, temperature=0.07):
    total = 0.0
    for i in range(len(z)):
        sims = torch.stack([F.cosine_similarity(z[i], z_pos[j], dim=0) for j in range(len(z))]) / temperature
        total = total - (sims[i] - torch.logsumexp(sims, dim=0))
    return total / len(z)


def stable_ok(z, z_pos, temperature=0.07):
    logits = F.normalize(z, dim=-1) @ F.normalize(z_pos, dim=-1).T / temperature
    return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()


def multiplied(z, z_pos, temperature=0.07):
    logits = F.normalize(z, dim=-1) @ F.normalize(z_pos, dim=-1).T * temperature
    return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()


def twice(z, z_pos, temperature=0.07):
    sim = F.normalize(z, dim=-1) @ F.normalize(z_pos, dim=-1).T / temperature
    logits = sim / temperature
    return F.cross_entropy(logits, torch.arange(len(z)))


def unnormalised(z, z_pos, temperature=0.07):
    return F.cross_entropy(z @ z_pos.T / temperature, torch.arange(len(z)))


def summed(z, z_pos, temperature=0.07):
    logits = F.normalize(z, dim=-1) @ F.normalize(z_pos, dim=-1).T / temperature
    return (torch.logsumexp(logits, dim=1) - logits.diagonal()).sum()


def per_row(z, z_pos, temperature=0.07):
    logits = F.normalize(z, dim=-1) @ F.normalize(z_pos, dim=-1).T / temperature
    return torch.logsumexp(logits, dim=1) - logits.diagonal()


def zero_labels(z, z_pos, temperature=0.07):
    logits = F.normalize(z, dim=-1) @ F.normalize(z_pos, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.zeros(len(z), dtype=torch.long))


def wrong_axis(z, z_pos, temperature=0.07):
    logits = F.normalize(z, dim=-1) @ F.normalize(z_pos, dim=-1).T / temperature
    return -(logits.diagonal() - torch.logsumexp(logits, dim=0)).mean()


def not_done(z, z_pos, temperature=0.07):
    raise NotImplementedError()


@pytest.mark.parametrize("good", [naive_ok, loop_ok, stable_ok])
def test_info_nce_naive_accepts_correct(good):
    assert check_info_nce_naive(good).passed


@pytest.mark.parametrize("bad,fragment", [
    (multiplied, "temperature multiplied instead of divided"),
    (twice, "you divided by τ twice"),
    (unnormalised, "not normalised (the loss changes when you scale the inputs)"),
    (summed, "returns a sum, not a mean"),
    (per_row, "wrong shape returned"),
    (zero_labels, "labels off the diagonal"),
    (wrong_axis, "softmax over the wrong axis"),
])
def test_info_nce_naive_names_mistake(bad, fragment):
    fails_with(check_info_nce_naive, bad, fragment)


def test_untouched_blank_raises_not_implemented():
    with pytest.raises(NotImplementedError):
        check_info_nce_naive(not_done)
    assert "not implemented yet" in check_info_nce(not_done, raise_on_fail=False).message


@pytest.mark.parametrize("good", [loop_ok, stable_ok])
def test_info_nce_stable_accepts_correct(good):
    assert check_info_nce(good).passed


@pytest.mark.parametrize("bad,fragment", [
    (naive_ok, "not stable at τ=0.01: exp(sim/τ) overflows; use logsumexp"),
    (multiplied, "temperature multiplied instead of divided"),
    (twice, "you divided by τ twice"),
    (unnormalised, "not normalised"),
    (summed, "returns a sum, not a mean"),
])
def test_info_nce_stable_names_mistake(bad, fragment):
    text = fails_with(check_info_nce, bad, fragment)
    assert "Hint:" in text


def test_message_names_the_case():
    text = fails_with(check_info_nce, naive_ok, "τ=0.01")
    assert "logsumexp" in text


# ----------------------------------------------------------------------------- students' clip_loss

def clip_ok(image_emb, text_emb, logit_scale):
    logits = logit_scale * image_emb @ text_emb.T
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def clip_via_info_nce(image_emb, text_emb, logit_scale):
    return (stable_ok(image_emb, text_emb, 1 / logit_scale) + stable_ok(text_emb, image_emb, 1 / logit_scale)) / 2


def clip_one_way(image_emb, text_emb, logit_scale):
    return F.cross_entropy(logit_scale * image_emb @ text_emb.T, torch.arange(len(image_emb)))


def clip_added(image_emb, text_emb, logit_scale):
    logits = logit_scale * image_emb @ text_emb.T
    labels = torch.arange(len(logits))
    return F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)


def clip_divided(image_emb, text_emb, logit_scale):
    return clip_ok(image_emb, text_emb, 1 / logit_scale)


def clip_exp_again(image_emb, text_emb, logit_scale):
    return clip_ok(image_emb, text_emb, math.exp(logit_scale))


def clip_asymmetric_mix(image_emb, text_emb, logit_scale):
    # averages image→text with a *different* wrong second term: not symmetric
    logits = logit_scale * image_emb @ text_emb.T
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits, labels.flip(0))) / 2


@pytest.mark.parametrize("good", [clip_ok, clip_via_info_nce])
def test_clip_loss_accepts_correct(good):
    assert check_clip_loss(good).passed


@pytest.mark.parametrize("bad,fragment", [
    (clip_one_way, "your loss is not symmetric"),
    (clip_added, "you added the two directions instead of averaging"),
    (clip_divided, "you divided by logit_scale"),
    (clip_exp_again, "you exponentiated logit_scale again"),
    (clip_asymmetric_mix, "your loss is not symmetric"),
])
def test_clip_loss_names_mistake(bad, fragment):
    fails_with(check_clip_loss, bad, fragment)


# ----------------------------------------------------------------------------- students' gradient

def grad_ok(sim, temperature):
    n = len(sim)
    return (torch.softmax(sim / temperature, dim=1) - torch.eye(n, dtype=sim.dtype)) / (n * temperature)


def grad_autograd(sim, temperature):
    s = sim.clone().requires_grad_(True)
    F.cross_entropy(s / temperature, torch.arange(len(s))).backward()
    return s.grad


@pytest.mark.parametrize("good", [grad_ok, grad_autograd])
def test_grad_accepts_correct(good):
    assert check_info_nce_grad(good).passed


@pytest.mark.parametrize("bad,fragment", [
    (lambda s, t: -grad_ok(s, t), "sign flipped"),
    (lambda s, t: grad_ok(s, t) * t, "the 1/τ from the chain rule is missing"),
    (lambda s, t: grad_ok(s, t) * len(s), "gradient of a sum, not a mean"),
    (lambda s, t: torch.softmax(s / t, dim=1) / (len(s) * t), "the positive's -1 is missing"),
    (lambda s, t: (torch.softmax(s / t, dim=0) - torch.eye(len(s), dtype=s.dtype)) / (len(s) * t), "wrong axis"),
    (lambda s, t: grad_ok(s, t)[0], "wrong shape"),
])
def test_grad_names_mistake(bad, fragment):
    fails_with(check_info_nce_grad, bad, fragment)


# ----------------------------------------------------------------------------- assignment 02

def weights_ok(similarities, temperature, positive):
    p = torch.softmax(similarities / temperature, dim=0)
    p[positive] -= 1
    return p / temperature


def weights_autograd(similarities, temperature, positive):  # as a student verifying by machine would
    x = similarities.clone().requires_grad_(True)
    F.cross_entropy((x / temperature)[None], torch.tensor([positive])).backward()
    return x.grad


@pytest.mark.parametrize("good", [weights_ok, weights_autograd])
def test_gradient_weights_accepts_correct(good):
    assert check_gradient_weights(good).passed


@pytest.mark.parametrize("bad,fragment", [
    (lambda s, t, k: -weights_ok(s, t, k), "sign flipped"),
    (lambda s, t, k: weights_ok(s, t, k) * t, "the 1/τ from the chain rule is missing"),
    (lambda s, t, k: weights_ok(s, t, k) / t, "you divided by τ twice"),
    (lambda s, t, k: torch.softmax(s / t, dim=0) / t, "the positive's -1 is missing"),
    (lambda s, t, k: weights_ok(s, t, k)[:-1], "wrong shape"),
    (lambda s, t, k: weights_ok(s, t, 0), "always goes to candidate 0"),
    (lambda s, t, k: weights_ok(s, t, int(s.argmax())), "MOST SIMILAR"),
])
def test_gradient_weights_names_mistake(bad, fragment):
    fails_with(check_gradient_weights, bad, fragment)


def test_temperature_predictions():
    from mmcourse.classroom.checks.infonce import PREDICTION_SIMILARITIES, PREDICTION_TAU
    # the share by hand: e^(s/τ) over the four negatives of (0.6 | 0.5, 0.2, -0.1, -0.5) at τ = 0.1
    w = [math.exp(x / PREDICTION_TAU) for x in PREDICTION_SIMILARITIES[1:]]
    assert w[0] / sum(w) == pytest.approx(0.9503, abs=1e-4)
    assert check_temperature_predictions(math.log(5), 0.95).passed
    assert check_temperature_predictions(1.61, 0.9503).passed
    for args, fragment in [((0.0, 0.95), "limit τ → 0"), ((1 / 5, 0.95), "probability of the positive"),
                           ((math.log(4), 0.95), "log 5, not log 4"), ((math.log(5), 1 / 4), "share at large τ"),
                           ((3.0, 0.95), "is not the limit"), ((math.log(5), 0.5), "is not the share"),
                           ((math.log(5), 95.03), "looks like a percentage"),
                           ((math.log(5), 0.2652), "probability among all candidates"),
                           ((math.log(5), 1.0), "not yet one-hot")]:
        with pytest.raises(CheckFailed, match=None) as err:
            check_temperature_predictions(*args)
        assert fragment in str(err.value), (args, str(err.value))


def test_not_a_function():
    fails_with(check_info_nce, 3.0, "expected a function")


def test_two_mistakes_at_once_still_named():
    # the student's loop from the lesson with τ multiplied AND a sum: no single known variant matches,
    # the property tests still name one mistake; fixing it reveals the other
    def multiplied_and_summed(z, z_pos, temperature=0.07):
        z, z_pos = z / z.norm(dim=1, keepdim=True), z_pos / z_pos.norm(dim=1, keepdim=True)
        e = torch.exp(z @ z_pos.T * temperature)
        return -torch.log(e.diagonal() / e.sum(dim=1)).sum()

    def multiplied_and_unnormalised(z, z_pos, temperature=0.07):
        e = torch.exp(z @ z_pos.T * temperature)
        return -torch.log(e.diagonal() / e.sum(dim=1)).mean()

    fails_with(check_info_nce_naive, multiplied_and_summed, "returns a sum, not a mean")
    fails_with(check_info_nce_naive, multiplied_and_unnormalised, "temperature multiplied instead of divided")

    def clip_one_way_summed(image_emb, text_emb, logit_scale):
        return F.cross_entropy(logit_scale * image_emb @ text_emb.T, torch.arange(len(image_emb)), reduction="sum")

    fails_with(check_clip_loss, clip_one_way_summed, "returns a sum, not a mean")
