"""False negatives in a contrastive batch, and the multi-positive CLIP loss that stops pushing them apart
(lesson 12).

The CLIP loss treats caption j != i as a negative for image i. When two pairs of a batch show the same
thing (same class, a duplicated image, an identical caption), that "negative" is a **false negative**:
the loss pushes apart what should be close, and it cannot reach zero. The multi-positive loss replaces
the one-hot target of each row by a uniform distribution over all its positives (soft-target cross
entropy), as UniCL (Yang et al. 2022, "Unified Contrastive Learning in Image-Text-Label Space") and
supervised contrastive learning (Khosla et al. 2020) do; with `positives = eye(N)` it IS the CLIP loss.

    positives = positives_from_labels(batch["label"])             # (B, B) bool, diagonal True
    loss = multi_positive_clip_loss(img, txt, logit_scale, positives)
    fit(model, loader, config, loss_fn=multi_positive_loss_fn)     # positives from batch["label"]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mmcourse.objectives.losses import _check_pair, _check_scalar, _upcast
from mmcourse.norms import unit_vectors


def positives_from_labels(labels: torch.Tensor) -> torch.Tensor:
    """(B,) integer labels -> (B, B) bool, True where pair i and pair j have the same label.

    Raises:
        ValueError: labels not a 1-D integer tensor.
    """
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point():
        raise ValueError(f"labels must be a 1-D integer tensor (B,), got "
                         f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    return labels[:, None] == labels[None, :]  # (B, B)


def positives_from_captions(input_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) token ids -> (B, B) bool, True where two captions are the same token sequence (padding
    included, so captions padded to one length compare whole). Needs no label: what web data offers.

    Raises:
        ValueError: input_ids not a 2-D tensor.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be a 2-D tensor (B, L)")
    return (input_ids[:, None, :] == input_ids[None, :, :]).all(-1)  # (B, B)


def _check_positives(positives: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(positives, torch.Tensor) or positives.shape != (n, n):
        got = tuple(positives.shape) if isinstance(positives, torch.Tensor) else type(positives).__name__
        raise ValueError(f"positives must be a ({n}, {n}) tensor, got {got}")
    if positives.dtype != torch.bool:
        raise TypeError(f"positives must be a bool tensor, got {positives.dtype}")
    if not bool(positives.diagonal().all()):
        raise ValueError("every pair must be its own positive: positives.diagonal() has False entries")
    return positives


def multi_positive_clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale,
                             positives: torch.Tensor) -> torch.Tensor:
    """The symmetric CLIP loss with soft targets spread over every positive of each row.

    Args:
        image_emb, text_emb: (N, D) L2-normalised embeddings; row i of each is pair i.
        logit_scale: the exponentiated scale 1/τ >= 0 (e.g. `model.logit_scale.exp()`).
        positives: (N, N) bool, True where text j is a right caption for image i; the diagonal must
            be True. Row i's target puts 1/(number of positives in row i) on each; the text→image
            direction uses the columns (`positives.T`), so an asymmetric mask is allowed.

    Returns:
        A scalar float32 tensor: (CE(image→text, targets) + CE(text→image, targets of positives.T)) / 2.
        Equals `mmcourse.losses.clip_loss` when `positives` is the identity.

    Raises:
        ValueError: bad shapes, embeddings not normalised, logit_scale < 0, a (N, N) mask of another
            size or with a False diagonal. TypeError: positives not bool.
    """
    _check_pair(image_emb, text_emb, "image_emb", "text_emb")
    unit_vectors(image_emb, "image_emb", normalize=False)
    unit_vectors(text_emb, "text_emb", normalize=False)
    _check_scalar(logit_scale, "logit_scale", allow_zero=True)
    positives = _check_positives(positives, image_emb.shape[0]).to(image_emb.device)
    logits_per_image = _upcast(logit_scale * image_emb @ text_emb.T)  # (N, N)
    target_i = positives.float() / positives.sum(1, keepdim=True)  # rows sum to 1
    target_t = positives.T.float() / positives.T.sum(1, keepdim=True)
    return (F.cross_entropy(logits_per_image, target_i) + F.cross_entropy(logits_per_image.T, target_t)) / 2


def multi_positive_loss_fn(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """A `loss_fn` for `fit`: `multi_positive_clip_loss` with positives from `batch["label"]`.

    Raises:
        ValueError: the batch has no "label".
    """
    if "label" not in batch:
        raise ValueError("the multi-positive loss needs batch['label'] to know which pairs share a class")
    out = model(image=batch["image"], input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
    return multi_positive_clip_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"],
                                    positives_from_labels(batch["label"]))


@torch.no_grad()
def false_negative_stats(logits_per_image: torch.Tensor, positives: torch.Tensor) -> dict[str, float]:
    """How many false negatives a batch holds and what they cost the plain CLIP loss (image→text).

    Args:
        logits_per_image: (N, N) scaled similarities, pair i on the diagonal.
        positives: (N, N) bool, True where pair j is also right for image i (diagonal True).

    Returns:
        {"per_row": mean number of false negatives per image (off-diagonal positives),
         "fraction": their share of all N(N-1) negatives,
         "softmax_mass": mean softmax probability the model puts on them,
         "loss": the plain image→text cross entropy,
         "loss_without": the same with the false negatives left out of each row's softmax}.
        `loss - loss_without` is what the false negatives add to the loss.
    """
    n = logits_per_image.shape[0]
    positives = _check_positives(positives, n)
    if n < 2:
        raise ValueError("a batch of one pair has no negatives")
    logits = logits_per_image.float()
    false = positives & ~torch.eye(n, dtype=torch.bool, device=positives.device)  # (N, N)
    target = torch.arange(n, device=logits.device)
    return {"per_row": float(false.sum(1).float().mean()),
            "fraction": float(false.sum()) / (n * (n - 1)),
            "softmax_mass": float((logits.softmax(1) * false).sum(1).mean()),
            "loss": float(F.cross_entropy(logits, target)),
            "loss_without": float(F.cross_entropy(logits.masked_fill(false, float("-inf")), target))}
