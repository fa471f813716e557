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

from mmcourse.objectives.losses import Scalar, _check_pair, _upcast, clip_loss, siglip_loss

__all__ = ["world_info", "gather_with_grad", "local_loss_labels", "clip_loss_distributed", "ring_shift",
           "siglip_loss_distributed", "DistributedContrastiveLoss"]


def world_info() -> tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `x` (n, D) into (W·n, D), rank order, keeping gradients: the
    backward sends each rank the sum over ranks of the gradients of its rows
    (`torch.distributed.nn.functional.all_gather`). All ranks must pass the same shape."""
    rank, world = world_info()
    if world == 1:
        return x
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # torch 2.14 suggests a private API instead; this one stays supported
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(x), dim=0)


def local_loss_labels(n_local: int, rank: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Labels of rank `rank`'s n_local rows against the gathered columns: row i of this rank is
    global pair `n_local * rank + i` (open_clip's `ClipLoss` with `local_loss=True`).

    Raises:
        ValueError: n_local < 1 or rank < 0.
    """
    if n_local < 1 or rank < 0:
        raise ValueError(f"need n_local >= 1 and rank >= 0, got n_local={n_local}, rank={rank}")
    return torch.arange(n_local, device=device) + n_local * rank


def clip_loss_distributed(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: Scalar,
                          local_loss: bool = False) -> torch.Tensor:
    """The CLIP loss of the whole batch spread over the processes (open_clip's `ClipLoss` with
    `gather_with_grad=True`).

    Args:
        image_emb, text_emb: this rank's (n, D) L2-normalised embeddings (the same n on every rank).
        logit_scale: exponentiated scale (the same on every rank).
        local_loss: False: every rank computes the full loss over all N = W·n pairs; True: this
            rank's n rows against all N columns in both directions (mean over ranks = full loss).

    Returns:
        A scalar: the full loss (local_loss=False) or this rank's share (local_loss=True); with
        DDP's gradient averaging either gives the full batch's gradients.
    """
    _check_pair(image_emb, text_emb, "image_emb", "text_emb")
    rank, world = world_info()
    if world == 1:
        return clip_loss(image_emb, text_emb, logit_scale)
    all_images, all_texts = gather_with_grad(image_emb), gather_with_grad(text_emb)  # (N, D) each
    if local_loss:
        logits_per_image = logit_scale * image_emb @ all_texts.T  # (n, N): my images, every text
        logits_per_text = logit_scale * text_emb @ all_images.T  # (n, N): my texts, every image
        labels = local_loss_labels(image_emb.shape[0], rank, image_emb.device)
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
    logits = _upcast(logit_scale * image_emb @ text_emb.T + logit_bias)  # (n, n)
    labels = -torch.ones_like(logits)
    if positives:
        labels += 2 * torch.eye(logits.shape[0], device=logits.device)
    return -F.logsigmoid(labels * logits).sum() / image_emb.shape[0]


def siglip_loss_distributed(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: Scalar,
                            logit_bias: Scalar) -> torch.Tensor:
    """The SigLIP loss over all ranks' pairs, texts passed around the ring (open_clip's
    `SigLipLoss(rank, world_size, dist_impl="shift")`).

    Args:
        image_emb, text_emb: this rank's (n, D) L2-normalised embeddings, the same n on every rank.
        logit_scale, logit_bias: exponentiated scale and bias.

    Returns:
        This rank's images against all N texts, summed over pairs and divided by n: the mean
        over ranks equals `siglip_loss` of the full batch (which divides its N² sum by N).
    """
    _check_pair(image_emb, text_emb, "image_emb", "text_emb")
    rank, world = world_info()
    if world == 1:
        return siglip_loss(image_emb, text_emb, logit_scale, logit_bias)
    loss = _sigmoid_terms(image_emb, text_emb, logit_scale, logit_bias, positives=True)
    visitor = text_emb
    for _ in range(world - 1):
        visitor = ring_shift(visitor)  # the texts of rank - 1, then rank - 2, ...: all negatives
        loss = loss + _sigmoid_terms(image_emb, visitor, logit_scale, logit_bias, positives=False)
    return loss


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
