"""Lesson 11's trained `transformers.CLIPModel` on captioned digits, trained with `fit`
through `HFCLIPAdapter`: shipped with the course, or trained and cached (`load_digits_hf_clip`)."""
from __future__ import annotations

import os
from dataclasses import asdict
from typing import Sequence


from mmcourse.data import zero_shot_metadata as meta
from mmcourse.recipes.clip import PretrainedCLIP, digits_train_config, zero_shot_val_fn
from mmcourse.training.types import TrainConfig
from mmcourse.models.hf_clip import HFCLIPSettings, build_hf_clip




def hf_train_config(**changes) -> TrainConfig:
    """The digits recipe (`digits_train_config`: batches of 128, peak learning rate 2e-3) for 25
    epochs instead of 30; in one run the ViT went from chance to about 95% zero-shot accuracy
    between epochs 5 and 18 (40 epochs ended no better)."""
    return digits_train_config(**{"epochs": 25, **changes})


def load_digits_hf_clip(settings: HFCLIPSettings | None = None, train_config: TrainConfig | None = None,
                        cache_dir: str | os.PathLike | None = None, force: bool = False, batch_size: int = 128,
                        seed: int = 0, callbacks: Sequence = ()) -> PretrainedCLIP:
    """A tiny `transformers.CLIPModel` trained on 16x16 captioned digits by the course's `fit`
    (the default CLIP loss), from the cache or trained now.

    Returns:
        `PretrainedCLIP(HFCLIPAdapter, tokenizer, history)`; `history.val` holds zero-shot
        accuracy on the validation digits with held-out templates ("zero_shot_top1").
    """
    from transformers import __version__ as transformers_version

    from mmcourse.data import CaptionedDigits, digits_dataloaders
    from mmcourse.recipes.cache import Recipe, train_or_load
    from mmcourse.data.tokenizer import default_tokenizer

    tokenizer = default_tokenizer()
    settings = settings or HFCLIPSettings()
    train_config = train_config or hf_train_config()
    size = settings.image_size
    val_fn = zero_shot_val_fn(CaptionedDigits("val", seed=seed, image_size=size), tokenizer, meta.DIGIT_CLASSNAMES,
                              meta.DIGIT_TEMPLATES_HELDOUT)
    key = {**asdict(settings), "transformers": transformers_version.split(".")[0]}
    recipe = Recipe("digits_hf_clip", lambda: build_hf_clip(tokenizer, settings), key, train_config,
                    make_loader=lambda: digits_dataloaders(tokenizer, batch_size=batch_size, seed=seed, image_size=size)[0],
                    data_key={"dataset": "digits", "image_size": size, "batch_size": batch_size, "seed": seed},
                    val_fn=val_fn)
    model, history, _ = train_or_load(recipe, cache=cache_dir, force=force, callbacks=callbacks)
    return PretrainedCLIP(model, tokenizer, history)
