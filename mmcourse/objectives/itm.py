"""Image–text matching (ITM) with hard negatives, as ALBEF (Li et al., 2021) trains it.

A matcher reads an image and a caption *together* (a fusion model with a 2-way head: match or
not) instead of comparing two separately computed embeddings. Its training pairs: the B matching
pairs of a batch (label 1), and for each image one non-matching caption and for each caption one
non-matching image (label 0), 3B pairs in all. Random non-matching captions are easy; ALBEF
draws **hard negatives**: for image i, caption j with probability

    w_ij = softmax_j(sim_ij)  over the captions j that are not i's positive,

where `sim` is the contrastive similarity (a CLIP's `logits_per_image`): captions the contrastive
model confuses with the right one are drawn most often. Captions for images: the same on `sim.T`.

Two details ALBEF's code (`model_pretrain.py`) gets wrong, fixed here:
- a caption *equal* to the positive (Shapes repeats captions) is a false negative: it is never
  drawn, and neither is an image whose caption equals the positive (`same_caption_mask`);
- ALBEF computes the softmax over the whole row, zeroes the positive, and calls
  `torch.multinomial`, which crashes when every remaining weight underflowed to 0 (it happens in
  half precision). Here the softmax runs over the allowed entries only (the same distribution,
  renormalised), so an allowed entry always has weight > 0; a row with *no* allowed entry raises
  a ValueError naming it, or with `on_empty="skip"` gets index -1 and its negative pair is dropped.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

ON_EMPTY = ("error", "skip")


def same_caption_mask(captions: Sequence[str] | torch.Tensor) -> torch.Tensor:
    """(B, B) bool, True where caption i equals caption j (the diagonal included): the pairs that
    must never serve as negatives.

    Args:
        captions: B strings, or (B, L) token ids (rows compared whole).
    """
    if isinstance(captions, torch.Tensor):
        if captions.dim() != 2:
            raise ValueError(f"token ids must be (B, L), got shape {tuple(captions.shape)}")
        return (captions[:, None, :] == captions[None, :, :]).all(-1)  # (B, B)
    captions = list(captions)
    if not captions:
        raise ValueError("captions is empty")
    ids = {c: k for k, c in enumerate(dict.fromkeys(captions))}
    code = torch.tensor([ids[c] for c in captions])
    return code[:, None] == code[None, :]  # (B, B)


def _check(sim: torch.Tensor, same: torch.Tensor) -> None:
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be a square (B, B) similarity matrix, got shape {tuple(sim.shape)}")
    if same.shape != sim.shape or same.dtype != torch.bool:
        raise ValueError(f"same must be a (B, B) bool mask like sim {tuple(sim.shape)}, got "
                         f"{tuple(same.shape)} {same.dtype}")
    if not torch.isfinite(sim).all():
        raise ValueError("sim contains NaN or inf")


def hard_negative_weights(sim: torch.Tensor, same: torch.Tensor | None = None) -> torch.Tensor:
    """ALBEF's sampling distribution: row i is softmax_j(sim_ij) over the allowed j.

    Args:
        sim: (B, B) similarities (logits: scaled cosine similarities), row i = image i vs every caption.
        same: (B, B) bool, True where j must not be drawn for i (the positive and its duplicates);
            default: the diagonal only.

    Returns:
        (B, B) float weights; each row sums to 1 (0 where `same`), or is all zeros when the row
        has no allowed entry.
    """
    if same is None:
        same = torch.eye(len(sim), dtype=torch.bool, device=sim.device)
    _check(sim, same)
    logits = sim.float().masked_fill(same, float("-inf"))
    has_any = (~same).any(dim=1, keepdim=True)  # (B, 1)
    weights = torch.softmax(logits.masked_fill(~has_any, 0.0), dim=1)  # (B, B), the softmax of allowed entries
    return weights.masked_fill(same, 0.0) * has_any


def sample_hard_negatives(sim: torch.Tensor, same: torch.Tensor | None = None, generator: torch.Generator | None = None,
                          hard: bool = True, on_empty: str = "error") -> torch.Tensor:
    """One negative per row: index j drawn with probability `hard_negative_weights(sim, same)[i, j]`
    (or uniformly among the allowed j when `hard=False`), independently for every row.

    Args:
        sim: (B, B) similarities; for negative captions of images pass `logits_per_image`, for
            negative images of captions its transpose.
        same: (B, B) bool mask of forbidden pairs (default: the diagonal).
        generator: a `torch.Generator` for reproducible draws.
        hard: softmax-weighted (ALBEF) or uniform ("random negatives").
        on_empty: what to do with a row whose every entry is forbidden (e.g. every caption of the
            batch is the same): "error" raises a ValueError, "skip" returns -1 for that row.

    Returns:
        (B,) long indices of the negatives (-1 for skipped rows).
    """
    if on_empty not in ON_EMPTY:
        raise ValueError(f"on_empty must be one of {ON_EMPTY}, got {on_empty!r}")
    if same is None:
        same = torch.eye(len(sim), dtype=torch.bool, device=sim.device)
    weights = hard_negative_weights(sim, same) if hard else (~same).float()
    _check(sim, same)
    empty = ~(~same).any(dim=1)  # (B,)
    if empty.any() and on_empty == "error":
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"rows {rows[:10]} have no allowed negative: every caption in the batch equals the "
                         f"positive (use a larger or more varied batch, or on_empty='skip')")
    out = torch.full((len(sim),), -1, dtype=torch.long, device=sim.device)
    ok = ~empty
    if ok.any():
        out[ok] = torch.multinomial(weights[ok], 1, generator=generator).squeeze(1)  # one draw per row
    return out


def build_itm_pairs(batch: dict, sim: torch.Tensor, generator: torch.Generator | None = None, hard: bool = True,
                    on_empty: str = "skip") -> dict[str, torch.Tensor]:
    """The 3B (or fewer) ITM training pairs of a batch: the B positives, then for each image a
    negative caption, then for each caption a negative image.

    Args:
        batch: a collated batch with "image" (B, C, H, W) or "image_features" (B, ...) computed in
            advance, "input_ids" (B, L), "attention_mask" (B, L) and "caption" (B strings; captions
            equal to a positive are never drawn).
        sim: (B, B) image-to-caption similarities (e.g. a CLIP's `logits_per_image`).
        generator, hard, on_empty: as `sample_hard_negatives` (skipped rows add no pair).

    Returns:
        {"image": (P, C, H, W) (or "image_features": (P, ...)), "input_ids": (P, L), "attention_mask":
        (P, L), "label": (P,) long (1 = match)}, P = B + the drawn negatives.

    Raises:
        ValueError: the batch holds neither "image" nor "image_features".
    """
    image_key = next((k for k in ("image_features", "image") if k in batch), None)
    if image_key is None:
        raise ValueError("the batch holds neither 'image' nor 'image_features'")
    same = same_caption_mask(batch["caption"]).to(sim.device)
    neg_text = sample_hard_negatives(sim, same, generator, hard, on_empty)  # (B,) a caption per image
    neg_image = sample_hard_negatives(sim.T, same, generator, hard, on_empty)  # (B,) an image per caption
    B = len(sim)
    idx = torch.arange(B, device=sim.device)
    rows_t, rows_i = neg_text >= 0, neg_image >= 0
    image_idx = torch.cat([idx, idx[rows_t], neg_image[rows_i]])
    text_idx = torch.cat([idx, neg_text[rows_t], idx[rows_i]])
    label = torch.cat([torch.ones(B, dtype=torch.long), torch.zeros(int(rows_t.sum() + rows_i.sum()), dtype=torch.long)])
    return {image_key: batch[image_key][image_idx], "input_ids": batch["input_ids"][text_idx],
            "attention_mask": batch["attention_mask"][text_idx], "label": label.to(sim.device)}


def itm_loss_fn(similarity: Callable[[dict], torch.Tensor], hard: bool = True,
                seed: int = 0) -> Callable[[nn.Module, dict], torch.Tensor]:
    """A `loss_fn` for `fit` that trains a 2-way matcher (`FusionModel(num_classes=2)`) on the
    ITM pairs of each batch: cross-entropy over match / no match.

    Args:
        similarity: `similarity(batch) -> (B, B)` image-caption similarities used to draw the hard
            negatives (e.g. a frozen CLIP's logits, computed without gradient).
        hard: hard (ALBEF) or random negatives.
        seed: seed of the negatives' generator (the draws repeat from run to run). It is a
            `PerProcessGenerator`: on several distributed ranks (or inside a DataLoader worker)
            each process draws its own negatives; one process draws what `manual_seed(seed)` draws.
    """
    from mmcourse.data.loaders import PerProcessGenerator

    generators = PerProcessGenerator(seed)

    def loss_fn(model: nn.Module, batch: dict) -> torch.Tensor:
        with torch.no_grad():
            sim = similarity(batch).detach().cpu()
        image_key = "image_features" if "image_features" in batch else "image"  # features computed in advance
        pairs = build_itm_pairs({k: batch[k] for k in (image_key, "input_ids", "attention_mask", "caption")},
                                sim, generators.get(), hard)
        device = batch[image_key].device
        ids, mask = pairs["input_ids"].to(device), pairs["attention_mask"].to(device)
        if image_key == "image":
            logits = model(pairs["image"], ids, mask)
        else:
            logits = model(None, ids, mask, image_features=pairs["image_features"])
        return F.cross_entropy(logits, pairs["label"].to(device))

    return loss_fn
