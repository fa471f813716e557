"""Load or train: lesson 12's small CLIPs, each trained on one set of (noisy, filtered)
pairs with the same compute.

    model, tokenizer, history = train_on_pairs(pairs)                 # 100 steps of 128 pairs, ~1.5 s CPU
    model, tokenizer, history = train_on_pairs(pairs.subset(keep))    # same steps on the kept pairs
    model, tokenizer, history = train_on_pairs(pairs, multi_positive=True)
    judge, tokenizer, history = load_judge(trusted)                  # the CLIP-score filter's model

DataComp's rule: the model and the training budget are fixed, only the data changes. So every
model here sees `steps * batch_size` pairs drawn from its data set (a `RandomSampler` with
`num_samples`: a small kept set is cycled through more often, never trained for fewer steps).
The model is a smaller digits CLIP than lessons 04-06's (a 2-stage CNN, a bag-of-words text tower,
width 32) so that a lesson can afford tens of them: on clean pairs it reaches about 96 %
zero-shot accuracy in under two CPU seconds. (60 steps gave about 90 %, and runs on noisy pairs
that varied by 30 points between seeds; 100 steps varied by under 10.) Each model is
a `Recipe` (`pairs_recipe`) trained once by `train_or_load`, under a key that includes a hash of
the pairs' content.
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import NamedTuple

import torch

from mmcourse.data.noisy_pairs import Pairs
from mmcourse.data.tokenizer import default_tokenizer
from mmcourse.models.clip import CLIP, CLIPConfig
from mmcourse.objectives.multi_positive import multi_positive_loss_fn
from mmcourse.recipes.cache import Recipe, train_or_load
from mmcourse.training.types import History, TrainConfig

__all__ = ["DEFAULT_STEPS", "DEFAULT_BATCH_SIZE", "JUDGE_STEPS", "TrainedOnPairs", "cleaning_clip_config",
           "cleaning_train_config", "pairs_loader", "pairs_recipe", "train_on_pairs", "load_judge"]

DEFAULT_STEPS = 100
DEFAULT_BATCH_SIZE = 128
JUDGE_STEPS = 60  # the judge's 200 trusted pairs: 100 steps (64 epochs) overfit them (lower zero-shot accuracy)


class TrainedOnPairs(NamedTuple):
    """What `train_on_pairs` returns; unpacks as `model, tokenizer, history = ...`."""

    model: CLIP
    tokenizer: object
    history: History


def cleaning_clip_config(tokenizer=None) -> CLIPConfig:
    """Lesson 12's small digits CLIP: CNN (16, 32) channels, bag-of-words text tower, width 32.
    Digit captions carry their meaning in one word (the digit's name), so word order adds little."""
    tokenizer = tokenizer or default_tokenizer()
    return CLIPConfig(image_encoder="cnn", image_size=8, in_channels=1, image_width=32, cnn_channels=(16, 32),
                      text_encoder="bow", vocab_size=tokenizer.vocab_size, context_length=tokenizer.context_length,
                      text_width=32, pad_token_id=tokenizer.pad_token_id, embed_dim=32)


def cleaning_train_config(**changes) -> TrainConfig:
    """One pass over the step-limited loader, peak learning rate 2e-3, 10 % warmup, no progress bar."""
    return replace(TrainConfig(epochs=1, lr=2e-3, weight_decay=0.1, warmup_fraction=0.1, progress=False), **changes)


def pairs_loader(pairs: Pairs, tokenizer, steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH_SIZE,
                 seed: int = 0):
    """A `DataLoader` of exactly `steps` batches of `batch_size` pairs drawn from `pairs`: a seeded
    `RandomSampler` without replacement, reshuffled each time the set is used up.

    Raises:
        ValueError: steps < 1, or fewer pairs than one batch.
    """
    from torch.utils.data import DataLoader, RandomSampler

    from mmcourse.data import make_collate

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if len(pairs) < batch_size:
        raise ValueError(f"{len(pairs)} pairs cannot fill a batch of {batch_size}: keep more pairs or use smaller batches")
    sampler = RandomSampler(pairs, num_samples=steps * batch_size, generator=torch.Generator().manual_seed(seed))
    return DataLoader(pairs, batch_size=batch_size, sampler=sampler, collate_fn=make_collate(tokenizer),
                      drop_last=True)


def pairs_recipe(pairs: Pairs, steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0,
                 multi_positive: bool = False, tokenizer=None) -> Recipe:
    """The `Recipe` of the small CLIP trained on `pairs` (see `train_on_pairs` for the arguments).

    Raises:
        TypeError: pairs not a `Pairs`. ValueError: as `pairs_loader`.
    """
    if not isinstance(pairs, Pairs):
        raise TypeError(f"pairs must be a mmcourse.data.noisy_pairs.Pairs, got {type(pairs).__name__}")
    tokenizer = tokenizer or default_tokenizer()
    config = cleaning_clip_config(tokenizer)
    pairs_loader(pairs, tokenizer, steps, batch_size, seed)  # validates before anything is trained or cached
    return Recipe("pairs_clip", lambda: CLIP(config), config, cleaning_train_config(seed=seed),
                  make_loader=lambda: pairs_loader(pairs, tokenizer, steps, batch_size, seed),
                  data_key={"pairs": pairs.fingerprint(), "n": len(pairs), "steps": steps, "batch_size": batch_size,
                            "loss": "multi_positive_labels" if multi_positive else "clip"},
                  loss_fn=multi_positive_loss_fn if multi_positive else None)


def train_on_pairs(pairs: Pairs, steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0,
                   multi_positive: bool = False, cache_dir: str | os.PathLike | None = None,
                   force: bool = False) -> TrainedOnPairs:
    """The small CLIP trained on `pairs` for `steps` batches, from the cache or trained now (about 1.5 s).

    Args:
        pairs: the training pairs (any `Pairs`: clean, noisy, filtered); at least `batch_size` of them.
        steps, batch_size: the compute: `steps` batches of `batch_size` pairs, whatever `len(pairs)`.
        seed: of the initial weights and of the sampling.
        multi_positive: train with `objectives.multi_positive.multi_positive_loss_fn` (pairs of the same
            label are positives) instead of the plain CLIP loss.
        cache_dir, force: where to cache (default `MMCOURSE_CACHE` or `~/.cache/mmcourse`); retrain.

    Returns:
        `TrainedOnPairs(model in eval mode, tokenizer, history)`; `history.time[-1]` is the training
        time of the run that made it (wall-clock seconds).

    Raises:
        TypeError: pairs not a `Pairs`. ValueError: steps < 1 or fewer pairs than one batch.
    """
    tokenizer = default_tokenizer()
    model, history, _ = train_or_load(pairs_recipe(pairs, steps, batch_size, seed, multi_positive, tokenizer),
                                      cache=cache_dir, force=force)
    return TrainedOnPairs(model, tokenizer, history)


def load_judge(trusted: Pairs, steps: int = JUDGE_STEPS, seed: int = 0,
               cache_dir: str | os.PathLike | None = None) -> TrainedOnPairs:
    """The CLIP-score filter's judge: the same small CLIP trained on a small trusted set for `steps`
    batches (fewer than `train_on_pairs`' default: 200 pairs are quickly overfit).

    Returns:
        `TrainedOnPairs(judge, tokenizer, history)`.
    """
    return train_on_pairs(trusted, steps=steps, seed=seed, cache_dir=cache_dir)
