"""What every data set shares: the split names, caption templates, and the collate function
that tokenizes captions into a batch.

`make_collate(tokenizer)` batches items into
`{"image": (B, C, H, W), "input_ids": (B, L), "attention_mask": (B, L), "label": (B,),
"index": (B,), "caption": list[str]}`; `_loaders` turns a dict of split datasets into
(train, val, test) `DataLoader`s, train shuffled with a seeded generator.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

SPLITS = ("train", "val", "test")
_SPLIT_ID = {s: i for i, s in enumerate(SPLITS)}


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {SPLITS}")
    return split


def _resolve_templates(templates, split: str, train: Sequence[str], heldout: Sequence[str],
                       fields: Sequence[str]) -> tuple[str, ...]:
    """"train" / "heldout" / None (train templates for the train split, held-out otherwise) /
    an explicit sequence of format strings, each checked to contain `fields`."""
    if templates is None:
        templates = "train" if split == "train" else "heldout"
    if isinstance(templates, str) and templates in ("train", "heldout"):
        return tuple(train if templates == "train" else heldout)
    if isinstance(templates, str):
        raise ValueError(f"templates must be 'train', 'heldout' or a list of format strings, got {templates!r}")
    templates = tuple(templates)
    if not templates:
        raise ValueError("templates is empty")
    for t in templates:
        if not isinstance(t, str) or not any(f in t for f in fields):
            raise ValueError(f"template {t!r} has none of the fields {list(fields)}")
    return templates



# ------------------------------------------------------------------------------ batching
def make_collate(tokenizer: Callable[[list[str]], dict[str, torch.Tensor]]) -> Callable[[list[dict]], dict]:
    """A `DataLoader` collate function that stacks images and tokenizes captions.

    Args:
        tokenizer: callable `tokenizer(list[str]) -> {"input_ids": (B, L), "attention_mask": (B, L)}`
            (e.g. `mmcourse.data.tokenizer.default_tokenizer()`).

    Returns:
        `collate(items) -> {"image": (B, C, H, W) float, "input_ids": (B, L) long,
        "attention_mask": (B, L) long, "label": (B,) long, "index": (B,) long, "caption": list[str]}`.
    """
    if not callable(tokenizer):
        raise ValueError(f"tokenizer must be callable, got {type(tokenizer).__name__}")

    def collate(items: list[dict]) -> dict:
        if not items:
            raise ValueError("cannot collate an empty batch")
        captions = [it["caption"] for it in items]
        tokens = tokenizer(captions)
        return {
            "image": torch.stack([it["image"] for it in items]),  # (B, C, H, W)
            "input_ids": tokens["input_ids"],  # (B, L)
            "attention_mask": tokens["attention_mask"],  # (B, L)
            "label": torch.tensor([it["label"] for it in items], dtype=torch.long),  # (B,)
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),  # (B,)
            "caption": captions,
        }

    return collate


def _loaders(datasets: dict[str, Dataset], tokenizer, batch_size: int, seed: int, num_workers: int):
    if tokenizer is None:
        from mmcourse.data.tokenizer import default_tokenizer

        tokenizer = default_tokenizer()
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    collate = make_collate(tokenizer)
    return tuple(
        DataLoader(ds, batch_size=batch_size, shuffle=(split == "train"), collate_fn=collate,
                   num_workers=num_workers, generator=torch.Generator().manual_seed(seed) if split == "train" else None)
        for split, ds in datasets.items())
