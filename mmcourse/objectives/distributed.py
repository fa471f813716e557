"""Contrastive losses across processes: every process holds part of the batch, the loss is the
whole batch's.

With `torch.distributed` each process (rank r of `world_size` W) embeds its own n pairs. A
contrastive loss needs every pair's embedding as a negative, so the processes exchange
embeddings; two things must be right for the gradients to equal one process's full batch:

1. **Gradients through the exchange.** `torch.distributed.all_gather` copies tensors without a
   graph: the gradient of the loss with respect to another rank's embeddings is lost. The
   autograd-aware `torch.distributed.nn.functional.all_gather` sends it back to the rank that
   owns the rows (its backward sums the gradients that every rank computed for them).
2. **DDP's averaging.** `DistributedDataParallel` *averages* the parameters' gradients over the
   W processes. Every rank computes the full loss L (or its share L_r with mean L); the
   exchange's backward *sums* the W ranks' gradients for each row, which is W·∂L/∂x; DDP's
   average divides by W again: exactly ∂L/∂θ, the full batch's gradient. (Gathering without
   gradients and then multiplying the loss by W, or forgetting either step, is the classic
   way to get a loss or a gradient W times too small.)

`clip_loss_distributed` is open_clip's `ClipLoss(local_loss=..., gather_with_grad=True)`:
with `local_loss=False` each rank builds the whole (N, N) logit matrix; with `local_loss=True`
only its n rows against all N columns, the labels of its rows being
`arange(n) + n * rank` (`local_loss_labels`), which costs n·N instead of N² per rank.
`siglip_loss_distributed` is open_clip's `SigLipLoss` with `world_size > 1` ("shift"): each
rank scores its images against its own texts, then passes the texts around the ring W - 1
times (each step: send to the right neighbour, receive from the left, with gradients), adding
the negatives-only loss of each visitor; no rank ever holds all N texts.

**Unequal local batches** (a rank whose data ran short, filtered samples, shards of different
sizes) are supported, with padding and a mask, as open_clip users ask for: the ranks first
all-gather their sizes (one small collective of W pairs (n_r, D)); the embeddings are padded to
the largest n_r for the exchange and the padding is cut off after it (it receives no gradient).
Each rank's share is then its rows' summed loss times W / N (N = sum of the n_r), so the mean
over ranks is still the full batch's loss and DDP's averaging still gives its gradient; with
equal batches that is the usual mean over the n rows. A rank with no pairs, or embeddings of
another width, is a `ValueError` raised on every rank, naming every rank's size (the sizes are
gathered before any exchange, so no rank is left waiting in a collective the others skipped).

Functions here run in one process as well (world size 1): they then equal `clip_loss` /
`siglip_loss`. Sources: open_clip `loss.py` (`gather_features`, `ClipLoss`, `SigLipLoss`,
`neighbour_exchange_with_grad`); Zhai et al. 2023 (SigLIP, section 3.3, chunked implementation).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from mmcourse.objectives.losses import Scalar, _check_embeddings, _check_pair, _upcast, clip_loss, siglip_loss

__all__ = ["world_info", "gather_sizes", "gather_with_grad", "local_loss_labels", "clip_loss_distributed",
           "ring_shift", "siglip_loss_distributed", "DistributedContrastiveLoss"]


def world_info() -> tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_sizes(image_emb: torch.Tensor, text_emb: torch.Tensor | None = None) -> list[int]:
    """Every rank's local batch size n_r, checked on every rank: one all-gather of a few ints.

    The local checks (shapes, dtype, NaN) run first but do not raise alone: a rank that raised
    while the others entered the exchange would leave them waiting (or let gloo fail with
    "Received data size doesn't match"). Every rank learns every rank's verdict and all raise.

    Args:
        image_emb: this rank's (n, D) embeddings; text_emb: the paired (n, D) texts (optional).

    Returns:
        [n_0, ..., n_{W-1}] (just [n] in one process).

    Raises:
        ValueError: on every rank, naming each rank's (n, D), when a rank's embeddings are
            invalid (its own error says how), it has no pairs, or the ranks' widths D differ.
    """
    problem = None
    try:
        if text_emb is None:
            _check_embeddings(image_emb, "image_emb")
        else:
            _check_pair(image_emb, text_emb, "image_emb", "text_emb")
    except ValueError as error:
        problem = error
    rank, world = world_info()
    shape = tuple(image_emb.shape) if isinstance(image_emb, torch.Tensor) and image_emb.dim() == 2 else (-1, -1)
    if world == 1:
        if problem is not None:
            raise problem
        return [shape[0]]
    device = image_emb.device if isinstance(image_emb, torch.Tensor) else "cpu"
    local = torch.tensor([*shape, problem is None], dtype=torch.int64, device=device)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local)
    info = [tuple(int(v) for v in t.tolist()) for t in gathered]  # (n, D, ok) per rank
    shown = ", ".join(f"rank {r}: {n} pairs of width {d}" for r, (n, d, _) in enumerate(info))
    if any(n == 0 for n, _, _ in info):
        raise ValueError(f"every rank needs at least one pair for a contrastive loss; local batches are {shown}")
    if len({d for _, d, _ in info}) > 1:
        raise ValueError(f"the ranks' embeddings differ in width; local batches are {shown}")
    bad = [r for r, (_, _, ok) in enumerate(info) if not ok]
    if bad:
        mine = f" (here: {problem})" if problem is not None else ""
        raise ValueError(f"invalid embeddings on rank(s) {bad}{mine}; local batches are {shown}")
    return [n for n, _, _ in info]


def gather_with_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate every rank's `x` (n_r, D) into (N, D), N = sum of the n_r, rank order, keeping
    gradients: the backward sends each rank the sum over ranks of the gradients of its rows
    (`torch.distributed.nn.functional.all_gather`). Unequal n_r are padded with zero rows to
    the largest for the exchange and cut back after it.

    Args:
        x: this rank's (n_r, D) tensor.
        sizes: every rank's n_r from `gather_sizes` (None: gathered here).
    """
    rank, world = world_info()
    if world == 1:
        return x
    import warnings

    from torch.distributed.nn.functional import all_gather

    sizes = gather_sizes(x) if sizes is None else sizes
    most = max(sizes)
    padded = F.pad(x, (0, 0, 0, most - x.shape[0])) if x.shape[0] < most else x  # (max n_r, D)
    with warnings.catch_warnings():  # torch 2.14 suggests a private API instead; this one stays supported
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)  # (N, D): padding cut off


