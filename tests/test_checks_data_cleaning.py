"""Assignment 12's checks: a correct answer passes; each typical wrong answer, written as a student would
write it, fails with the message that names its mistake."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmcourse.classroom.checks import data_cleaning as checks


def _message(result) -> str:
    assert not result.passed, "the wrong answer passed the check"
    return result.message


# ------------------------------------------------------------------ 12.1 pair scores
def scores_right(image_emb, text_emb):
    return F.cosine_similarity(image_emb, text_emb, dim=-1)


def scores_matrix(image_emb, text_emb):
    return F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T


def scores_raw(image_emb, text_emb):
    return (image_emb * text_emb).sum(-1)


def scores_dim0(image_emb, text_emb):
    return (F.normalize(image_emb, dim=0) * F.normalize(text_emb, dim=0)).sum(1)


def scores_distance(image_emb, text_emb):
    return 1 - F.cosine_similarity(image_emb, text_emb, dim=-1)


def test_pair_scores_right():
    assert checks.check_pair_scores(scores_right, raise_on_fail=False).passed


@pytest.mark.parametrize("wrong, words", [(scores_matrix, "whole (N, N)"), (scores_raw, "without normalising"),
                                          (scores_dim0, "wrong dimension"), (scores_distance, "DISTANCE")])
def test_pair_scores_mistakes_are_named(wrong, words):
    assert words in _message(checks.check_pair_scores(wrong, raise_on_fail=False))


# ------------------------------------------------------------------ 12.2 threshold
def threshold_right(scores, is_noisy, max_noise):
    best = math.inf
    for t in scores.unique():
        kept = scores >= t
        if is_noisy[kept].float().mean().item() <= max_noise + 1e-6:
            best = min(best, float(t))
    return best


def threshold_recall(scores, is_noisy, max_noise):
    best = math.inf
    for t in scores.unique():
        kept = scores >= t
        if (is_noisy & kept).sum().item() / max(is_noisy.sum().item(), 1) <= max_noise + 1e-6:
            best = min(best, float(t))
    return best


def threshold_highest(scores, is_noisy, max_noise):
    best = -math.inf
    for t in scores.unique():
        if is_noisy[scores >= t].float().mean().item() <= max_noise + 1e-6:
            best = max(best, float(t))
    return best


def threshold_strict(scores, is_noisy, max_noise):
    best = math.inf
    for t in scores.unique():
        if is_noisy[scores >= t].float().mean().item() <= max_noise:
            best = min(best, float(t))
    return best


def threshold_ties(scores, is_noisy, max_noise):
    order = torch.argsort(scores, descending=True, stable=True)
    best = math.inf
    for k in range(1, len(scores) + 1):  # cuts after every position, ties split
        if is_noisy[order[:k]].float().mean().item() <= max_noise + 1e-6:
            best = float(scores[order[k - 1]])
    return best


def test_threshold_right():
    assert checks.check_choose_threshold(threshold_right, raise_on_fail=False).passed


@pytest.mark.parametrize("wrong, words", [(threshold_recall, "AMONG THE KEPT"), (threshold_highest, "HIGHEST"),
                                          (threshold_strict, "without slack"), (threshold_ties, "tied scores")])
def test_threshold_mistakes_are_named(wrong, words):
    assert words in _message(checks.check_choose_threshold(wrong, raise_on_fail=False))


# ------------------------------------------------------------------ 12.3 deduplicate
def dedup_right(embeddings, radius):
    from scipy.sparse.csgraph import connected_components
    from sklearn.neighbors import NearestNeighbors

    x = embeddings.numpy()
    graph = NearestNeighbors(radius=radius, metric="cosine").fit(x).radius_neighbors_graph(x)
    _, group = connected_components(graph, directed=False)
    keep = torch.zeros(len(group), dtype=torch.bool)
    for g in set(group.tolist()):
        keep[int((torch.from_numpy(group) == g).nonzero()[0])] = True
    return keep


def dedup_drop_all(embeddings, radius):
    u = F.normalize(embeddings, dim=-1)
    linked = (1 - u @ u.T) <= radius + 1e-9
    return linked.sum(1) == 1


def dedup_direct(embeddings, radius):
    u = F.normalize(embeddings, dim=-1)
    keep = []
    for i in range(len(u)):
        keep.append(not any((1 - u[i] @ u[j]) <= radius + 1e-9 for j in range(i)))
    return torch.tensor(keep)


def dedup_last(embeddings, radius):
    return dedup_right(embeddings.flip(0), radius).flip(0)


def dedup_euclidean(embeddings, radius):
    from scipy.sparse.csgraph import connected_components
    from sklearn.neighbors import NearestNeighbors

    x = embeddings.numpy()
    graph = NearestNeighbors(radius=radius).fit(x).radius_neighbors_graph(x)
    _, group = connected_components(graph, directed=False)
    first = {}
    for i, g in enumerate(group.tolist()):
        first.setdefault(g, i)
    return torch.tensor([first[g] == i for i, g in enumerate(group.tolist())])


def test_dedup_right():
    assert checks.check_deduplicate(dedup_right, raise_on_fail=False).passed


@pytest.mark.parametrize("wrong, words", [(dedup_drop_all, "every member"), (dedup_direct, "direct links"),
                                          (dedup_last, "LAST"), (dedup_euclidean, "Euclidean")])
def test_dedup_mistakes_are_named(wrong, words):
    assert words in _message(checks.check_deduplicate(wrong, raise_on_fail=False))


# ------------------------------------------------------------------ 12.4 transfer
def best_right(fractions, accuracies, seconds, tolerance=0.02):
    top = max(accuracies)
    ok = [i for i, a in enumerate(accuracies) if a >= top - tolerance]
    return fractions[max(ok, key=lambda i: accuracies[i] / seconds[i])]


def best_accuracy_only(fractions, accuracies, seconds, tolerance=0.02):
    return fractions[accuracies.index(max(accuracies))]


def best_ratio_everywhere(fractions, accuracies, seconds, tolerance=0.02):
    ratios = [a / s for a, s in zip(accuracies, seconds)]
    return fractions[ratios.index(max(ratios))]


def best_relative(fractions, accuracies, seconds, tolerance=0.02):
    top = max(accuracies)
    ok = [i for i, a in enumerate(accuracies) if a >= top * tolerance]
    return fractions[max(ok, key=lambda i: accuracies[i] / seconds[i])]


def best_fastest(fractions, accuracies, seconds, tolerance=0.02):
    top = max(accuracies)
    ok = [i for i, a in enumerate(accuracies) if a >= top - tolerance]
    return fractions[min(ok, key=lambda i: seconds[i])]


def test_best_fraction_right():
    assert checks.check_best_fraction(best_right, raise_on_fail=False).passed


@pytest.mark.parametrize("wrong, words", [(best_accuracy_only, "ignored the training time"),
                                          (best_ratio_everywhere, "over ALL fractions"),
                                          (best_relative, "POINTS"), (best_fastest, "fastest")])
def test_best_fraction_mistakes_are_named(wrong, words):
    assert words in _message(checks.check_best_fraction(wrong, raise_on_fail=False))


def test_an_untouched_blank_reraises_not_implemented():
    def blank(*args):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError):
        checks.check_pair_scores(blank)


def test_calling_the_library_answers_is_reported():
    from mmcourse.evaluation.data_filtering import choose_threshold, near_duplicates

    result = checks.check_deduplicate(lambda x, r: near_duplicates(x, r).keep, raise_on_fail=False)
    assert not result.passed and "near_duplicates" in result.message
    result = checks.check_choose_threshold(lambda s, n, m: choose_threshold(s, n, m), raise_on_fail=False)
    assert not result.passed and "choose_threshold" in result.message
