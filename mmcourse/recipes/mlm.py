"""Load or train: the masked language models of lesson 07 and its MLM-then-CLIP test.

    model, tokenizer, history = load_text_mlm()    # captions only
    model, tokenizer, history = load_image_mlm()   # captions + their Shapes images (cross-attention)
    clip, tokenizer, history = load_few_pair_clip(text_init="mlm", n_train=500)

Models are cached like the CLIP models of `mmcourse.recipes.clip` (same cache folder, same
config hash, same lock and atomic writes): each is a `Recipe` trained by `train_or_load`.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch.utils.data import ConcatDataset, DataLoader

from mmcourse.objectives.losses import masked_token_accuracy
from mmcourse.data.masking import MaskingCollator, mask_tokens, special_token_ids
from mmcourse.models.mlm import MLMConfig, MaskedLanguageModel, mlm_loss_fn, predict_masked
from mmcourse.models.clip import CLIPConfig
from mmcourse.recipes.clip import PretrainedCLIP, shapes_clip_config
from mmcourse.recipes.cache import Recipe, train_or_load
from mmcourse.training.types import TrainConfig

# Twice BERT's 15%: our captions have about 8 maskable words (7.7 on average), so 15% gives one or
# two targets per caption; in our runs the image-conditioned model then needed more than twice the epochs to learn
# the shape words. Wettig et al. (2023) found rates up to 40% as good or better for BERT too.
MLM_PROBABILITY = 0.3


# ------------------------------------------------------------------------------ configs

def _tokenizer():
    from mmcourse.data.tokenizer import default_tokenizer

    return default_tokenizer()


def mlm_config(tokenizer=None, image_conditioned: bool = False) -> MLMConfig:
    """The lesson's MLM architecture: a 2-layer bidirectional text tower of width 64 (the Shapes
    CLIP's text tower, made bidirectional) and 2 fusion layers, with cross-attention to a 3-stage
    CNN's 4x4 feature map (16 image tokens) when `image_conditioned`."""
    tokenizer = tokenizer or _tokenizer()
    return MLMConfig(vocab_size=tokenizer.vocab_size, context_length=tokenizer.context_length, width=64,
                     text_layers=2, fusion_layers=2, heads=4, pad_token_id=tokenizer.pad_token_id,
                     image_conditioned=image_conditioned)


def mlm_train_config(**changes) -> TrainConfig:
    """The image-conditioned model's schedule: AdamW at a peak learning rate of 6e-3 after a 10%
    warmup, then cosine decay; 14 epochs of batches of 128 (560 steps: 40 per epoch over 5,000
    scenes).

    That model learns the colour words within 3 epochs and the shape words last; in our runs 12
    epochs stopped with them partly learned (83%), a peak of 1e-2 diverged, and 14 epochs learned
    most of them (87% of the masked shape words; 97% when batches were padded to 20 tokens rather than
    to their longest caption, which draws other masks). The text-only model needs fewer:
    `text_mlm_train_config()`."""
    return replace(TrainConfig(epochs=14, lr=6e-3, weight_decay=0.01, warmup_fraction=0.1), **changes)


def text_mlm_train_config(**changes) -> TrainConfig:
    """The text-only model's schedule: 5 epochs of batches of 128 over the 6,259 training captions
    (245 steps), peak learning rate 4e-3 after a 5% warmup; its validation accuracy has levelled off."""
    return mlm_train_config(**{"epochs": 5, "lr": 4e-3, "warmup_fraction": 0.05, **changes})


def masked_accuracy_val_fn(captions: Sequence[str], tokenizer, images: torch.Tensor | None = None,
                           mlm_probability: float = MLM_PROBABILITY, seed: int = 0) -> Callable[[nn.Module], dict]:
    """A `val_fn` for `fit`: masked-token accuracy and MLM loss on fixed captions, masked once
    with BERT's rule (a fixed seed, so every epoch is scored on the same targets)."""
    from mmcourse.objectives.losses import mlm_loss

    enc = tokenizer(list(captions))
    masked, labels = mask_tokens(enc["input_ids"], enc["attention_mask"], special_token_ids(tokenizer),
                                 tokenizer.vocab_size, tokenizer.mask_token_id, mlm_probability,
                                 generator=torch.Generator().manual_seed(seed))

    def val_fn(model: MaskedLanguageModel) -> dict[str, float]:
        logits = predict_masked(model, masked, enc["attention_mask"], images)
        return {"masked_accuracy": masked_token_accuracy(logits, labels), "val_loss": mlm_loss(logits, labels).item()}

    return val_fn


