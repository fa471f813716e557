"""Load or train: lesson 13's audio encoders (each a `Recipe`, trained by `train_or_load`).

    encoder, history = load_audio_encoder("image")   # bound to the digits CLIP's FROZEN image tower
    encoder, history = load_audio_encoder("text")    # CLAP-style: trained on audio–caption pairs

Both read the same synthetic spoken digits (`mmcourse.data.SpokenDigits`) and train the same
`AudioEncoder` with the same loss, steps and seed; only the partner of each clip differs. With
target "image" a clip is paired with a training image of its digit, embedded by lesson 04's
digits CLIP image tower (ImageBind's recipe: audio meets only images); with target "text" it is
paired with a caption of its digit (training templates), embedded by the same CLIP's text tower,
which stays frozen too (CLAP trains both towers; freezing the text tower here keeps the two models
in one embedding space, so they can be compared on the same zero-shot classifier).
"""
from __future__ import annotations

import os
from dataclasses import replace

import torch

from mmcourse.data import zero_shot_metadata as meta
from mmcourse.models.audio import AudioEncoder, AudioEncoderConfig, bind_loss
from mmcourse.models.configs import digits_clip_config
from mmcourse.recipes.cache import Recipe, config_hash, train_or_load
from mmcourse.recipes.clip import digits_train_config, load_digits_clip
from mmcourse.training.types import History, TrainConfig

TARGETS = ("image", "text")


def audio_train_config(**changes) -> TrainConfig:
    """5 epochs of batches of 128 over 2,000 clips (80 steps), peak learning rate 3e-3: a few CPU seconds."""
    return replace(TrainConfig(epochs=5, lr=3e-3, weight_decay=0.05, warmup_fraction=0.1, logit_scale_max=None,
                               progress=False), **changes)


def paired_targets(target: str, labels: torch.Tensor, seed: int = 0,
                   cache_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """The frozen partner embedding of each clip: (N,) digit labels -> (N, D) unit vectors.

    "image": a random training image of the clip's digit through the digits CLIP's image tower;
    "text": a random training caption of the digit (template and word/numeral form) through its
    text tower. Deterministic given `seed`. The digits CLIP comes from `cache_dir` (trained there if absent).
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    from mmcourse.data import CaptionedDigits
    from mmcourse.evaluation.zero_shot import encode_texts

    clip, tokenizer, _ = load_digits_clip(cache_dir=cache_dir)
    g = torch.Generator().manual_seed(seed + 31)
    if target == "image":
        digits = CaptionedDigits("train")
        by_class = [torch.nonzero(digits.labels == k).squeeze(1) for k in range(10)]
        pick = torch.stack([by_class[k][torch.randint(len(by_class[k]), (), generator=g)] for k in labels.tolist()])
        with torch.no_grad():
            return clip.encode_image(digits.images[pick], normalize=True).cpu()  # (N, D)
    templates = meta.DIGIT_TEMPLATES_TRAIN
    draws = torch.randint(2 * len(templates), (len(labels),), generator=g).tolist()
    captions = [templates[d // 2].format((meta.DIGIT_NUMERALS if d % 2 else meta.DIGIT_CLASSNAMES)[k])
                for d, k in zip(draws, labels.tolist())]
    return torch.nn.functional.normalize(encode_texts(clip, tokenizer, captions), dim=-1)  # (N, D)


def audio_recipe(target: str = "image", n_train: int = 2000, seed: int = 0, config: AudioEncoderConfig | None = None,
                 train_config: TrainConfig | None = None, cache_dir: str | os.PathLike | None = None) -> Recipe:
    """The `Recipe` of an `AudioEncoder` trained with `bind_loss` against frozen digits-CLIP embeddings
    of its partner ("image" or "text", see `paired_targets`); arguments as `load_audio_encoder`."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    config = config or AudioEncoderConfig()
    train_config = replace(train_config or audio_train_config(), seed=seed)

    def make_loader():
        from torch.utils.data import DataLoader, TensorDataset

        from mmcourse.data import SpokenDigits

        clips = SpokenDigits("train", n=n_train, seed=seed)
        targets = paired_targets(target, clips.labels, seed, cache_dir)
        return DataLoader(TensorDataset(clips.waveforms, targets), batch_size=128, shuffle=True,
                          generator=torch.Generator().manual_seed(seed))

    clip_key = config_hash("digits_clip", digits_clip_config(), digits_train_config())  # the partner's weights
    return Recipe(f"audio_{target}", lambda: AudioEncoder(config), config, train_config, make_loader,
                  data_key={"dataset": "spoken_digits", "n_train": n_train, "seed": seed, "target": target,
                            "clip": clip_key},
                  loss_fn=lambda model, batch: bind_loss(model(batch[0]), batch[1]))


def load_audio_encoder(target: str = "image", n_train: int = 2000, seed: int = 0,
                       config: AudioEncoderConfig | None = None, train_config: TrainConfig | None = None,
                       cache_dir: str | os.PathLike | None = None, force: bool = False,
                       ) -> tuple[AudioEncoder, History]:
    """An `AudioEncoder` trained with `bind_loss` against frozen digits-CLIP embeddings.

    Args:
        target: "image" (ImageBind: audio–image pairs only) or "text" (CLAP-style: audio–caption pairs).
        n_train: training clips (`SpokenDigits("train", n_train, seed)`).
        seed: data and training seed.
        config, train_config: defaults `AudioEncoderConfig()`, `audio_train_config()`.
        cache_dir, force: as `load_digits_clip`.

    Returns:
        (encoder in eval mode, its training History).
    """
    recipe = audio_recipe(target, n_train, seed, config, train_config, cache_dir)
    model, history, _ = train_or_load(recipe, cache=cache_dir, force=force)
    return model, history
