"""Cross-modal retrieval as open_clip reports it (`get_clip_metrics`): `retrieval_ranks` and
`retrieval_metrics` (`image_to_text_R@1`, `text_to_image_mean_rank`, ...), also when an image has
several captions (COCO / Flickr30k style). Embeddings are L2-normalised here, in float32."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from mmcourse.norms import compute_dtype
from mmcourse.evaluation.zero_shot import RECALL_KS, _check_embeddings, _unit


# --------------------------------------------------------------------------------- retrieval
def retrieval_ranks(image_emb: torch.Tensor, text_emb: torch.Tensor,
                    logit_scale: float | torch.Tensor | None = None,
                    text_to_image_index: torch.Tensor | Sequence[int] | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based rank of the correct match for every image and every caption.

    The rank is the position of the correct item when all candidates are sorted by similarity,
    best first (0 = retrieved first). Ties are broken by candidate index, the lower index first
    (a stable sort). An image with several captions takes the rank of its best-ranked caption.

    Args:
        image_emb: (N, D) image embeddings, raw or normalised: rows are L2-normalised here (in
            float32 for float16/bfloat16), so candidates are ranked by cosine similarity.
        text_emb: (T, D) caption embeddings, same convention.
        logit_scale: optional positive multiplier applied as open_clip does; ranks do not
            depend on it.
        text_to_image_index: (T,) index of the image each caption describes. Default:
            caption i describes image i (then T must equal N).

    Returns:
        `(image_to_text, text_to_image)`: (N,) and (T,) LongTensors of 0-based ranks.
    """
    _check_embeddings("image_emb", image_emb)
    _check_embeddings("text_emb", text_emb)
    n, t = image_emb.shape[0], text_emb.shape[0]
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"image_emb and text_emb must have the same embedding size, got "
                         f"{image_emb.shape[1]} and {text_emb.shape[1]}")
    if text_to_image_index is None:
        if n != t:
            raise ValueError(f"got {n} images and {t} captions: pass text_to_image_index to say which "
                             "image each caption describes")
        index = torch.arange(n)
    else:
        index = torch.as_tensor(text_to_image_index, dtype=torch.long).cpu()
        if index.shape != (t,):
            raise ValueError(f"text_to_image_index must have shape ({t},), one image per caption, "
                             f"got {tuple(index.shape)}")
        if index.min() < 0 or index.max() >= n:
            raise ValueError(f"text_to_image_index has image indices outside [0, {n})")
        missing = torch.ones(n, dtype=torch.bool)
        missing[index] = False
        if missing.any():
            raise ValueError(f"images {missing.nonzero().flatten().tolist()[:10]} have no caption")
    scale = 1.0 if logit_scale is None else logit_scale
    if float(scale) <= 0:
        raise ValueError(f"logit_scale must be positive, got {float(scale)}")
    dtype = compute_dtype(torch.promote_types(image_emb.dtype, text_emb.dtype))
    if not dtype.is_floating_point:
        dtype = torch.float32
    image, text = _unit(image_emb.detach(), "image_emb", dtype=dtype), _unit(text_emb.detach(), "text_emb", dtype=dtype)
    logits_per_image = (scale * image @ text.t()).cpu()  # (N, T), as open_clip on normalised features

    # Position of every candidate in its row's ranking: rank_of[i, j] = where j lands for query i.
    order = torch.argsort(logits_per_image, dim=1, descending=True, stable=True)  # (N, T)
    rank_of = torch.empty_like(order).scatter_(1, order, torch.arange(t).expand(n, t))
    positive = index.view(1, t) == torch.arange(n).view(n, 1)  # (N, T): caption j describes image i
    image_to_text = rank_of.masked_fill(~positive, t).min(dim=1).values  # best caption, (N,)

    order_t = torch.argsort(logits_per_image.t(), dim=1, descending=True, stable=True)  # (T, N)
    text_to_image = (order_t == index.view(t, 1)).int().argmax(dim=1)  # (T,)
    return image_to_text, text_to_image


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor,
                      logit_scale: float | torch.Tensor | None = None,
                      text_to_image_index: torch.Tensor | Sequence[int] | None = None,
                      ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Image→text and text→image retrieval metrics, named and computed as open_clip does.

    For each direction: `{direction}_mean_rank` (mean of 1-based ranks), `{direction}_median_rank`
    (floor of the median 0-based rank, plus 1) and `{direction}_R@k` (fraction of queries whose
    correct item is among the first k), with direction `image_to_text` or `text_to_image`.
    With one caption per image this equals open_clip's `get_clip_metrics` (ties: see
    `retrieval_ranks`). With several captions per image (COCO: 5), an image counts as retrieved
    if ANY of its captions is in the top k, and every caption has one correct image.

    Args:
        image_emb: (N, D) image embeddings, raw or normalised (normalised here, see
            `retrieval_ranks`; on normalised input the numbers equal open_clip's).
        text_emb: (T, D) caption embeddings, same convention.
        logit_scale: optional positive multiplier (ranks do not depend on it).
        text_to_image_index: (T,) image index of each caption; default `arange(N)`.
        ks: the k of each R@k.

    Returns:
        dict of Python floats.
    """
    ranks = retrieval_ranks(image_emb, text_emb, logit_scale, text_to_image_index)
    metrics = {}
    for name, rank in zip(("image_to_text", "text_to_image"), ranks):
        preds = rank.numpy()
        metrics[f"{name}_mean_rank"] = float(preds.mean() + 1)
        metrics[f"{name}_median_rank"] = float(np.floor(np.median(preds)) + 1)
        for k in ks:
            metrics[f"{name}_R@{k}"] = float(np.mean(preds < k))
    return metrics
