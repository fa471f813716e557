"""Filtering image–caption pairs with a model (lesson 12): CLIP-score filtering as LAION and DataComp
do it, deduplication by image embedding as SemDeDup does it, and the downstream scores a filter is
judged by.

    scores = clip_scores(judge, tokenizer, pairs.images, pairs.captions)   # (N,) cosine similarities
    keep = top_fraction(scores, 0.3)                                      # DataComp: keep the best 30 %
    keep = scores >= choose_threshold(val_scores, val_noisy, max_noise=0.1)  # LAION: a fixed threshold
    keep &= near_duplicates(image_emb, radius=0.01).keep                 # one pair per group of near-copies
    downstream_scores(model, tokenizer, test.images, test.labels)          # zero-shot top-1, retrieval mAP

Sources: Schuhmann et al. 2021/2022 (LAION-400M/5B: CLIP ViT-B/32 cosine >= 0.28 / 0.3); Gadre et
al. 2023 (DataComp: a fixed training recipe, vary only the data; "CLIP score" filtering keeps a top
fraction); Abbas et al. 2023 (SemDeDup: near-duplicates by embedding distance). Nearest neighbours
come from scikit-learn's `NearestNeighbors` (exact, fine for thousands of vectors); at web scale the
same query runs on an approximate index such as faiss (IVF/HNSW), whose cost grows far slower than
the N^2 of comparing all pairs.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from mmcourse.data import zero_shot_metadata as meta
from mmcourse.evaluation.zero_shot import accuracy, build_zero_shot_classifier, encode_texts, zero_shot_logits


def _check_scores(scores: torch.Tensor, name: str = "scores") -> torch.Tensor:
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1 or not scores.is_floating_point():
        raise ValueError(f"{name} must be a 1-D float tensor (N,)")
    if scores.numel() == 0:
        raise ValueError(f"{name} is empty")
    if not torch.isfinite(scores).all():
        raise ValueError(f"{name} contains NaN or inf")
    return scores


@torch.no_grad()
def clip_scores(model: torch.nn.Module, tokenizer: Callable, images: torch.Tensor, captions: Sequence[str],
                batch_size: int = 1024) -> torch.Tensor:
    """The CLIP score of each pair: the cosine similarity of its image and caption embeddings.

    Args:
        model: a CLIP (`encode_image`, `encode_text`), the "judge"; put in eval mode here.
        tokenizer: its tokenizer.
        images: (N, C, H, W) float.
        captions: N strings, caption i belongs to image i.
        batch_size: images per forward pass.

    Returns:
        (N,) float32 on the CPU, in [-1, 1]. (CLIPScore for captions, `caption_metrics.clip_score`,
        is 2.5 * max(this, 0).)

    Raises:
        ValueError: not (N, C, H, W) images with N captions.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or isinstance(captions, str) \
            or len(captions) != images.shape[0]:
        raise ValueError(f"pass (N, C, H, W) images and N captions, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__} "
                         f"and {1 if isinstance(captions, str) else len(captions)} captions")
    model.eval()
    device = next(model.parameters()).device
    image_emb = torch.cat([model.encode_image(x.to(device), normalize=True).float().cpu()
                           for x in images.split(batch_size)])  # (N, D)
    text_emb = encode_texts(model, tokenizer, list(captions), batch_size=batch_size)  # (N, D)
    return (image_emb * text_emb).sum(-1)  # (N,)


