"""Looking inside a trained CLIP: what lesson 06 measures.

- `image_text_similarity`: the cosine similarity of every image with every text (word-order and
  binding probes are built from it).
- `modality_gap`: how far apart the image and text embeddings sit on the sphere
  (Liang et al., "Mind the Gap", 2022: the distance between the two centroids).
- `occlusion_map`: which pixels the image–text similarity depends on (Zeiler & Fergus, 2014:
  grey out a patch, see how much the similarity drops).
- `expected_calibration_error`: how far confidence is from accuracy, the part of a classifier
  that the temperature changes while its ranking stays the same (Guo et al., 2017).

Embeddings may be raw or normalised: every cosine similarity here is taken on vectors
L2-normalised in float32 by `mmcourse.norms` (an all-zero embedding stays zero, never NaN).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from mmcourse.evaluation.zero_shot import _check_embeddings, _model_device, _unit, encode_texts
from mmcourse.norms import l2_norm, l2_normalize


@torch.no_grad()
def image_text_similarity(model: torch.nn.Module, tokenizer: Callable, images: torch.Tensor,
                          texts: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
    """Cosine similarity of every image with every text.

    Args:
        model: a `CLIP` (`encode_image`, `encode_text`).
        tokenizer: `tok(list[str]) -> {"input_ids", "attention_mask"}`.
        images: (N, C, H, W) images, preprocessed as in training.
        texts: T strings.
        device: where to run; default the model's device.

    Returns:
        (N, T) cosine similarities in [-1, 1], on the CPU.
    """
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    try:
        image_emb = l2_normalize(model.encode_image(images.to(device)).float()).cpu()  # (N, D)
        text_emb = encode_texts(model, tokenizer, list(texts), device=device)  # (T, D), unit norm
    finally:
        model.train(was_training)
    _check_embeddings("image embeddings", image_emb)
    return image_emb @ text_emb.T


def modality_gap(image_emb: torch.Tensor, text_emb: torch.Tensor) -> float:
    """Distance between the centroid of the image embeddings and that of the text embeddings.

    Both sets are L2-normalised first, in float32 (they live on the unit sphere, where CLIP
    compares them), then `|| mean(images) - mean(texts) ||`; raw and normalised embeddings give
    the same gap. 0 means the two clouds share a centre; the largest
    possible value is 2 (two antipodal points).

    Args:
        image_emb: (N, D) image embeddings.
        text_emb: (M, D) text embeddings (M need not equal N).

    Returns:
        The gap as a Python float.
    """
    _check_embeddings("image_emb", image_emb)
    _check_embeddings("text_emb", text_emb)
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"image_emb and text_emb must have the same embedding size, got "
                         f"{image_emb.shape[1]} and {text_emb.shape[1]}")
    gap = _unit(image_emb, "image_emb").mean(0) - _unit(text_emb, "text_emb").mean(0)  # (D,)
    return l2_norm(gap).item()


def _starts(size: int, patch: int, stride: int) -> list[int]:
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:  # cover the last rows/columns too
        starts.append(size - patch)
    return starts


@torch.no_grad()
def occlusion_map(model: torch.nn.Module, image: torch.Tensor, text_emb: torch.Tensor,
                  patch_size: int = 2, stride: int = 1, baseline: float = 0.0,
                  batch_size: int = 256) -> torch.Tensor:
    """Occlusion sensitivity: how much hiding each pixel lowers the image–text similarity.

    Every `patch_size` x `patch_size` window (moved by `stride`) is set to `baseline` in turn,
    the occluded image is embedded, and the drop `cos(image, text) - cos(occluded, text)` is
    credited to every pixel of the window; a pixel's value is the mean drop over the windows
    that cover it. Positive = the pixel supports the text; negative = it argues against it.

    Args:
        model: has `encode_image(image) -> (B, D)`.
        image: (C, H, W) one preprocessed image.
        text_emb: (D,) the text side: a caption embedding or a zero-shot classifier column (raw
            or normalised: it is L2-normalised here, in float32).
        patch_size: side of the occluding square, in pixels.
        stride: step between windows, in pixels (1 gives the smoothest map).
        baseline: the value an occluded pixel takes, in the model's input units (use the
            background value, e.g. 0 for digits scaled to [0, 1]).
        batch_size: occluded images per forward pass.

    Returns:
        (H, W) map of similarity drops, on the CPU.
    """
    if image.ndim != 3:
        raise ValueError(f"image must have shape (C, H, W), got {tuple(image.shape)}")
    if text_emb.ndim != 1:
        raise ValueError(f"text_emb must have shape (D,), got {tuple(text_emb.shape)}")
    _, h, w = image.shape
    if not (1 <= patch_size <= min(h, w)) or stride < 1:
        raise ValueError(f"need 1 <= patch_size <= {min(h, w)} and stride >= 1, got {patch_size}, {stride}")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        text = _unit(text_emb.to(device), "text_emb", dim=0, dtype=torch.float32)  # (D,)
        windows = [(y, x) for y in _starts(h, patch_size, stride) for x in _starts(w, patch_size, stride)]
        occluded = image.to(device).unsqueeze(0).repeat(len(windows), 1, 1, 1)  # (P, C, H, W)
        for i, (y, x) in enumerate(windows):
            occluded[i, :, y:y + patch_size, x:x + patch_size] = baseline
        reference = l2_normalize(model.encode_image(image.to(device).unsqueeze(0)).float()) @ text  # (1,)
        sims = torch.cat([l2_normalize(model.encode_image(chunk).float()) @ text
                          for chunk in occluded.split(batch_size)])  # (P,)
    finally:
        model.train(was_training)
    drops = (reference - sims).cpu()
    if not torch.isfinite(drops).all():
        raise ValueError("the model produced NaN or inf embeddings for an occluded image")
    total, count = torch.zeros(h, w), torch.zeros(h, w)
    for (y, x), drop in zip(windows, drops):
        total[y:y + patch_size, x:x + patch_size] += drop
        count[y:y + patch_size, x:x + patch_size] += 1
    return total / count


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error: the gap between confidence and accuracy, averaged over bins.

    Predictions are grouped by confidence (the top probability) into `n_bins` equal-width bins
    over (0, 1]; ECE = sum over bins of (bin size / N) * |accuracy(bin) - mean confidence(bin)|.

    Args:
        probs: (N, C) class probabilities (rows sum to 1), e.g. `logits.softmax(-1)`.
        labels: (N,) true classes.
        n_bins: number of confidence bins.

    Returns:
        ECE in [0, 1] as a Python float.
    """
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"need probs (N, C) and labels (N,), got {tuple(probs.shape)} and {tuple(labels.shape)}")
    if not torch.isfinite(probs).all():
        raise ValueError("probs contain NaN or inf")
    if not torch.allclose(probs.sum(-1), torch.ones(probs.shape[0], dtype=probs.dtype), atol=1e-3):
        raise ValueError("each row of probs must sum to 1: pass logits.softmax(-1), not logits")
    confidence, pred = probs.max(dim=-1)
    correct = (pred == labels).float()
    bins = torch.clamp(torch.ceil(confidence * n_bins).long() - 1, 0, n_bins - 1)  # bin b = (b/n, (b+1)/n]
    ece = torch.zeros(())
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.float().mean() * (correct[in_bin].mean() - confidence[in_bin].float().mean()).abs()
    return ece.item()