def local_loss_labels(n_local: int, rank: int, device: torch.device | str | None = None,
                      sizes: list[int] | None = None) -> torch.Tensor:
    """Labels of rank `rank`'s n_local rows against the gathered columns: row i of this rank is
    global pair `n_local * rank + i` (open_clip's `ClipLoss` with `local_loss=True`), or, with
    unequal local batches `sizes`, `sum(sizes[:rank]) + i`.

    Raises:
        ValueError: n_local < 1 or rank < 0, or sizes that do not give this rank n_local pairs.
    """
    if n_local < 1 or rank < 0:
        raise ValueError(f"need n_local >= 1 and rank >= 0, got n_local={n_local}, rank={rank}")
    if sizes is None:
        return torch.arange(n_local, device=device) + n_local * rank
    if rank >= len(sizes) or sizes[rank] != n_local:
        raise ValueError(f"sizes {sizes} do not give rank {rank} its {n_local} pairs")
    return torch.arange(n_local, device=device) + sum(sizes[:rank])


def clip_loss_distributed(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: Scalar,
                          local_loss: bool = False) -> torch.Tensor:
    """The CLIP loss of the whole batch spread over the processes (open_clip's `ClipLoss` with
    `gather_with_grad=True`).

    Args:
        image_emb, text_emb: this rank's (n_r, D) L2-normalised embeddings (n_r may differ
            between ranks: see the module docstring).
        logit_scale: exponentiated scale (the same on every rank).
        local_loss: False: every rank computes the full loss over all N pairs; True: this
            rank's n_r rows against all N columns in both directions, summed and times W / N
            (mean over ranks = full loss; with equal batches the mean over its rows).

    Returns:
        A scalar: the full loss (local_loss=False) or this rank's share (local_loss=True); with
        DDP's gradient averaging either gives the full batch's gradients.

    Raises:
        ValueError: image and text shapes differ; on every rank, a rank without pairs or with
            embeddings of another width (naming each rank's size).
    """
    rank, world = world_info()
    if world == 1:
        return clip_loss(image_emb, text_emb, logit_scale)
    sizes = gather_sizes(image_emb, text_emb)  # checks every rank's inputs, raises on all of them
    all_images, all_texts = gather_with_grad(image_emb, sizes), gather_with_grad(text_emb, sizes)  # (N, D) each
    if local_loss:
        logits_per_image = logit_scale * image_emb @ all_texts.T  # (n, N): my images, every text
        logits_per_text = logit_scale * text_emb @ all_images.T  # (n, N): my texts, every image
        labels = local_loss_labels(image_emb.shape[0], rank, image_emb.device, sizes)
        if len(set(sizes)) > 1:  # unequal: this rank's rows summed, times W / N, so the mean over ranks is the loss
            total = (F.cross_entropy(_upcast(logits_per_image), labels, reduction="sum")
                     + F.cross_entropy(_upcast(logits_per_text), labels, reduction="sum"))
            return total / 2 * (world / sum(sizes))
    else:
        logits_per_image = logit_scale * all_images @ all_texts.T  # (N, N)
        logits_per_text = logits_per_image.T
        labels = torch.arange(all_images.shape[0], device=image_emb.device)
    return (F.cross_entropy(_upcast(logits_per_image), labels) + F.cross_entropy(_upcast(logits_per_text), labels)) / 2