def top_fraction(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """(N,) bool mask keeping the round(fraction * N) highest scores (at least one); ties are kept
    in index order (a stable sort).

    Raises:
        ValueError: fraction outside (0, 1], scores not a finite 1-D float tensor.
    """
    scores = _check_scores(scores)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    n_keep = max(1, int(round(fraction * scores.numel())))
    order = torch.argsort(scores, descending=True, stable=True)
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    keep[order[:n_keep]] = True
    return keep


def choose_threshold(scores: torch.Tensor, is_noisy: torch.Tensor, max_noise: float = 0.1) -> float:
    """The threshold a held-out set with known noise supports: the LOWEST score t such that the pairs
    scoring >= t are at most `max_noise` noisy (so as much data as possible is kept at that purity).

    Args:
        scores: (N,) CLIP scores of held-out pairs.
        is_noisy: (N,) bool, True for pairs known to be wrong.
        max_noise: the largest acceptable fraction of noisy pairs among those kept, in [0, 1).

    Returns:
        t as a float (one of `scores`); `inf` if even the single best pair is noisy (keep nothing).

    Raises:
        ValueError: shapes differ, max_noise outside [0, 1), is_noisy not bool.
    """
    scores = _check_scores(scores)
    if not isinstance(is_noisy, torch.Tensor) or is_noisy.dtype != torch.bool or is_noisy.shape != scores.shape:
        raise ValueError(f"is_noisy must be a bool tensor of shape {tuple(scores.shape)}")
    if isinstance(max_noise, bool) or not isinstance(max_noise, (int, float)) or not 0 <= max_noise < 1:
        raise ValueError(f"max_noise must be in [0, 1), got {max_noise!r}")
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_scores = scores[order]
    noisy_kept = is_noisy[order].double().cumsum(0)  # noisy pairs among the top k+1
    kept = torch.arange(1, scores.numel() + 1, dtype=torch.float64)
    # A threshold keeps every pair tied with it: only the last position of a run of ties is a cut.
    last_of_tie = torch.ones_like(sorted_scores, dtype=torch.bool)
    last_of_tie[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    ok = (noisy_kept / kept <= max_noise + 1e-6) & last_of_tie  # 1e-6: a float32 share of 1/5 is 0.200000003
    if not bool(ok.any()):
        return float("inf")
    return float(sorted_scores[ok.nonzero().flatten()[-1]])


class Duplicates(NamedTuple):
    """What `near_duplicates` finds: `keep` (N,) bool (one pair per group), `group` (N,) long
    (pairs in one group share an id), `n_groups` (groups with more than one member)."""

    keep: torch.Tensor
    group: torch.Tensor
    n_groups: int


def near_duplicates(embeddings: torch.Tensor, radius: float) -> Duplicates:
    """Group near-copies by embedding, SemDeDup style, and keep the first pair of each group.

    Two pairs are linked when the cosine distance (1 - cosine similarity) of their embeddings is at
    most `radius` (scikit-learn's `NearestNeighbors.radius_neighbors_graph`, exact); a group is a
    connected component of those links (`scipy.sparse.csgraph.connected_components`), so a chain
    of near-copies is one group. The pair with the lowest index of each group is kept.

    Args:
        embeddings: (N, D) float image embeddings (normalised or not: cosine distance).
        radius: cosine distance in [0, 2].

    Returns:
        `Duplicates(keep, group, n_groups)`.

    Raises:
        ValueError: not a 2-D float tensor, an all-zero row, radius outside [0, 2].
    """
    from scipy.sparse.csgraph import connected_components
    from sklearn.neighbors import NearestNeighbors

    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2 or not embeddings.is_floating_point():
        raise ValueError("embeddings must be a 2-D float tensor (N, D)")
    if not torch.isfinite(embeddings).all():
        raise ValueError("embeddings contain NaN or inf")
    if bool((embeddings.norm(dim=1) == 0).any()):
        raise ValueError("an embedding is all zeros: its cosine distance is undefined")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not 0 <= radius <= 2:
        raise ValueError(f"radius must be a cosine distance in [0, 2], got {radius!r}")
    x = embeddings.detach().double().cpu().numpy()
    graph = NearestNeighbors(radius=radius, metric="cosine").fit(x).radius_neighbors_graph(x)
    _, group = connected_components(graph, directed=False)
    group = torch.from_numpy(group.astype(np.int64))
    first = torch.full((int(group.max()) + 1,), len(group), dtype=torch.long).scatter_reduce(
        0, group, torch.arange(len(group)), reduce="amin")  # lowest index per group
    keep = torch.zeros(len(group), dtype=torch.bool)
    keep[first] = True
    return Duplicates(keep, group, int((torch.bincount(group) > 1).sum()))


@torch.no_grad()
def downstream_scores(model: torch.nn.Module, tokenizer: Callable, images: torch.Tensor, labels: torch.Tensor,
                      classnames: Sequence[str] = meta.DIGIT_CLASSNAMES,
                      templates: Sequence[str] = meta.DIGIT_TEMPLATES_HELDOUT) -> dict[str, float]:
    """What a filtered data set is judged by (DataComp: the same model, trained the same way, then
    evaluated): zero-shot top-1 accuracy, and class-level text→image retrieval, the mean average
    precision of each class prompt ranking all images (scikit-learn's `average_precision_score`).

    Args:
        model: a CLIP; tokenizer: its tokenizer.
        images: (N, C, H, W) test images; labels: (N,) their classes.
        classnames, templates: the zero-shot classifier's (default: digits, held-out templates).

    Returns:
        {"zero_shot_top1": fraction, "retrieval_mAP": fraction}.
    """
    from sklearn.metrics import average_precision_score

    model.eval()
    device = next(model.parameters()).device
    weights = build_zero_shot_classifier(model, tokenizer, list(classnames), list(templates)).cpu()  # (D, C)
    emb = torch.cat([model.encode_image(x.to(device), normalize=True).float().cpu()
                     for x in images.split(1024)])  # (N, D)
    logits = zero_shot_logits(emb, weights)  # (N, C)
    onehot = torch.nn.functional.one_hot(labels, len(classnames)).numpy()
    return {"zero_shot_top1": accuracy(logits, labels, topk=(1,))["top1"],
            "retrieval_mAP": float(average_precision_score(onehot, logits.numpy(), average="macro"))}
