"""Lesson 11's CLIPs with the pre-trained MiniLM text tower locked (`LockedTextCLIP`): the image
tower, projections and `logit_scale` trained on digits or Shapes: shipped with the course, or trained and cached."""
from __future__ import annotations

import os
from dataclasses import asdict
from typing import Sequence

import torch

from mmcourse.data import zero_shot_metadata as meta
from mmcourse.models.clip import CLIPConfig
from mmcourse.recipes.clip import (DEFAULT_SHAPES_HOLDOUT, PretrainedCLIP, digits_clip_config, digits_train_config,
                                   shapes_clip_config, shapes_train_config, zero_shot_val_fn)
from mmcourse.training.types import TrainConfig
from mmcourse.models.minilm import MODEL_NAME, LockedTextCLIP, minilm_version, shared_minilm




def _settings(config: CLIPConfig) -> dict:
    return {**asdict(config), "text_tower": MODEL_NAME, "package": minilm_version()}


def load_digits_locked_clip(config: CLIPConfig | None = None, train_config: TrainConfig | None = None,
                            cache_dir: str | os.PathLike | None = None, force: bool = False, batch_size: int = 128,
                            seed: int = 0, callbacks: Sequence = ()) -> PretrainedCLIP:
    """The lessons' digits CLIP (`digits_clip_config`, `digits_train_config`, same data) with the
    locked MiniLM as its text tower; from the cache or trained now.

    Returns:
        `PretrainedCLIP(LockedTextCLIP, MiniLMTokenizer, history)`; `history.val` holds zero-shot
        accuracy on the validation digits with held-out templates ("zero_shot_top1").

    Raises:
        ModuleNotFoundError: the `pretrained` extra is not installed.
    """
    from mmcourse.data import CaptionedDigits, digits_dataloaders
    from mmcourse.recipes.cache import Recipe, train_or_load

    encoder, tokenizer = shared_minilm()
    config = config or digits_clip_config()
    train_config = train_config or digits_train_config()
    val_fn = zero_shot_val_fn(CaptionedDigits("val", seed=seed), tokenizer, meta.DIGIT_CLASSNAMES,
                              meta.DIGIT_TEMPLATES_HELDOUT)
    recipe = Recipe("digits_locked_text_clip", lambda: LockedTextCLIP(config, encoder), _settings(config), train_config,
                    make_loader=lambda: digits_dataloaders(tokenizer, batch_size=batch_size, seed=seed)[0],
                    data_key={"dataset": "digits", "batch_size": batch_size, "seed": seed}, val_fn=val_fn)
    model, history, _ = train_or_load(recipe, cache=cache_dir, force=force, callbacks=callbacks)
    return PretrainedCLIP(model, tokenizer, history)


def load_shapes_locked_clip(config: CLIPConfig | None = None, train_config: TrainConfig | None = None,
                            holdout: Sequence[str] = DEFAULT_SHAPES_HOLDOUT, cache_dir: str | os.PathLike | None = None,
                            force: bool = False, batch_size: int = 256, seed: int = 0,
                            callbacks: Sequence = ()) -> PretrainedCLIP:
    """The lessons' Shapes CLIP (`shapes_clip_config`, `shapes_train_config`, the same held-out
    colour-shape combinations) with the locked MiniLM as its text tower; cached.

    Returns:
        `PretrainedCLIP(LockedTextCLIP, MiniLMTokenizer, history)`; `history.val` holds zero-shot
        colour x shape accuracy on the validation scenes.
    """
    from torch.utils.data import DataLoader

    from mmcourse.data import Shapes, make_collate
    from mmcourse.recipes.cache import Recipe, train_or_load

    encoder, tokenizer = shared_minilm()
    config = config or shapes_clip_config()
    train_config = train_config or shapes_train_config()
    holdout = tuple(holdout)
    val_fn = zero_shot_val_fn(Shapes("val", seed=seed, holdout=holdout), tokenizer, Shapes.classnames,
                              meta.SHAPES_CLASS_TEMPLATES_HELDOUT)

    def make_loader():
        train = Shapes("train", seed=seed, holdout=holdout)
        return DataLoader(train, batch_size=batch_size, shuffle=True, collate_fn=make_collate(tokenizer),
                          generator=torch.Generator().manual_seed(seed))

    recipe = Recipe("shapes_locked_text_clip", lambda: LockedTextCLIP(config, encoder), _settings(config), train_config,
                    make_loader=make_loader,
                    data_key={"dataset": "shapes", "batch_size": batch_size, "seed": seed, "holdout": holdout},
                    val_fn=val_fn)
    model, history, _ = train_or_load(recipe, cache=cache_dir, force=force, callbacks=callbacks)
    return PretrainedCLIP(model, tokenizer, history)