# ------------------------------------------------------------------------------ the models

def load_text_mlm(config: MLMConfig | None = None, train_config: TrainConfig | None = None,
                  mlm_probability: float = MLM_PROBABILITY, batch_size: int = 128, seed: int = 0,
                  cache_dir: str | os.PathLike | None = None, force: bool = False):
    """A text-only masked language model trained on the caption corpus: the captions of the Shapes
    and digits training sets (a new template drawn each time an item is read); never an image.

    Returns:
        `(model, tokenizer, history)`; `history.val` holds "masked_accuracy" and "val_loss" on
        the validation captions (training templates) after each epoch.
    """
    return _text_mlm(config, train_config, mlm_probability, batch_size, seed, cache_dir, force)[:3]


def _text_mlm(config, train_config, mlm_probability, batch_size, seed, cache_dir, force):
    from mmcourse.data import CaptionedDigits, Shapes

    tokenizer = _tokenizer()
    config = config or mlm_config(tokenizer)
    if config.image_conditioned:
        raise ValueError("load_text_mlm trains a text-only model: use load_image_mlm for image_conditioned=True")
    train_config = train_config or text_mlm_train_config()
    val = Shapes("val", seed=seed, templates="train")
    val_digits = CaptionedDigits("val", seed=seed, templates="train")
    captions = [val[i]["caption"] for i in range(len(val))] + [val_digits[i]["caption"] for i in range(len(val_digits))]

    def make_loader():
        data = ConcatDataset([Shapes("train", seed=seed), CaptionedDigits("train", seed=seed)])
        collate = MaskingCollator(tokenizer, mlm_probability=mlm_probability, with_images=False)
        return DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=collate,
                          generator=torch.Generator().manual_seed(seed))

    settings = [config, {"data": "shapes+digits captions", "seed": seed, "batch_size": batch_size, "p": mlm_probability}]
    recipe = Recipe("text_mlm", lambda: MaskedLanguageModel(config), settings, train_config, make_loader,
                    loss_fn=mlm_loss_fn, val_fn=masked_accuracy_val_fn(captions, tokenizer))
    model, history, path = train_or_load(recipe, cache=cache_dir, force=force)
    return model, tokenizer, history, path


def load_image_mlm(config: MLMConfig | None = None, train_config: TrainConfig | None = None,
                   mlm_probability: float = MLM_PROBABILITY, batch_size: int = 128, seed: int = 0,
                   cache_dir: str | os.PathLike | None = None, force: bool = False):
    """An image-conditioned masked language model (ALBEF-style cross-attention) trained on the
    Shapes training scenes and their captions; no colour-shape combination is held out.

    Returns:
        `(model, tokenizer, history)`; `history.val` as `load_text_mlm`'s, on validation scenes.
    """
    from mmcourse.data import Shapes

    tokenizer = _tokenizer()
    config = config or mlm_config(tokenizer, image_conditioned=True)
    if not config.image_conditioned:
        raise ValueError("load_image_mlm trains an image-conditioned model: use load_text_mlm for a text-only one")
    train_config = train_config or mlm_train_config()
    val = Shapes("val", seed=seed, templates="train")
    captions = [val[i]["caption"] for i in range(len(val))]

    def make_loader():
        collate = MaskingCollator(tokenizer, mlm_probability=mlm_probability)
        return DataLoader(Shapes("train", seed=seed), batch_size=batch_size, shuffle=True, collate_fn=collate,
                          generator=torch.Generator().manual_seed(seed))

    settings = [config, {"data": "shapes", "seed": seed, "batch_size": batch_size, "p": mlm_probability}]
    recipe = Recipe("image_mlm", lambda: MaskedLanguageModel(config), settings, train_config, make_loader,
                    loss_fn=mlm_loss_fn, val_fn=masked_accuracy_val_fn(captions, tokenizer, images=val.images))
    model, history, _ = train_or_load(recipe, cache=cache_dir, force=force)
    return model, tokenizer, history


