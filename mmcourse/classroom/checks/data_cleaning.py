"""Checks for assignment 12 (collecting and cleaning pairs).

- `check_pair_scores(fn)`: `fn(image_emb, text_emb) -> (N,)`, the CLIP score of each pair (warm-up).
- `check_choose_threshold(fn)`: `fn(scores, is_noisy, max_noise) -> float`, the lowest CLIP score at
  which the held-out pairs kept are at most `max_noise` noisy.
- `check_deduplicate(fn)`: `fn(embeddings, radius) -> (N,) bool`, one pair per group of near-copies.
- `check_best_fraction(fn)`: `fn(fractions, accuracies, seconds, tolerance) -> fraction`, the transfer
  task: the kept fraction that buys the most accuracy per training second among those close to the best.

References: `mmcourse.evaluation.data_filtering` (`choose_threshold`, `near_duplicates`) and one-line
formulas; each check names the typical mistakes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mmcourse.classroom.checks.core import Case, CheckResult, Variant, run_check
from mmcourse.evaluation import data_filtering

__all__ = ["check_pair_scores", "check_choose_threshold", "check_deduplicate", "check_best_fraction",
           "reference_pair_scores", "reference_best_fraction"]

f64 = torch.float64


# ------------------------------------------------------------------ 12.1 warm-up: CLIP scores
def reference_pair_scores(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """(N,) cosine similarity of image i with caption i (raw, unnormalised (N, D) inputs)."""
    return (F.normalize(image_emb, dim=-1) * F.normalize(text_emb, dim=-1)).sum(-1)


def _raw_pairs(n: int, d: int, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    scale = 0.2 + 4 * torch.rand(n, 1, generator=g, dtype=f64)  # raw embeddings of very different lengths
    a = torch.randn(n, d, generator=g, dtype=f64) * scale
    b = (a + torch.randn(n, d, generator=g, dtype=f64)) * scale.flip(0)
    return a.to(dtype), b.to(dtype)


def check_pair_scores(student, raise_on_fail: bool = True) -> CheckResult:
    """Warm-up 12.1: `student(image_emb, text_emb) -> (N,)` cosine of each pair, raw (N, D) inputs."""
    cases = [Case(_raw_pairs(5, 4, 0), {}, "N=5, D=4, rows of different lengths"),
             Case(_raw_pairs(1, 3, 1), {}, "N=1"),
             Case(_raw_pairs(7, 6, 2, f64), {}, "N=7, D=6, float64")]
    diagnoses = [
        Variant(lambda a, b: F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T,
                "you returned the whole (N, N) similarity matrix: a pair's score is the similarity of image i "
                "with ITS caption i only",
                ("one number per pair: the diagonal of the matrix", "multiply matching rows element-wise and sum over D")),
        Variant(lambda a, b: (a * b).sum(-1), "you took dot products of the raw embeddings: without normalising, "
                "long embeddings get large scores whatever they show",
                ("the CLIP score is a COSINE similarity", "normalise each row to length 1 first")),
        Variant(lambda a, b: (F.normalize(a, dim=0) * F.normalize(b, dim=0)).sum(-1),
                "you normalised along the wrong dimension: each ROW (one embedding) must have length 1",
                ("which axis of an (N, D) tensor holds one embedding?", "normalise along dim=-1")),
        Variant(lambda a, b: 1 - reference_pair_scores(a, b), "you returned the cosine DISTANCE (1 - cos): high "
                "must mean a good pair", ("a good pair scores HIGH", "return the similarity itself")),
    ]
    return run_check("pair_scores", student, reference_pair_scores, cases, diagnoses,
                     success="the cosine of each pair on {n} cases (raw inputs of different lengths, N=1, float64)",
                     raise_on_fail=raise_on_fail, fallback_hint="normalise each row, then one dot product per pair")


# ------------------------------------------------------------------ 12.2 a threshold on held-out data
def _threshold_cases() -> list[Case]:
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    noisy = torch.tensor([False, False, True, False, False, True, True, True])
    tied = torch.tensor([0.9, 0.7, 0.7, 0.7, 0.5, 0.5, 0.1, 0.1, 0.0])
    tied_noisy = torch.tensor([False, False, True, False, False, False, True, True, True])
    g = torch.Generator().manual_seed(3)
    rand = torch.rand(40, generator=g)
    rand_noisy = torch.rand(40, generator=g) > rand  # low scores are more often noisy
    return [Case((scores, noisy, 0.2), {}, "8 pairs, max_noise=0.2"),
            Case((scores, noisy, 0.0), {}, "8 pairs, max_noise=0"),
            Case((tied, tied_noisy, 0.25), {}, "9 pairs with tied scores, max_noise=0.25"),
            Case((torch.tensor([0.9, 0.5, 0.5, 0.1]), torch.tensor([False, False, True, True]), 0.3), {},
                 "a tie of a clean and a noisy pair, max_noise=0.3"),
            Case((rand, rand_noisy, 0.3), {}, "40 random pairs, max_noise=0.3")]


def _threshold_with(which: str):
    def wrong(scores, is_noisy, max_noise):
        order = torch.argsort(scores, descending=True, stable=True)
        s, bad = scores[order], is_noisy[order].double()
        kept = torch.arange(1, len(s) + 1, dtype=f64)
        last = torch.ones(len(s), dtype=torch.bool)
        last[:-1] = s[1:] != s[:-1]
        if which == "float32":
            share = (bad.float().cumsum(0) / kept.float()).double()
            ok = (share <= max_noise) & last
            idx = ok.nonzero().flatten()
            return float(s[idx[-1]]) if len(idx) else math.inf
        if which == "recall":
            share = bad.cumsum(0) / max(bad.sum().item(), 1)
        else:
            share = bad.cumsum(0) / kept
        ok = share <= max_noise + 1e-6
        if which != "ties":
            ok &= last
        if which == "highest":
            idx = ok.nonzero().flatten()
            return float(s[idx[0]]) if len(idx) else math.inf
        idx = ok.nonzero().flatten()
        return float(s[idx[-1]]) if len(idx) else math.inf
    return wrong


def check_choose_threshold(student, raise_on_fail: bool = True) -> CheckResult:
    """12.2: `student(scores (N,), is_noisy (N,) bool, max_noise) -> float` against
    `mmcourse.evaluation.data_filtering.choose_threshold`."""
    diagnoses = [
        Variant(_threshold_with("recall"), "you measured the share of ALL noisy pairs that survive the threshold; "
                "the target is the share of noise AMONG THE KEPT pairs",
                ("divide the noisy pairs kept by the number of pairs kept", "precision, not recall")),
        Variant(_threshold_with("highest"), "you returned the HIGHEST threshold that meets the target (it keeps the "
                "fewest pairs); the task asks for the LOWEST, to keep as much data as possible",
                ("several thresholds meet the target: which one keeps the most pairs?",
                 "the noise share can go up and down again as the threshold falls: check every cut")),
        Variant(_threshold_with("float32"), "your share of noise is compared without slack: in float32, 1/5 is "
                "0.2000000030 > 0.2, so a cut that meets the target exactly is rejected",
                ("floating-point shares are rounded", "allow a tolerance of about a millionth")),
        Variant(_threshold_with("ties"), "your threshold cuts through tied scores: a threshold t keeps EVERY pair "
                "scoring >= t, so the noise share must be counted with all of them",
                ("pairs with the same score are kept or dropped together", "only the last pair of a run of ties is a possible cut")),
    ]
    return run_check("choose_threshold", student, data_filtering.choose_threshold, _threshold_cases(), diagnoses,
                     success="the lowest threshold meeting the target on {n} cases (ties, max_noise=0, random)",
                     raise_on_fail=raise_on_fail,
                     fallback_hint=("sort the scores from high to low; at each cut, the kept pairs are those above it",
                                    "the answer is a score, the lowest one whose kept set is clean enough"))


# ------------------------------------------------------------------ 12.3 deduplication
def _dedup_case(seed: int):
    # A chain 0-2-1 (0 and 1 not linked), a pair 3-5, singletons; different lengths per row.
    theta = 0.1
    angles = torch.tensor([0.0, 2 * theta, theta, 1.5, 3.0, 1.5 + theta / 2, 4.5])
    x = torch.stack([angles.cos(), angles.sin(), torch.zeros(7)], dim=1).to(f64)
    g = torch.Generator().manual_seed(seed)
    x = x * (0.5 + 3 * torch.rand(7, 1, generator=g, dtype=f64))
    radius = float(1 - math.cos(1.2 * theta))
    return x, radius


def _components_keep(linked: torch.Tensor, first: bool = True) -> torch.Tensor:
    n = linked.shape[0]
    group = torch.arange(n)
    for _ in range(n):  # propagate the smallest index along links
        group = torch.where(linked, group[None, :].expand(n, n), n).min(1).values.minimum(group)
    keep = torch.zeros(n, dtype=torch.bool)
    for gid in group.unique():
        members = (group == gid).nonzero().flatten()
        keep[members[0] if first else members[-1]] = True
    return keep


def _cos_linked(x, radius):
    u = F.normalize(x, dim=-1)
    return (1 - u @ u.T) <= radius + 1e-12


def _reference_dedup(embeddings, radius):
    return data_filtering.near_duplicates(embeddings, radius).keep


def _dedup_drop_all(x, radius):
    linked = _cos_linked(x, radius)
    return linked.sum(1) == 1


def _dedup_direct_only(x, radius):
    linked = _cos_linked(x, radius)
    return ~torch.triu(linked, diagonal=1).any(0)


def _dedup_euclidean(x, radius):
    d = torch.cdist(x, x)
    return _components_keep(d <= radius)


def check_deduplicate(student, raise_on_fail: bool = True) -> CheckResult:
    """12.3: `student(embeddings (N, D), radius) -> (N,) bool keep` against
    `mmcourse.evaluation.data_filtering.near_duplicates(...).keep`."""
    import scipy.sparse.csgraph  # noqa: F401 - imported here, so the student's first call is not timed on it
    import sklearn.neighbors  # noqa: F401
    x0, r = _dedup_case(0)
    x1, _ = _dedup_case(1)
    cases = [Case((x0, r), {}, "7 embeddings: a chain of 3, a pair, 2 singletons"),
             Case((x1[[4, 6, 3, 5]], r), {}, "4 embeddings, one pair"),
             Case((x1, 0.0), {}, "radius 0: nothing is a duplicate")]
    diagnoses = [
        Variant(_dedup_drop_all, "you removed every member of a group of near-copies: keep ONE of each group",
                ("deduplication keeps one copy", "the lowest index of each group stays")),
        Variant(lambda x, radius: _components_keep(_cos_linked(x, radius), first=False),
                "you kept the LAST pair of each group; keep the first (lowest index)",
                ("which member of a group stays?", "the lowest index")),
        Variant(_dedup_direct_only, "a chain a–b–c, where a and c are not within the radius, is one group: you "
                "only followed direct links",
                ("near-copies of near-copies are one group", "connected components of the neighbour graph")),
        Variant(_dedup_euclidean, "you used the Euclidean distance of raw embeddings: the radius is a COSINE "
                "distance (1 - cosine similarity), blind to the embeddings' lengths",
                ("NearestNeighbors takes metric=...", "which metric ignores the length of a vector?")),
    ]
    return run_check("deduplicate", student, _reference_dedup, cases, diagnoses,
                     success="one pair per group of near-copies on {n} cases (a chain, radius 0, rows of any length)",
                     raise_on_fail=raise_on_fail, forbid=[data_filtering.near_duplicates],
                     fallback_hint=("link pairs within the radius, group the links, keep the lowest index per group",
                                    "scikit-learn's NearestNeighbors finds the links"))


# ------------------------------------------------------------------ 12.4 transfer: accuracy per second
def reference_best_fraction(fractions, accuracies, seconds, tolerance=0.02):
    """Among the fractions whose accuracy is within `tolerance` (absolute) of the best, the one with the
    highest accuracy per training second."""
    best = max(accuracies)
    eligible = [i for i, a in enumerate(accuracies) if a >= best - tolerance]
    return fractions[max(eligible, key=lambda i: accuracies[i] / seconds[i])]


def _best_max_accuracy(fractions, accuracies, seconds, tolerance=0.02):
    return fractions[max(range(len(fractions)), key=lambda i: accuracies[i])]


def _best_ratio_only(fractions, accuracies, seconds, tolerance=0.02):
    return fractions[max(range(len(fractions)), key=lambda i: accuracies[i] / seconds[i])]


def _best_relative(fractions, accuracies, seconds, tolerance=0.02):
    best = max(accuracies)
    eligible = [i for i, a in enumerate(accuracies) if a >= best * tolerance]
    return fractions[max(eligible, key=lambda i: accuracies[i] / seconds[i])]


def _best_cheapest(fractions, accuracies, seconds, tolerance=0.02):
    best = max(accuracies)
    eligible = [i for i, a in enumerate(accuracies) if a >= best - tolerance]
    return fractions[min(eligible, key=lambda i: seconds[i])]


def check_best_fraction(student, raise_on_fail: bool = True) -> CheckResult:
    """Transfer 12.4: `student(fractions, accuracies, seconds, tolerance) -> one of fractions`."""
    f = [0.2, 0.4, 0.6, 1.0]
    cases = [
        Case((f, [0.55, 0.74, 0.77, 0.78], [1.0, 2.0, 3.0, 5.0], 0.02), {}, "4 fractions, tolerance 0.02"),
        Case((f, [0.60, 0.80, 0.79, 0.70], [1.0, 2.0, 3.1, 5.0], 0.05), {}, "the best in the middle, tolerance 0.05"),
        Case(([0.3, 0.5, 0.7], [0.70, 0.72, 0.74], [3.0, 1.5, 3.0], 0.03), {}, "times not in order of size"),
        Case(([0.3, 0.5, 0.8], [0.70, 0.80, 0.81], [0.95, 1.0, 2.0], 0.15), {}, "the fastest is not the best per second"),
        Case(([0.5], [0.9], [2.0], 0.0), {}, "one fraction"),
    ]
    diagnoses = [
        Variant(_best_max_accuracy, "you picked the most accurate fraction and ignored the training time",
                ("the task trades accuracy for seconds", "among the fractions close to the best, compare accuracy per second")),
        Variant(_best_ratio_only, "you maximised accuracy per second over ALL fractions: a tiny, fast, bad model "
                "wins that way; only fractions within `tolerance` of the best accuracy may compete",
                ("first keep the fractions within tolerance of the best accuracy", "then accuracy / seconds")),
        Variant(_best_relative, "the tolerance is in accuracy POINTS (best - tolerance), not a factor of the best",
                ("0.02 means two points below the best", "subtract, do not multiply")),
        Variant(_best_cheapest, "you picked the fastest eligible fraction; the criterion is accuracy PER second",
                ("fastest is not the same as most accuracy per second", "divide accuracy by seconds")),
    ]
    return run_check("best_fraction", student, reference_best_fraction, cases, diagnoses,
                     success="the right fraction on {n} cases (best in the middle, unordered times, one fraction)",
                     raise_on_fail=raise_on_fail,
                     fallback_hint=("filter by accuracy first, then rank by accuracy per second",
                                    "return an element of `fractions`, not an index"))