class _RingShift(torch.autograd.Function):
    """Send `x` to rank + 1, receive from rank - 1; the gradient travels the other way."""

    @staticmethod
    def forward(ctx, x):
        return _exchange(x.contiguous(), direction=+1)

    @staticmethod
    def backward(ctx, grad):
        return _exchange(grad.contiguous(), direction=-1)


def _exchange(x: torch.Tensor, direction: int) -> torch.Tensor:
    rank, world = world_info()
    received = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x, (rank + direction) % world),
           dist.P2POp(dist.irecv, received, (rank - direction) % world)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


def ring_shift(x: torch.Tensor) -> torch.Tensor:
    """The tensor of rank - 1 (mod W), with gradients (open_clip's `neighbour_exchange_with_grad`)."""
    return _RingShift.apply(x)


def _sigmoid_terms(image_emb, text_emb, logit_scale, logit_bias, positives: bool) -> torch.Tensor:
    """The summed -log sigmoid(label * logit) of every (image, text) pair: (n, m) terms."""
    logits = _upcast(logit_scale * image_emb @ text_emb.T + logit_bias)  # (n, m)
    labels = -torch.ones_like(logits)
    if positives:
        labels += 2 * torch.eye(*logits.shape, device=logits.device)
    return -F.logsigmoid(labels * logits).sum()


def siglip_loss_distributed(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: Scalar,
                            logit_bias: Scalar) -> torch.Tensor:
    """The SigLIP loss over all ranks' pairs, texts passed around the ring (open_clip's
    `SigLipLoss(rank, world_size, dist_impl="shift")`).

    Args:
        image_emb, text_emb: this rank's (n_r, D) L2-normalised embeddings (n_r may differ
            between ranks: the texts travel padded to the largest n_r, the padding cut off).
        logit_scale, logit_bias: exponentiated scale and bias.

    Returns:
        This rank's images against all N texts, summed over pairs and times W / N (with equal
        batches: divided by n): the mean over ranks equals `siglip_loss` of the full batch
        (which divides its N² sum by N).

    Raises:
        ValueError: as `clip_loss_distributed`.
    """
    rank, world = world_info()
    if world == 1:
        return siglip_loss(image_emb, text_emb, logit_scale, logit_bias)
    sizes = gather_sizes(image_emb, text_emb)  # checks every rank's inputs, raises on all of them
    most = max(sizes)
    loss = _sigmoid_terms(image_emb, text_emb, logit_scale, logit_bias, positives=True)
    visitor = F.pad(text_emb, (0, 0, 0, most - text_emb.shape[0])) if text_emb.shape[0] < most else text_emb
    for step in range(1, world):
        visitor = ring_shift(visitor)  # the texts of rank - 1, then rank - 2, ...: all negatives
        n_visitor = sizes[(rank - step) % world]
        loss = loss + _sigmoid_terms(image_emb, visitor[:n_visitor], logit_scale, logit_bias, positives=False)
    return loss * (world / sum(sizes))


class DistributedContrastiveLoss:
    """A `loss_fn` for `mmcourse.training.loop.fit` on several processes: `loss_fn(model, batch)` embeds
    this rank's batch and returns `clip_loss_distributed` (or `siglip_loss_distributed` for a
    model with a `logit_bias`). In one process it equals `mmcourse.training.loop.clip_loss_fn`.

    Args:
        local_loss: see `clip_loss_distributed`.
    """

    def __init__(self, local_loss: bool = True):
        self.local_loss = local_loss

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        out = model(image=batch["image"], input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
        if out["logit_bias"] is not None:
            return siglip_loss_distributed(out["image_embeds"], out["text_embeds"], out["logit_scale"], out["logit_bias"])
        return clip_loss_distributed(out["image_embeds"], out["text_embeds"], out["logit_scale"], self.local_loss)

    def __repr__(self) -> str:
        return f"DistributedContrastiveLoss(local_loss={self.local_loss})"
