"""Checks for the transfer tasks of assignments 01–06: exercises the lessons do not spell out,
built on what they taught.

- 01 `check_siglip_loss(fn)`: `fn(image_emb, text_emb, logit_scale, logit_bias) -> scalar`, the
  sigmoid loss of SigLIP (Zhai et al., 2023) after the softmax loss of CLIP.
- 02 `check_simplex_floor(fn)`: `fn(n, temperature) -> float`, the lowest InfoNCE loss of n unit
  vectors at temperature τ (the regular simplex), the floor lesson 02 asks about in prose.
- 03 `check_patchify(fn)`: `fn(images, patch_size) -> (B, N, C·p·p)`, the patches a ViT embeds,
  in the order the convolution of `TinyViT` reads them.
- 04 `check_soft_clip_loss(fn)`: `fn(image_emb, text_emb, logit_scale, labels) -> scalar`, the CLIP
  loss whose targets spread over every caption of the same class (false negatives as positives).
- 05 `check_caption_ranks(fn)`: `fn(logits_per_image, text_to_image) -> (N,)`, each image's best
  0-based caption rank with several captions per image (COCO's five); and
  `check_rank_summary(fn)`: `fn(ranks) -> (mean_rank, median_rank)` as open_clip reports them.
- 06 `check_shift_gap(fn)`: `fn(image_emb, text_emb, lam) -> (image', text')`, Liang et al.'s (2022)
  experiment that closes part of the modality gap.

Every reference is the course library or a one-line formula; each check names 3+ typical mistakes.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from mmcourse.objectives import losses
from mmcourse.classroom.checks.core import Case, CheckResult, Variant, run_check

__all__ = ["check_siglip_loss", "check_simplex_floor", "check_patchify", "check_soft_clip_loss",
           "check_caption_ranks", "check_rank_summary", "check_shift_gap",
           "reference_simplex_floor", "reference_soft_clip_loss", "reference_shift_gap"]

f64 = torch.float64


def _unit_pairs(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=f64)
    b = a + 0.7 * torch.randn(n, d, generator=g, dtype=f64)  # correlated pairs: a real signal
    return F.normalize(a, dim=-1), F.normalize(b, dim=-1)


# ------------------------------------------------------------------ 01: SigLIP's sigmoid loss
def _siglip_with(labels="pm1", reduce="sum_over_n", bias="added"):
    def wrong(image_emb, text_emb, logit_scale, logit_bias):
        n = image_emb.shape[0]
        if bias == "scaled":
            logits = logit_scale * (image_emb @ text_emb.T + logit_bias)
        elif bias == "missing":
            logits = logit_scale * image_emb @ text_emb.T
        else:
            logits = logit_scale * image_emb @ text_emb.T + logit_bias
        eye = torch.eye(n, dtype=logits.dtype)
        z = {"pm1": 2 * eye - 1, "01": eye, "none": torch.ones_like(eye)}[labels]  # "01": 0/1 inside the sigmoid
        terms = -F.logsigmoid(z * logits)
        return {"sum_over_n": terms.sum() / n, "mean": terms.mean(), "sum": terms.sum(),
                "diag": terms.diagonal().mean()}[reduce]
    return wrong


def _siglip_cases() -> list[Case]:
    out = []
    for n, d, scale, bias, seed in [(3, 4, 10.0, -10.0, 0), (6, 5, 5.0, -2.0, 1), (1, 3, 10.0, -10.0, 2),
                                    (8, 8, 20.0, 3.0, 3)]:
        a, b = _unit_pairs(n, d, seed)
        out.append(Case((a, b, scale, bias), {}, f"N={n}, D={d}, logit_scale={scale:g}, logit_bias={bias:g}"))
    return out


def check_siglip_loss(siglip_loss, raise_on_fail: bool = True) -> CheckResult:
    """Transfer task 01: `siglip_loss(image_emb, text_emb, logit_scale, logit_bias)` with unit-norm
    (N, D) inputs and an exponentiated scale, against `mmcourse.objectives.losses.siglip_loss` (= open_clip)."""
    diagnoses = [
        Variant(_siglip_with(labels="01"), "the labels inside the sigmoid are 0 and 1: a label 0 makes every "
                "negative pair's term the constant log 2, so negatives are never pushed apart",
                ("in -log σ(z · logit) the label z must have opposite signs for matching and non-matching pairs",
                 "σ(−x) = 1 − σ(x): a label of −1 asks for a LOW logit")),
        Variant(_siglip_with(labels="none"), "every pair is treated as a match: the label sign is missing, so "
                "non-matching pairs are pulled together too",
                ("each pair's term needs its label: +1 on the diagonal, −1 elsewhere",
                 "build an (N, N) matrix of labels and multiply it with the logits inside the sigmoid")),
        Variant(_siglip_with(reduce="mean"), "you averaged over all N² pairs: SigLIP sums over the pairs and "
                "divides by N (the batch size)", ("count how many terms there are, and what the paper divides by",
                                                  "N² terms, divided by N")),
        Variant(_siglip_with(reduce="sum"), "you summed over all pairs without dividing by N",
                ("the loss is normalised by the batch size", "divide the sum by the number of images")),
        Variant(_siglip_with(bias="scaled"), "the bias is multiplied by the logit scale: it is added AFTER scaling",
                ("logit = scale · similarity, then + bias", "look at the brackets around your logit")),
        Variant(_siglip_with(bias="missing"), "the bias is missing", ("every logit gets the same learnable bias",
                                                                      "add logit_bias to every entry")),
        Variant(_siglip_with(reduce="diag"), "only the matching pairs count: the non-matching pairs are what "
                "pushes embeddings apart", ("every one of the N² (image, text) pairs is its own binary problem",
                                            "sum over the whole (N, N) matrix, not its diagonal")),
        Variant(lambda i, t, s, b: losses.clip_loss(i, t, s), "this is CLIP's softmax loss: SigLIP replaces the "
                "softmax over the batch by one sigmoid per pair", ("no softmax, no cross-entropy over rows",
                                                                   "F.logsigmoid of each labelled logit")),
    ]
    return run_check("siglip_loss", siglip_loss, losses.siglip_loss, _siglip_cases(), diagnoses,
                     success="equals open_clip's SigLIP loss on {n} batches, a batch of one included",
                     raise_on_fail=raise_on_fail)


# ------------------------------------------------------------------ 02: the floor at temperature τ
def reference_simplex_floor(n: int, temperature: float) -> float:
    """InfoNCE loss of n unit vectors placed at the vertices of a regular simplex (pairs equal,
    every other similarity -1/(n-1)): log(1 + (n-1) exp(-(1 + 1/(n-1)) / τ)). It is the lowest
    loss n unit vectors can reach (reachable when the dimension is at least n - 1)."""
    if n == 1:
        return 0.0
    return math.log1p((n - 1) * math.exp(-(1 + 1 / (n - 1)) / temperature))


def check_simplex_floor(simplex_floor, raise_on_fail: bool = True) -> CheckResult:
    """Transfer task 02: `simplex_floor(n, temperature) -> float`."""
    def named(f):
        return lambda n, t: f(n, t) if n > 1 else 0.0
    cases = [Case((2, 1.0), {}, "n=2, τ=1"), Case((128, 1.0), {}, "n=128, τ=1 (lesson 02's batch)"),
             Case((10, 0.5), {}, "n=10, τ=0.5"), Case((1000, 0.07), {}, "n=1000, τ=0.07")]
    diagnoses = [
        Variant(named(lambda n, t: math.log1p((n - 1) * math.exp(-2 / t))), "you put every negative at similarity "
                "-1 (opposite the anchor): n > 2 unit vectors cannot all be opposite each other",
                "the vectors of a regular simplex add up to zero: what does that force their mean similarity to be?"),
        Variant(named(lambda n, t: math.log1p((n - 1) * math.exp(-(1 + 1 / n) / t))), "the negatives' similarity "
                "is −1/(n−1), not −1/n: of the n² terms of ‖Σ z_i‖², n are the vectors with themselves and n(n−1) are "
                "pairs of different vectors", ("expand ‖Σ z_i‖² = Σ_i Σ_j z_i·z_j and count the terms with i ≠ j",
                                               "0 = n + n(n−1)·s⁻")),
        Variant(named(lambda n, t: math.log1p((n - 1) * math.exp(-1 / t))), "you put every negative at similarity 0 "
                "(orthogonal): the simplex does better, at -1/(n-1)",
                "the vectors of a regular simplex add up to zero: what does that force their mean similarity to be?"),
        Variant(named(lambda n, t: math.log(n - 1) - (1 + 1 / (n - 1)) / t), "the positive's own term is missing "
                "from the denominator: the softmax runs over all n candidates, the positive included",
                ("the denominator of the softmax sums over every candidate", "write p_pos as a fraction, then take −log")),
        Variant(lambda n, t: math.log(n), "log n is the loss at chance (all similarities equal), not the floor",
                "the best arrangement makes the positive far more similar than the negatives"),
        Variant(named(lambda n, t: math.log1p((n - 1) * math.exp(-(1 + 1 / (n - 1)) * t))), "τ multiplies the "
                "similarities instead of dividing them", ("the logits are similarity / τ", "a smaller τ must make the floor LOWER")),
    ]
    return run_check("simplex_floor", simplex_floor, reference_simplex_floor, cases, diagnoses,
                     fallback_hint=("re-derive s⁻ and then the loss for n = 2 by hand (one positive, one negative at "
                                    "−1); compare with your function", "the loss of one anchor is −log p_positive"),
                     success="the simplex floor on {n} cases: log(1 + (n-1)·exp(-(1 + 1/(n-1))/τ)); at τ = 1 and "
                             "n = 128 that is 3.86 nats", rtol=1e-6, atol=1e-9, raise_on_fail=raise_on_fail)


# ------------------------------------------------------------------ 03: patches as a ViT reads them
def _reference_patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    B, C, H, W = images.shape
    p = patch_size
    x = images.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(B, (H // p) * (W // p), C * p * p)  # (B, N, C·p·p)


def _patchify_cases() -> list[Case]:
    g = torch.Generator().manual_seed(3)
    return [Case((torch.arange(16.).reshape(1, 1, 4, 4), 2), {}, "one 4x4 image of 0..15, patch 2"),
            Case((torch.randn(2, 3, 6, 6, generator=g), 3), {}, "2 RGB 6x6 images, patch 3"),
            Case((torch.randn(3, 2, 8, 4, generator=g), 2), {}, "3 two-channel 8x4 images, patch 2")]


def check_patchify(patchify, raise_on_fail: bool = True) -> CheckResult:
    """Transfer task 03: `patchify(images, patch_size) -> (B, N, C·p·p)`, patches in row-major order
    (left to right, then top to bottom), each flattened channel first, so that a linear layer on
    the patches equals `TinyViT`'s convolution with kernel = stride = patch size."""
    def columns_first(images, p):
        B, C, H, W = images.shape
        x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 4, 2, 1, 3, 5)  # w before h
        return x.reshape(B, (H // p) * (W // p), C * p * p)

    def channels_last(images, p):
        B, C, H, W = images.shape
        x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(B, (H // p) * (W // p), C * p * p)

    def plain_reshape(images, p):
        B, C, H, W = images.shape
        return images.reshape(B, (H // p) * (W // p), C * p * p)  # rows of pixels, not square patches

    def unfold(images, p):
        return F.unfold(images, p, stride=p)  # (B, C·p·p, N): the right numbers, transposed

    diagnoses = [
        Variant(unfold, "the patches are in the columns: the result must be (B, N, C·p·p), one ROW per patch",
                "the sequence dimension comes second, as for text tokens"),
        Variant(plain_reshape, "a plain reshape cuts the image into strips of pixels, not into p×p squares",
                "split H and W into (patches, p) each, then bring the two patch-grid axes together"),
        Variant(columns_first, "the patches are in column order (top to bottom first): the convolution reads them "
                "row by row, left to right", ("which grid axis must vary slowest?", "the patch-row axis comes before the patch-column axis in your permute")),
        Variant(channels_last, "each patch is flattened with the channel last: the convolution's weight is "
                "(out, C, p, p), so flatten channel first", ("compare the order of your axes with Conv2d's weight", "inside a patch: channel, then pixel row, then pixel column")),
    ]
    return run_check("patchify", patchify, _reference_patchify, _patchify_cases(), diagnoses,
                     fallback_hint="try a 1x1x4x4 image holding 0..15 with patch 2: the first patch must be "
                                   "[0, 1, 4, 5]",
                     success="the patches of {n} batches in the convolution's order: a linear layer on them "
                             "equals TinyViT's patch embedding", raise_on_fail=raise_on_fail)


# ------------------------------------------------------------------ 04: soft targets over a class
def reference_soft_clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: float,
                             labels: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss whose target for each row is uniform over the items of the same class:
    target_ij = [y_i = y_j] / n_{y_i}. Inputs unit-norm (N, D), `logit_scale` exponentiated."""
    logits = logit_scale * image_emb @ text_emb.T  # (N, N)
    same = (labels[:, None] == labels[None, :]).to(logits.dtype)  # (N, N), symmetric
    target = same / same.sum(1, keepdim=True)  # rows sum to 1
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def _soft_cases() -> list[Case]:
    out = []
    for n, d, scale, labels, seed in [(4, 3, 10.0, [0, 0, 1, 1], 0), (6, 5, 14.3, [2, 0, 2, 2, 1, 0], 1),
                                      (5, 4, 1.0, [0, 1, 2, 3, 4], 2), (8, 6, 50.0, [1, 1, 1, 1, 1, 1, 0, 0], 3)]:
        a, b = _unit_pairs(n, d, seed)
        out.append(Case((a, b, scale, torch.tensor(labels)), {}, f"N={n}, labels {labels}, logit_scale={scale:g}"))
    return out


def check_soft_clip_loss(soft_clip_loss, raise_on_fail: bool = True) -> CheckResult:
    """Transfer task 04: `soft_clip_loss(image_emb, text_emb, logit_scale, labels) -> scalar`."""
    def logits_of(i, t, s):
        return s * i @ t.T

    def multi_hot(i, t, s, y):
        same = (y[:, None] == y[None, :]).to(i.dtype)
        lg = logits_of(i, t, s)
        return (F.cross_entropy(lg, same) + F.cross_entropy(lg.T, same)) / 2

    def one_way(i, t, s, y):
        same = (y[:, None] == y[None, :]).to(i.dtype)
        return F.cross_entropy(logits_of(i, t, s), same / same.sum(1, keepdim=True))

    def hard(i, t, s, y):
        return losses.clip_loss(i, t, s)

    def log_sum_same(i, t, s, y):  # -log Σ_{same class} p_ij: "any same-class caption is right"
        same = y[:, None] == y[None, :]
        lg = logits_of(i, t, s)
        rows = -(torch.logsumexp(lg.masked_fill(~same, -math.inf), 1) - torch.logsumexp(lg, 1)).mean()
        cols = -(torch.logsumexp(lg.T.masked_fill(~same, -math.inf), 1) - torch.logsumexp(lg.T, 1)).mean()
        return (rows + cols) / 2

    def summed(i, t, s, y):
        return 2 * reference_soft_clip_loss(i, t, s, y)

    diagnoses = [
        Variant(summed, "you added the two directions: CLIP averages them",
                ("the loss is the mean of the image→text and text→image cross-entropies", "divide by 2")),
        Variant(hard, "these are CLIP's hard labels (the diagonal only): same-class captions are still pushed away",
                "the target of row i must give weight to EVERY caption of image i's class"),
        Variant(multi_hot, "the targets do not sum to 1: a class with n captions gets n times the weight",
                "a target row is a probability distribution over the captions"),
        Variant(one_way, "only the image→text direction: the loss is symmetric",
                "captions choose among images too"),
        Variant(log_sum_same, "you maximised the TOTAL probability of the same-class captions (-log Σ p): that is "
                "a different loss, which lets one caption take all the probability",
                "cross-entropy against a target distribution weighs each caption's log-probability"),
    ]
    return run_check("soft_clip_loss", soft_clip_loss, reference_soft_clip_loss, _soft_cases(), diagnoses,
                     success="equals the soft-target CLIP loss on {n} batches, all-distinct labels included "
                             "(where it is CLIP's loss)", raise_on_fail=raise_on_fail)


# ------------------------------------------------------------------ 05: several captions per image
def _reference_caption_ranks(logits_per_image: torch.Tensor, text_to_image: torch.Tensor) -> torch.Tensor:
    n, t = logits_per_image.shape
    order = torch.argsort(logits_per_image, dim=1, descending=True, stable=True)  # (N, T)
    rank_of = torch.empty_like(order).scatter_(1, order, torch.arange(t).expand(n, t))  # where j lands
    mine = text_to_image.view(1, t) == torch.arange(n).view(n, 1)  # (N, T)
    return rank_of.masked_fill(~mine, t).min(dim=1).values  # (N,)


def _caption_cases() -> list[Case]:
    g = torch.Generator().manual_seed(5)
    index = torch.arange(4).repeat_interleave(5)  # 4 images, 5 captions each, grouped
    shuffled = index[torch.randperm(20, generator=g)]  # the same, in a random order
    sims = torch.randn(4, 20, generator=g)
    sims2 = torch.randn(4, 20, generator=g) + 1.5 * (shuffled[None, :] == torch.arange(4)[:, None])
    tied = torch.randint(0, 3, (3, 9), generator=g).float()  # many exact ties
    return [Case((sims, index), {}, "4 images x 20 captions, 5 per image, grouped"),
            Case((sims2, shuffled), {}, "the captions in a random order"),
            Case((tied, torch.arange(3).repeat(3)), {}, "3 images x 9 captions, tied scores")]


def check_caption_ranks(caption_ranks, raise_on_fail: bool = True) -> CheckResult:
    """Transfer task 05a: `caption_ranks(logits_per_image, text_to_image) -> (N,)` long, the 0-based
    rank of each image's best-ranked caption (ties: lower caption index first), as
    `mmcourse.evaluation.retrieval.retrieval_ranks` and open_clip count an image as retrieved."""
    def first_caption(lg, idx):
        n, t = lg.shape
        first = torch.stack([(idx == i).nonzero()[0, 0] for i in range(n)])
        order = torch.argsort(lg, dim=1, descending=True, stable=True)
        return (order == first[:, None]).int().argmax(1)

    def mean_of_captions(lg, idx):
        n, t = lg.shape
        order = torch.argsort(lg, dim=1, descending=True, stable=True)
        rank_of = torch.empty_like(order).scatter_(1, order, torch.arange(t).expand(n, t))
        mine = idx.view(1, t) == torch.arange(n).view(n, 1)
        return (rank_of * mine).sum(1) // mine.sum(1)

    def worst(lg, idx):
        n, t = lg.shape
        order = torch.argsort(lg, dim=1, descending=True, stable=True)
        rank_of = torch.empty_like(order).scatter_(1, order, torch.arange(t).expand(n, t))
        mine = idx.view(1, t) == torch.arange(n).view(n, 1)
        return rank_of.masked_fill(~mine, -1).max(1).values

    def diagonal(lg, idx):
        order = torch.argsort(lg, dim=1, descending=True, stable=True)
        return (order == torch.arange(lg.shape[0])[:, None]).int().argmax(1)

    def unstable(lg, idx):
        n, t = lg.shape
        rank_of = (lg[:, None, :] > lg[:, :, None]).sum(-1)  # strictly better captions only
        mine = idx.view(1, t) == torch.arange(n).view(n, 1)
        return rank_of.masked_fill(~mine, t).min(1).values

    diagnoses = [
        Variant(lambda lg, idx: _reference_caption_ranks(lg, idx) + 1, "these ranks are 1-based: the exercise asks for "
                "0-based ranks (the first caption has rank 0)", ("R@k then reads (ranks < k)",
                                                                 "a position in a sorted list already counts from 0")),
        Variant(first_caption, "you ranked only each image's FIRST caption: an image is retrieved when ANY of its "
                "captions comes early", ("look at all the captions `text_to_image` assigns to the image", "mask out the other images' captions, then take the best rank")),
        Variant(mean_of_captions, "you averaged the ranks of the image's captions: the image counts as soon as its "
                "best caption appears", ("which of its captions decides when the image is found?", "a minimum, not an average")),
        Variant(worst, "you took the image's WORST-ranked caption: the image counts as soon as its best one appears",
                "which of its captions decides when the image is found?"),
        Variant(diagonal, "caption i is not the match of image i here: `text_to_image` says which image each "
                "caption describes", ("with 5 captions per image the matrix is not square", "compare each caption's image index with the row number")),
        Variant(unstable, "ties: you counted only strictly better captions, so a tie always goes to the image",
                "tied captions with a lower index come first (a stable sort)"),
    ]
    return run_check("caption_ranks", caption_ranks, _reference_caption_ranks, _caption_cases(), diagnoses,
                     fallback_hint="rank one image's row by hand for 2 images and 4 captions, then compare",
                     success="each image's best caption rank on {n} cases (grouped, shuffled and tied captions); "
                             "R@k = (ranks < k).mean()", raise_on_fail=raise_on_fail)


def _reference_rank_summary(ranks: torch.Tensor) -> tuple[float, float]:
    preds = ranks.numpy()
    return float(preds.mean() + 1), float(np.floor(np.median(preds)) + 1)


def check_rank_summary(rank_summary, raise_on_fail: bool = True) -> CheckResult:
    """Transfer task 05b: `rank_summary(ranks) -> (mean_rank, median_rank)` from 0-based ranks,
    as open_clip's `{direction}_mean_rank` and `{direction}_median_rank` (1-based; the median of an
    even count is floored before the +1)."""
    cases = [Case((torch.tensor([0, 0, 3, 1]),), {}, "ranks [0, 0, 3, 1]"),
             Case((torch.tensor([0, 5, 2]),), {}, "ranks [0, 5, 2]"),
             Case((torch.tensor([4, 0, 0, 9, 1, 2]),), {}, "ranks [4, 0, 0, 9, 1, 2]"),
             Case((torch.tensor([5, 0, 3, 0]),), {}, "ranks [5, 0, 3, 0]")]
    diagnoses = [
        Variant(lambda r: (r.float().mean().item(), float(np.median(r.numpy()))), "these are 0-based: open_clip "
                "reports 1-based ranks (the first item has rank 1)", ("what rank does open_clip give the first caption?",
                                                                      "both numbers shift by the same amount")),
        Variant(lambda r: (r.float().mean().item(), float(np.floor(np.median(r.numpy())))), "these are 0-based: "
                "open_clip reports 1-based ranks (the first item has rank 1)",
                ("what rank does open_clip give the first caption?", "both numbers shift by the same amount")),
        Variant(lambda r: (r.float().mean().item() + 1, float(np.median(r.numpy())) + 1), "the median of an even "
                "number of ranks is not floored: open_clip floors it before adding 1",
                "with ranks [0, 0, 3, 1] the median is 0.5; what does open_clip report?"),
        Variant(lambda r: (r.float().mean().item() + 1, r.median().item() + 1.0), "torch.median returns the LOWER of "
                "the two middle values; open_clip floors numpy's median (their mean) — they differ when the two "
                "middle ranks are more than one apart", ("compute the median as numpy does, then floor it", "numpy's median of [0, 0, 3, 5] is 1.5")),
        Variant(lambda r: _reference_rank_summary(r)[::-1], "mean and median are "
                "swapped", ("check the order of the pair you return", "the mean comes first")),
    ]
    return run_check("rank_summary", rank_summary, _reference_rank_summary, cases, diagnoses,
                     fallback_hint=("compute both numbers by hand for ranks [0, 0, 3, 1]: is the first item rank 0 or "
                                    "1 in open_clip, and what does it do with a median of 0.5?",
                                    "open_clip floors the median before shifting it"),
                     success="mean and median rank as open_clip reports them on {n} cases, even counts included",
                     raise_on_fail=raise_on_fail)


# ------------------------------------------------------------------ 06: closing the modality gap
def reference_shift_gap(image_emb: torch.Tensor, text_emb: torch.Tensor, lam: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Liang et al. (2022), §4: with Δ = centroid(images) - centroid(texts) of the L2-normalised
    embeddings, move images by -λΔ/2 and texts by +λΔ/2, then L2-normalise again. λ = 1 closes
    the gap to first order; λ = 0 changes nothing but the normalisation."""
    img, txt = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)
    delta = img.mean(0) - txt.mean(0)  # (D,)
    return F.normalize(img - lam / 2 * delta, dim=-1), F.normalize(txt + lam / 2 * delta, dim=-1)


def _gap_cases() -> list[Case]:
    g = torch.Generator().manual_seed(6)
    shift = torch.tensor([1.5, 0.0, 0.0, 0.0], dtype=f64)
    img = (torch.randn(6, 4, generator=g, dtype=f64) + shift) * 3
    txt = torch.randn(9, 4, generator=g, dtype=f64) - shift
    return [Case((img, txt, 1.0), {}, "6 images, 9 texts, λ=1"), Case((img, txt, 0.5), {}, "λ=0.5"),
            Case((img[:3], txt[:3], -1.0), {}, "λ=-1 (widen the gap)")]


def check_shift_gap(shift_gap, raise_on_fail: bool = True) -> CheckResult:
    """Transfer task 06: `shift_gap(image_emb, text_emb, lam) -> (image', text')`."""
    n = lambda x: F.normalize(x, dim=-1)  # noqa: E731

    def no_renorm(i, t, lam):
        i, t = n(i), n(t)
        d = i.mean(0) - t.mean(0)
        return i - lam / 2 * d, t + lam / 2 * d

    def signs_swapped(i, t, lam):
        return reference_shift_gap(i, t, -lam)

    def raw_delta(i, t, lam):
        d = i.mean(0) - t.mean(0)
        return n(n(i) - lam / 2 * d), n(n(t) + lam / 2 * d)

    def full_step_each(i, t, lam):
        return reference_shift_gap(i, t, 2 * lam)

    def raw_shift(i, t, lam):
        d = n(i).mean(0) - n(t).mean(0)
        return n(i - lam / 2 * d), n(t + lam / 2 * d)  # moved the raw embeddings, then normalised

    def images_only(i, t, lam):
        i2, _ = reference_shift_gap(i, t, 2 * lam)
        return i2, n(t)

    diagnoses = [
        Variant(no_renorm, "the shifted embeddings are not unit length: CLIP compares directions, so normalise "
                "again after the shift", ("check the norms of what you return", "a shifted unit vector is no longer unit length")),
        Variant(signs_swapped, "the shift goes the wrong way and WIDENS the gap: images must move towards the text "
                "centroid", ("Δ points from the text centroid to the image centroid", "images move by −λΔ/2, texts by +λΔ/2")),
        Variant(raw_delta, "Δ was computed from the raw embeddings: the gap is between the centroids of the "
                "NORMALISED embeddings", ("normalise first, then average", "the gap of lesson 06 is measured between the centroids of unit vectors")),
        Variant(full_step_each, "each modality moved by λΔ: together they move 2λΔ and overshoot; each moves half",
                "the two moves together should close λ of the gap"),
        Variant(raw_shift, "you moved the RAW embeddings: Δ lives on the unit sphere, so move the normalised ones",
                ("normalise first, then shift, then normalise again",
                 "a raw embedding of length 5 barely notices a shift of length 0.1")),
        Variant(images_only, "only the images moved: Liang et al. move both modalities half-way",
                "texts move by +λΔ/2"),
    ]
    return run_check("shift_gap", shift_gap, reference_shift_gap, _gap_cases(), diagnoses,
                     fallback_hint=("check each step of the exercise text on a tiny input: normalise, centroids, "
                                    "Δ, shift, normalise", "print the gap before and after with λ = 1"),
                     success="Liang et al.'s shift on {n} cases: unit vectors, the gap shrinks by about λ",
                     raise_on_fail=raise_on_fail)
