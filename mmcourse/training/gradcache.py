"""Gradient caching: the exact gradient of a large contrastive batch with the memory of a chunk.

A contrastive loss couples every pair of the batch (each image's negatives are all the other
captions), so the batch cannot be cut into micro-batches whose gradients are added up, as
ordinary gradient accumulation does: each micro-batch would see only its own negatives, a
different (easier) loss. Gradient caching (Gao, Zhang, Han & Callan, 2021, "Scaling Deep
Contrastive Learning Batch Size under Memory Limited Setup", the GradCache library) keeps the
loss exact in two passes:

1. embed every chunk *without* building a graph (memory: one chunk's activations at a time),
   concatenate the (B, D) embeddings, compute the full-batch loss with gradients with respect
   to the embeddings and the `logit_scale` (and `logit_bias`) only: the "cached gradients";
2. re-run each chunk *with* a graph and backpropagate its slice of the cached embedding
   gradients, `torch.autograd.backward(emb_chunk, grad_chunk)`; the parameters' gradients add up to
   exactly the full-batch gradients (the chain rule, split over the batch).

Each chunk's random number generator state is recorded before pass 1 and restored before
pass 2, so dropout draws the same masks in both passes. BatchNorm breaks the equality: its
statistics are those of a chunk, not of the batch (and pass 1 updates its running statistics
too). open_clip's `--accum-freq` does the same re-forwarding for exact tower gradients.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
import torch.nn as nn

from mmcourse.objectives.losses import clip_loss, siglip_loss

__all__ = ["grad_cache_step", "split_batch", "contrastive_loss"]


def contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                     logit_bias: torch.Tensor | None = None) -> torch.Tensor:
    """`clip_loss`, or `siglip_loss` when a `logit_bias` is given (a SigLIP model)."""
    if logit_bias is not None:
        return siglip_loss(image_embeds, text_embeds, logit_scale, logit_bias)
    return clip_loss(image_embeds, text_embeds, logit_scale)


def split_batch(batch: dict[str, Any], chunk_size: int) -> list[dict[str, Any]]:
    """Cut a batch dict into chunks of `chunk_size` rows (the last may be smaller); tensors whose
    first dimension is the batch size are sliced, other entries are shared.

    Raises:
        ValueError: chunk_size < 1, or a batch that is not a dict with an "image" tensor.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if not isinstance(batch, dict) or not isinstance(batch.get("image"), torch.Tensor):
        raise ValueError("gradient caching needs a batch dict with 'image', 'input_ids' (and 'attention_mask')")
    n = batch["image"].shape[0]
    chunks = []
    for r0 in range(0, n, chunk_size):
        chunks.append({k: v[r0:r0 + chunk_size] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n else v
                       for k, v in batch.items()})
    return chunks


def _forward(model: nn.Module, chunk: dict[str, Any]):
    return model(image=chunk["image"], input_ids=chunk["input_ids"], attention_mask=chunk.get("attention_mask"))


def _get_rng(device: torch.device):
    return (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def grad_cache_step(model: nn.Module, batch: dict[str, torch.Tensor], chunk_size: int,
                    loss_fn: Callable[..., torch.Tensor] = contrastive_loss,
                    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                    scale: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss) -> torch.Tensor:
    """Forward and backward of one batch in chunks, with the full batch's exact loss and gradients.

    Accumulates into the parameters' `.grad` (call `optimizer.zero_grad()` before) exactly what
    `loss_fn(full batch).backward()` would, for models without BatchNorm.

    Args:
        model: a CLIP-like model: `model(image=..., input_ids=..., attention_mask=...)` returns
            `image_embeds` (B, D), `text_embeds` (B, D), `logit_scale` (exponentiated) and
            `logit_bias` (None for CLIP).
        batch: {"image": (B, C, H, W), "input_ids": (B, L), "attention_mask": (B, L), ...}.
        chunk_size: rows per chunk (the memory of a chunk's activations is what is needed).
        loss_fn: `loss_fn(image_embeds, text_embeds, logit_scale, logit_bias) -> scalar` over
            the whole batch (default: `contrastive_loss`).
        autocast: a context factory wrapped around every forward (mixed precision).
        scale: applied to the loss before its backward (a `GradScaler.scale`).

    Returns:
        The full-batch loss, detached (float32).
    """
    chunks = split_batch(batch, chunk_size)
    device = batch["image"].device
    # pass 1: embeddings without graphs, remembering each chunk's RNG state
    rng, images, texts = [], [], []
    with torch.no_grad():
        for chunk in chunks:
            rng.append(_get_rng(device))
            with autocast():
                out = _forward(model, chunk)
            images.append(out["image_embeds"])
            texts.append(out["text_embeds"])
    rng_after = _get_rng(device)
    # the cached gradients: full-batch loss, differentiated w.r.t. embeddings and scalars only
    image_embeds = torch.cat(images).detach().requires_grad_()  # (B, D)
    text_embeds = torch.cat(texts).detach().requires_grad_()  # (B, D)
    logit_scale = out["logit_scale"].detach().requires_grad_()
    logit_bias = out["logit_bias"].detach().requires_grad_() if out["logit_bias"] is not None else None
    with autocast():
        loss = loss_fn(image_embeds, text_embeds, logit_scale, logit_bias)
    if not torch.isfinite(loss):
        return loss.detach()  # the caller reports the divergence
    scale(loss).backward()
    grad_images = image_embeds.grad.split([len(t) for t in images])
    grad_texts = text_embeds.grad.split([len(t) for t in texts])
    # pass 2: each chunk again, with its graph, backpropagating its slice of the cached gradients
    for i, chunk in enumerate(chunks):
        _set_rng(rng[i], device)
        with autocast():
            out = _forward(model, chunk)
        outputs = [out["image_embeds"], out["text_embeds"]]
        grads = [grad_images[i].to(outputs[0].dtype), grad_texts[i].to(outputs[1].dtype)]
        if i == 0:  # the scalars are shared by all chunks: their gradient is counted once
            outputs.append(out["logit_scale"])
            grads.append(logit_scale.grad.to(out["logit_scale"].dtype))
            if logit_bias is not None:
                outputs.append(out["logit_bias"])
                grads.append(logit_bias.grad.to(out["logit_bias"].dtype))
        torch.autograd.backward(outputs, grads)  # = (outputs[k] * grads[k]).sum() summed, backpropagated
    _set_rng(rng_after, device)  # the generators advance as for one set of forwards
    return loss.detach()
