"""Lesson 09's trained captioners: a prefix captioner on the lessons' CLIP, trained with
`fit(loss_fn=caption_loss)`: shipped with the course, or trained and cached (`load_captioner`)."""
from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn as nn

from mmcourse.models.clip import CLIP
from mmcourse.models.captioner import CaptionerConfig, PrefixCaptioner, caption_loss




class PretrainedCaptioner(NamedTuple):
    """What `load_captioner` returns; unpacks as `captioner, tokenizer, history = ...`."""

    model: PrefixCaptioner
    tokenizer: Any
    history: Any


def captioner_train_config(dataset: str = "shapes", **changes):
    """Shapes: 3 epochs (120 steps over the 5,000 scenes in batches of 128), peak learning rate 2e-3:
    about 10 s of CPU (frozen tower), and greedy captions already name colour and shape of nearly
    every scene with a seen combination (8 epochs lower the loss from about 0.53 to 0.27 nats
    per token and cost three times as long). Digits: 12 epochs (120 steps over 1,257 images,
    about 9 s): the caption names the right digit for about 99% of the test digits."""
    from mmcourse.training.types import TrainConfig

    epochs = {"shapes": 3, "digits": 12}[dataset]
    return replace(TrainConfig(epochs=epochs, lr=2e-3, weight_decay=0.01, warmup_fraction=0.05), **changes)


def _weights_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def load_captioner(dataset: str = "shapes", freeze_image_tower: bool = True, config: CaptionerConfig | None = None,
                   train_config=None, clip: CLIP | None = None, cache_dir: str | os.PathLike | None = None,
                   force: bool = False, batch_size: int = 128, seed: int = 0,
                   callbacks: Sequence = ()) -> PretrainedCaptioner:
    """A prefix captioner on the lessons' cached CLIP, from the cache or trained now with `fit`.

    Args:
        dataset: "shapes" (single-object scenes, training split of `load_shapes_clip()`'s data,
            so the held-out colour-shape combinations are never seen) or "digits".
        freeze_image_tower: keep the CLIP image tower fixed, or fine-tune it with the decoder.
        config: the captioner (default `CaptionerConfig.for_clip(clip, tokenizer)`).
        train_config: default `captioner_train_config(dataset)`.
        clip: the CLIP to build on (default `load_shapes_clip()` or `load_digits_clip()`).
        cache_dir, force, batch_size, seed, callbacks: as `mmcourse.recipes.clip.load_shapes_clip`.

    Returns:
        `PretrainedCaptioner(model in eval mode, tokenizer, history)`; the cache key includes a
        hash of the CLIP's weights, so a retrained CLIP means a retrained captioner.
    """
    from torch.utils.data import DataLoader

    from mmcourse.data import CaptionedDigits, Shapes, make_collate
    from mmcourse.recipes.clip import load_digits_clip, load_shapes_clip
    from mmcourse.recipes.cache import Recipe, train_or_load

    if dataset not in ("shapes", "digits"):
        raise ValueError(f"dataset must be 'shapes' or 'digits', got {dataset!r}")
    if clip is None:
        load = load_shapes_clip if dataset == "shapes" else load_digits_clip
        clip, tokenizer, _ = load(cache_dir=cache_dir)  # from the same cache as the captioner
    else:
        from mmcourse.data.tokenizer import default_tokenizer
        tokenizer = default_tokenizer()
    config = config or CaptionerConfig.for_clip(clip, tokenizer)
    config = replace(config, freeze_image_tower=freeze_image_tower)
    train_config = train_config or captioner_train_config(dataset)
    data_key = {"dataset": dataset, "batch_size": batch_size, "seed": seed, "clip": _weights_hash(clip)}

    def make_loader():
        if dataset == "shapes":
            from mmcourse.recipes.clip import DEFAULT_SHAPES_HOLDOUT
            train = Shapes("train", seed=seed, holdout=DEFAULT_SHAPES_HOLDOUT)
        else:
            train = CaptionedDigits("train", seed=seed)
        return DataLoader(train, batch_size=batch_size, shuffle=True, collate_fn=make_collate(tokenizer),
                          generator=torch.Generator().manual_seed(seed))

    recipe = Recipe(f"captioner_{dataset}", lambda: PrefixCaptioner(clip, config), config, train_config, make_loader,
                    data_key, loss_fn=caption_loss)
    model, history, _ = train_or_load(recipe, cache=cache_dir, force=force, callbacks=callbacks)
    return PretrainedCaptioner(model, tokenizer, history)
