"""Tests for mmcourse.classroom.checks.scaling: the right answers pass, typical wrong answers are named."""
import pytest
import torch

from conftest import fails_with
from mmcourse.classroom.checks.scaling import (LOGIT_MEMORY_SETTING, _grad_cache, check_grad_cache_step,
                                               check_local_loss_labels, check_logit_memory, grad_cache_outcome,
                                               reference_grad_cache_step, reference_local_loss_labels)
from mmcourse.objectives import local_loss_labels


# -- exercise 1: labels --------------------------------------------------------------------------

def test_labels_right_answers_pass(capsys):
    assert check_local_loss_labels(local_loss_labels).passed
    assert check_local_loss_labels(lambda n, r: torch.arange(n * r, n * (r + 1))).passed
    assert "labels right" in capsys.readouterr().out
    assert reference_local_loss_labels(4, 1).tolist() == [4, 5, 6, 7]


@pytest.mark.parametrize("wrong, fragment", [
    (lambda n, r: torch.arange(n), "must be shifted"),
    (lambda n, r: torch.arange(n) + r, "the rank itself"),
    (lambda n, r: torch.arange(n) + n * (r + 1), "off by one rank"),
    (lambda n, r: torch.arange(n) * (r + 1), "multiplies"),
    (lambda n, r: (torch.arange(n) + n * r).float(), "not integers"),
])
def test_labels_wrong_answers_are_named(wrong, fragment):
    fails_with(check_local_loss_labels, wrong, fragment)


# -- exercise 2: gradient caching ----------------------------------------------------------------

def test_grad_cache_reference_equals_the_inline_version():
    # the library's grad_cache_step and the check's own two-pass version agree exactly
    ref = grad_cache_outcome(reference_grad_cache_step)(0, 4)
    inline = grad_cache_outcome(lambda m, b, c: _grad_cache(m, b, c))(0, 4)
    for a, b in zip(ref, inline):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert ref[2] != 0  # logit_scale gets a gradient


def test_grad_cache_right_answers_pass(capsys):
    assert check_grad_cache_step(reference_grad_cache_step).passed
    assert check_grad_cache_step(lambda m, b, c: _grad_cache(m, b, c)).passed
    assert "logit_scale included" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, fragment", [
    (dict(scale_grad="never"), "logit_scale got no gradient"),
    (dict(scale_grad="every"), "once per chunk"),
    (dict(cached=False), "naive accumulation"),
    (dict(restore_rng=False), "random state was not restored"),
])
def test_grad_cache_wrong_answers_are_named(mistake, fragment):
    fails_with(check_grad_cache_step, lambda m, b, c: _grad_cache(m, b, c, **mistake), fragment)


def test_grad_cache_whole_batch_at_once_fails():
    # right without dropout, but not the chunked computation the exercise asks for
    from mmcourse.training import clip_loss_fn

    def whole(model, batch, chunk_size):
        loss = clip_loss_fn(model, batch)
        loss.backward()
        return loss.detach()

    fails_with(check_grad_cache_step, whole, "grad_cache_step")


def test_grad_cache_blank_raises_not_implemented():
    def blank(model, batch, chunk_size):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError):
        check_grad_cache_step(blank)


# -- exercise 3: memory --------------------------------------------------------------------------

N, W = LOGIT_MEMORY_SETTING["global_batch"], LOGIT_MEMORY_SETTING["world_size"]
n = N // W


def test_memory_right_answer_passes(capsys):
    assert check_logit_memory(4 * N * N, 2 * 4 * n * N).passed
    out = capsys.readouterr().out
    assert "4 GiB per process" in out and "64 MiB with the local loss" in out


@pytest.mark.parametrize("answer, fragment", [
    ((8 * N * N, 8 * n * N), "a view of the same memory"),
    ((4 * N * N, 4 * n * N), "count both"),
    ((4 * N * N, 8 * n * n), "keeps all N columns"),
    ((4 * N * N, 16 * n * N), "4 bytes, not 8"),
    ((4 * n * N, 8 * n * N), "computes all N rows"),
    (("4 GB", 8 * n * N), "expected a number of bytes"),
])
def test_memory_wrong_answers_are_named(answer, fragment):
    fails_with(lambda a: check_logit_memory(*a), answer, fragment)