# ------------------------------------------------------------------------------ MLM, then CLIP

TEXT_INITS = ("scratch", "mlm")


def few_pair_clip_config(tokenizer=None):
    """`shapes_clip_config` with a bidirectional, mean-pooled text tower: the shape of the MLM
    text tower, so its weights can be loaded into it."""
    config = shapes_clip_config(tokenizer or _tokenizer())
    config.text_causal, config.text_pool = False, "mean"
    return config


def few_pair_train_config(**changes) -> TrainConfig:
    """20 epochs of batches of 100 (100 steps for 500 pairs) at a peak learning rate of 4e-3."""
    return replace(TrainConfig(epochs=20, lr=4e-3, weight_decay=0.1, warmup_fraction=0.05), **changes)


def load_few_pair_clip(text_init: str = "scratch", n_train: int = 500, seed: int = 0,
                       config: CLIPConfig | None = None, train_config: TrainConfig | None = None,
                       batch_size: int = 100, mlm: tuple[MLMConfig, TrainConfig] | None = None,
                       cache_dir: str | os.PathLike | None = None, force: bool = False) -> PretrainedCLIP:
    """A Shapes CLIP trained on only `n_train` image-caption pairs, its text tower either random
    ("scratch") or initialised from `load_text_mlm()`'s text tower ("mlm"): does MLM on (unpaired)
    captions help when pairs are few? Everything else, the initial image tower included, is equal.

    Args:
        text_init: "scratch" or "mlm".
        n_train: number of training pairs (Shapes scenes, no combination held out).
        seed: seed of the data, the initialisation and the shuffling.
        config, train_config: default `few_pair_clip_config()`, `few_pair_train_config(seed=seed)`.
        mlm: (config, train config) of the text MLM to start from (default: `load_text_mlm()`'s);
            its text tower must have the shape of `config`'s.

    Returns:
        `PretrainedCLIP(model, tokenizer, history)`; `history.val` holds "zero_shot_top1", the
        24-way colour x shape zero-shot accuracy on the validation scenes, after each epoch.
    """
    from mmcourse.data import zero_shot_metadata as meta
    from mmcourse.data import Shapes, make_collate
    from mmcourse.models.clip import CLIP
    from mmcourse.recipes.clip import zero_shot_val_fn

    if text_init not in TEXT_INITS:
        raise ValueError(f"text_init must be one of {TEXT_INITS}, got {text_init!r}")
    tokenizer = _tokenizer()
    config = config or few_pair_clip_config(tokenizer)
    if config.text_causal or config.text_encoder != "transformer":
        raise ValueError("the CLIP's text tower must be a bidirectional Transformer (text_causal=False) to take "
                         "the MLM's weights; use few_pair_clip_config()")
    train_config = train_config or few_pair_train_config(seed=seed)
    mlm_path = None
    if text_init == "mlm":
        mlm_config_, mlm_train = mlm if mlm is not None else (None, None)
        mlm, _, _, mlm_path = _text_mlm(mlm_config_, mlm_train, MLM_PROBABILITY, 128, 0, cache_dir, False)

    def build() -> CLIP:
        model = CLIP(config)
        if text_init == "mlm":
            model.text.load_state_dict(mlm.text.state_dict())  # embeddings, blocks, final LayerNorm
        return model

    def make_loader():
        return DataLoader(Shapes("train", n=n_train, seed=seed), batch_size=batch_size, shuffle=True,
                          collate_fn=make_collate(tokenizer), generator=torch.Generator().manual_seed(seed))

    val_fn = zero_shot_val_fn(Shapes("val", seed=0), tokenizer, Shapes.classnames, meta.SHAPES_CLASS_TEMPLATES_HELDOUT)
    settings = [config, {"n_train": n_train, "seed": seed, "batch_size": batch_size,
                         "text_init": Path(mlm_path).name if mlm_path else "scratch"}]
    recipe = Recipe(f"few_pair_clip_{text_init}", build, settings, train_config, make_loader, val_fn=val_fn)
    model, history, _ = train_or_load(recipe, cache=cache_dir, force=force)
    return PretrainedCLIP(model, tokenizer, history)
