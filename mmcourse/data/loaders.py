"""What every data set shares: the split names, caption templates, the collate function
that tokenizes captions into a batch, and seeded randomness that stays random in workers.

`make_collate(tokenizer)` batches items into
`{"image": (B, C, H, W), "input_ids": (B, L), "attention_mask": (B, L), "label": (B,),
"index": (B,), "caption": list[str]}`; `_loaders` turns a dict of split datasets into
(train, val, test) `DataLoader`s, train shuffled with a seeded generator.

`PerProcessGenerator(seed)` is the `torch.Generator` of every seeded random transform (BERT
masking in a collate function, ITM negatives, ...). A plain `torch.Generator().manual_seed(seed)`
inside a collate function is *copied* into each `DataLoader` worker in the same state, so the
workers draw the same numbers: with `num_workers=2`, batches 0 and 1 get the same masks. Torch
reseeds its global generator in each worker (`base_seed + worker_id`, the base seed drawn from
the loader's `generator` every epoch) but cannot know about generators a transform owns.
`PerProcessGenerator.get()` therefore returns, in each process, its own generator: seeded with
`seed` in the main process of rank 0 (so one process draws what `manual_seed(seed)` draws), and
with (`seed`, the distributed rank, the worker's torch seed `get_worker_info().seed`) elsewhere.
So workers and ranks differ, a new epoch's workers differ from the last epoch's, and a run with a
seeded `DataLoader` (every loader of the course) repeats exactly. (Hugging Face's
`DataCollatorForLanguageModeling(seed=...)` reseeds its workers with `seed + worker_id`, which
repeats the same draws every epoch unless the workers are persistent.)
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

SPLITS = ("train", "val", "test")

__all__ = ["SPLITS", "make_collate", "PerProcessGenerator"]
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
def make_collate(tokenizer: Callable[[list[str]], dict[str, torch.Tensor]],
                 pad_to_longest: bool = True) -> Callable[[list[dict]], dict]:
    """A `DataLoader` collate function that stacks images and tokenizes captions.

    Args:
        tokenizer: callable `tokenizer(list[str]) -> {"input_ids": (B, L), "attention_mask": (B, L)}`
            (e.g. `mmcourse.data.tokenizer.default_tokenizer()`).
        pad_to_longest: cut the padding columns after the batch's longest caption, so L is that
            caption's length (Hugging Face's `DataCollatorWithPadding` default, `padding="longest"`).
            The models mask padding and read positions 0..L-1, so every output is the same (to
            float rounding); a Shapes batch of 256 has at most 14 of 20 positions real, and a digits
            batch 10. False keeps the tokenizer's fixed `context_length`.

    Raises:
        ValueError: an empty batch, a tokenizer that is not callable, or (with `pad_to_longest`) one that
            does not pad on the right, whose cut would drop real tokens.

    Returns:
        `collate(items) -> {"image": (B, C, H, W) float, "input_ids": (B, L) long,
        "attention_mask": (B, L) long, "label": (B,) long, "index": (B,) long, "caption": list[str]}`;
        any other tensor an item holds (e.g. "image_features" computed in advance) is stacked too.
    """
    if not callable(tokenizer):
        raise ValueError(f"tokenizer must be callable, got {type(tokenizer).__name__}")

    def collate(items: list[dict]) -> dict:
        if not items:
            raise ValueError("cannot collate an empty batch")
        captions = [it["caption"] for it in items]
        tokens = tokenizer(captions)
        if pad_to_longest:
            length = int(tokens["attention_mask"].sum(1).max())  # the longest caption, [SOT] and [EOT] included
            if tokens["attention_mask"][:, length:].any():  # real tokens after the padding: not right-padded
                raise ValueError("pad_to_longest=True needs a tokenizer that pads on the right (real tokens first, "
                                 "attention_mask 1...1 0...0); this one does not: pass pad_to_longest=False")
            tokens = {k: tokens[k][:, :length] for k in ("input_ids", "attention_mask")}
        batch = {"image": torch.stack([it["image"] for it in items])} if "image" in items[0] else {}  # (B, C, H, W)
        batch |= {
            "input_ids": tokens["input_ids"],  # (B, L)
            "attention_mask": tokens["attention_mask"],  # (B, L)
            "label": torch.tensor([it["label"] for it in items], dtype=torch.long),  # (B,)
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),  # (B,)
            "caption": captions,
        }
        for key, value in items[0].items():  # features computed in advance (e.g. "image_features"), stacked
            if isinstance(value, torch.Tensor) and key not in batch:
                batch[key] = torch.stack([it[key] for it in items])
        return batch

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


# ------------------------------------------------------------------------------ seeded randomness
class PerProcessGenerator:
    """A seeded `torch.Generator` per process: the same draws from run to run, different draws in
    each `DataLoader` worker, each distributed rank and each epoch's workers (see the module
    docstring).

    Args:
        seed: a non-negative int.

    Use `get()` at the moment of drawing (not in `__init__`: that runs in the main process):
    `torch.bernoulli(p, generator=self.generator.get())`.

    Raises:
        ValueError: a seed that is not a non-negative int.
    """

    def __init__(self, seed: int):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = seed
        self._key: tuple | None = None
        self._generator: torch.Generator | None = None

    @staticmethod
    def process_key() -> tuple[int, int | None, int | None]:
        """(distributed rank or 0, DataLoader worker id or None, the worker's torch seed or None)."""
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        info = torch.utils.data.get_worker_info()
        return (rank, None, None) if info is None else (rank, info.id, info.seed)

    def seed_for(self, key: tuple[int, int | None, int | None]) -> int:
        """The seed of the generator of the process with `process_key()` `key`."""
        rank, worker, worker_seed = key
        if rank == 0 and worker is None:
            return self.seed
        entropy = [self.seed, rank] + ([] if worker is None else [worker, worker_seed])
        return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)  # < 2**63

    def get(self) -> torch.Generator:
        """This process's generator (made on the first call in each process, then kept: its draws go on)."""
        key = self.process_key()
        if self._generator is None or key != self._key:
            self._generator, self._key = torch.Generator().manual_seed(self.seed_for(key)), key
        return self._generator

    def __getstate__(self) -> dict:
        return {"seed": self.seed, "_key": None, "_generator": None}  # a spawned worker starts its own

    def __repr__(self) -> str:
        return f"PerProcessGenerator(seed={self.seed})"
