"""Load or train: the fusion models of lesson 08 (VQA, sentiment, image–text matching).

    model, history = load_vqa_model("film")                 # shipped with the course: loaded in a second
    model, history = load_vqa_model("cross_attention", from_clip=False, freeze_towers=False)  # from scratch
    model, history = load_sentiment_model("concat")
    model, history = load_itm_model(hard=True)

Same cache as every course model (`mmcourse.recipes.cache`: keyed by a hash of everything that
determines the model, written atomically, one inter-process lock per entry); these models are
`FusionModel`s rather than `CLIP`s; each is a `Recipe` whose `build_model` makes one. By default the
VQA and matching models read lesson 06's two-object CLIP through frozen towers, so the image tower's
output is computed once for the whole training set (`_with_image_features`) and only the fusion and
the head train: seconds instead of minutes, and every model sees exactly the same features.
`fusion_tokenizer()` is the course tokenizer with the questions' and messages' words appended:
the ids of the original words do not change, so a trained CLIP's text tower still reads them.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, replace

import torch

from mmcourse.models.fusion import FusionConfig, FusionModel, classification_loss_fn
from mmcourse.models.clip import CLIPConfig
from mmcourse.recipes.cache import Recipe, train_or_load
from mmcourse.recipes.clip import load_shapes_clip
from mmcourse.training.types import History, TrainConfig

VQA_HOLDOUT = ("red circle", "blue square", "green triangle")  # as lesson 06's DEFAULT_SHAPES_HOLDOUT


# ------------------------------------------------------------------------------ the tokenizer

@functools.lru_cache(maxsize=1)
def fusion_tokenizer():
    """`default_tokenizer()` plus every new word of the VQA questions and sentiment messages,
    appended after the existing ids (which stay the same)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers

    from mmcourse.data import faces_corpus, vqa_corpus
    from mmcourse.data.tokenizer import _wrap, default_tokenizer

    base = default_tokenizer()
    spec = json.loads(base.hf.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    splitter = pre_tokenizers.Whitespace()
    norm = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    for text in vqa_corpus() + faces_corpus():
        for word, _ in splitter.pre_tokenize_str(norm.normalize_str(text)):
            if word not in vocab:
                vocab[word] = len(vocab)
    return _wrap(Tokenizer.from_str(json.dumps(spec)), base.context_length)


class _WithImageFeatures(torch.utils.data.Dataset):
    """`dataset`'s items with the image replaced by tensors computed from it in advance
    (`features[name][i]` for item i)."""

    def __init__(self, dataset, features: dict[str, torch.Tensor]):
        if any(len(v) != len(dataset) for v in features.values()):
            raise ValueError(f"features for {[len(v) for v in features.values()]} items, dataset of {len(dataset)}")
        self.dataset, self.features = dataset, features

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = {k: v for k, v in self.dataset[i].items() if k != "image"}
        return {**item, **{name: values[i] for name, values in self.features.items()}}


@torch.no_grad()
def _with_image_features(dataset, encoders: dict, batch_size: int = 500) -> _WithImageFeatures:
    """`dataset` (with an `.images` (N, C, H, W) tensor) whose items carry `encoders[name](images)`
    instead of the image, computed once in batches of `batch_size`."""
    images = dataset.images
    features = {name: torch.cat([encode(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
                for name, encode in encoders.items()}
    return _WithImageFeatures(dataset, features)


@functools.lru_cache(maxsize=2)
def _vqa_train_set(n_train: int, seed: int, balanced: bool):
    """The VQA training scenes, generated once per process (the five models of lesson 08 share them;
    rendering 20,000 scenes takes seconds). Read-only."""
    from mmcourse.data import ShapesVQA

    return ShapesVQA("train", n=n_train, seed=seed, balanced=balanced, holdout=VQA_HOLDOUT)


_FROZEN_FEATURES: dict[tuple, torch.Tensor] = {}  # (dataset id, what the fusion reads, tower weights) -> features


def _frozen_image_features(model: FusionModel, dataset) -> dict[str, torch.Tensor]:
    """{"image_features": model.encode_image(dataset.images)} for a model with frozen towers,
    computed once per dataset, kind of input ("tokens" or "pooled") and image-tower weights."""
    import hashlib

    digest = hashlib.sha256()
    for name, value in model.visual.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    key = (id(dataset), model.fusion.image_input, digest.hexdigest())
    if key not in _FROZEN_FEATURES:
        _FROZEN_FEATURES.clear()  # one data set's features at a time (tens of MB)
        _FROZEN_FEATURES[key] = _with_image_features(dataset, {"image_features": model.encode_image}).features[
            "image_features"]
    return {"image_features": _FROZEN_FEATURES[key]}


def _loader(dataset, tokenizer, batch_size: int, seed: int):
    from torch.utils.data import DataLoader

    from mmcourse.data import make_collate

    return DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=make_collate(tokenizer),
                      generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ VQA

def vqa_towers(tokenizer=None) -> CLIPConfig:
    """Towers for VQA trained from scratch: a CNN on 32x32 RGB scenes whose last feature map is
    4x4 (16 image tokens of width 64), and a 2-layer text Transformer of width 64."""
    tokenizer = tokenizer or fusion_tokenizer()
    return CLIPConfig(image_encoder="cnn", image_size=32, in_channels=3, image_width=64, cnn_channels=(16, 32, 64),
                      cnn_stem_stride=2, vocab_size=tokenizer.vocab_size, context_length=tokenizer.context_length,
                      text_width=64, text_layers=2, text_heads=4, pad_token_id=tokenizer.pad_token_id)


def vqa_train_config(**changes) -> TrainConfig:
    """3 epochs of batch 128 over 20,000 questions (471 steps), peak learning rate 3e-3."""
    return replace(TrainConfig(epochs=3, lr=3e-3, weight_decay=0.05, warmup_fraction=0.05), **changes)


def load_vqa_model(fusion: str, from_clip: bool = True, freeze_towers: bool = True, balanced: bool = True,
                   n_train: int = 20000, train_config: TrainConfig | None = None, batch_size: int = 128,
                   seed: int = 0, cache: str | os.PathLike | None = None,
                   force: bool = False) -> tuple[FusionModel, History]:
    """A VQA classifier over `ANSWERS` with the given fusion, trained on `ShapesVQA("train")`
    (with `VQA_HOLDOUT` held out), from the cache or trained now.

    Args:
        fusion: one of `mmcourse.models.fusion.FUSIONS` ("text" is the question-only model).
        from_clip: start the towers from the two-object Shapes CLIP of lesson 06
            (`load_shapes_clip(two_objects=True)`, itself cached; the default) instead of from
            scratch (`vqa_towers()`).
        freeze_towers: keep those towers frozen (the default): only the fusion and the head train,
            on image features computed once. Needs `from_clip`.
        balanced: train on the balanced (default) or the biased questions.
        n_train, train_config, batch_size, seed, cache, force: the data, training and cache.

    Returns:
        (model in eval mode, training history).

    Raises:
        ValueError: `freeze_towers` without `from_clip` (random towers that never learn).
    """
    from mmcourse.data import ANSWERS

    if freeze_towers and not from_clip:
        raise ValueError("freeze_towers=True needs from_clip=True: towers trained from scratch must not be frozen")
    tokenizer = fusion_tokenizer()
    train_config = train_config or vqa_train_config()
    if from_clip:
        clip = load_shapes_clip(two_objects=True, cache_dir=cache).model.cpu()
        state = {k: v.clone() for k, v in clip.state_dict().items()}
        towers = replace(clip.config, vocab_size=tokenizer.vocab_size)

        def build():
            clip.load_state_dict(state)
            return FusionModel.from_clip(clip, fusion, len(ANSWERS), vocab_size=tokenizer.vocab_size, layers=2,
                                         freeze_towers=freeze_towers)
    else:
        towers = vqa_towers(tokenizer)

        def build():
            return FusionModel(FusionConfig(fusion=fusion, num_classes=len(ANSWERS), towers=towers, layers=2))
    key = {"fusion": fusion, "towers": asdict(towers), "from_clip": from_clip, "layers": 2,
           "freeze_towers": freeze_towers}

    def make():
        data = _vqa_train_set(n_train, seed, balanced)
        model = build().eval()
        if freeze_towers and model.fusion.image_input is not None:  # the frozen image tower's output, once per scene
            data = _WithImageFeatures(data, _frozen_image_features(model, data))
        return _loader(data, tokenizer, batch_size, seed)
    data_key = {"n_train": n_train, "balanced": balanced, "holdout": VQA_HOLDOUT, "seed": seed, "batch_size": batch_size}
    model, history, _ = train_or_load(Recipe("vqa", build, key, train_config, make, data_key,
                                             loss_fn=classification_loss_fn),
                                      cache=cache, force=force)
    return model, history


# ------------------------------------------------------------------------------ sentiment

def faces_towers(tokenizer=None) -> CLIPConfig:
    """Towers for the faces: a CNN on 32x32 grey images (4x4 tokens of width 32), a 1-layer text
    Transformer of width 32."""
    tokenizer = tokenizer or fusion_tokenizer()
    return CLIPConfig(image_encoder="cnn", image_size=32, in_channels=1, image_width=32, cnn_channels=(8, 16, 32),
                      cnn_stem_stride=2, vocab_size=tokenizer.vocab_size, context_length=tokenizer.context_length,
                      text_width=32, text_layers=1, text_heads=4, pad_token_id=tokenizer.pad_token_id)


def sentiment_train_config(**changes) -> TrainConfig:
    """10 epochs of batch 128 over 4,000 posts (320 steps), peak learning rate 3e-3."""
    return replace(TrainConfig(epochs=10, lr=3e-3, weight_decay=0.05, warmup_fraction=0.05), **changes)


def load_sentiment_model(fusion: str, n_train: int = 4000, train_config: TrainConfig | None = None,
                         batch_size: int = 128, seed: int = 0, cache: str | os.PathLike | None = None,
                         force: bool = False) -> tuple[FusionModel, History]:
    """A kind/mean classifier of face + message posts (`FacesSentiment`) with the given fusion.

    Returns:
        (model in eval mode, training history).
    """
    from mmcourse.data import FacesSentiment

    tokenizer = fusion_tokenizer()
    train_config = train_config or sentiment_train_config()
    towers = faces_towers(tokenizer)
    config = FusionConfig(fusion=fusion, num_classes=2, towers=towers, dim=32, heads=4)
    make = lambda: _loader(FacesSentiment("train", n=n_train, seed=seed), tokenizer, batch_size, seed)  # noqa: E731
    data_key = {"n_train": n_train, "seed": seed, "batch_size": batch_size}
    model, history, _ = train_or_load(Recipe("sentiment", lambda: FusionModel(config), asdict(config), train_config,
                                             make, data_key, loss_fn=classification_loss_fn),
                                      cache=cache, force=force)
    return model, history


# ------------------------------------------------------------------------------ image–text matching

def itm_train_config(**changes) -> TrainConfig:
    """2 epochs of batch 64 over 10,000 two-object scenes (314 steps), peak learning rate 1e-3."""
    return replace(TrainConfig(epochs=2, lr=1e-3, weight_decay=0.05, warmup_fraction=0.05), **changes)


def load_itm_model(hard: bool = True, freeze_towers: bool = True, n_train: int = 10000,
                   train_config: TrainConfig | None = None, batch_size: int = 64, seed: int = 0,
                   cache: str | os.PathLike | None = None, force: bool = False) -> tuple[FusionModel, History]:
    """A 2-way image–text matcher (cross-attention fusion, towers from lesson 06's two-object
    CLIP) trained with ITM on two-object Shapes scenes, with hard (ALBEF) or random negatives
    drawn using that CLIP's similarities.

    Args:
        hard: hard (ALBEF) or random negatives.
        freeze_towers: keep the CLIP's towers frozen (the default): only the cross-attention
            encoder and the head train, on image tokens and CLIP image embeddings computed once
            per scene. False fine-tunes the towers too (as ALBEF; several times slower).
        n_train, train_config, batch_size, seed, cache, force: the data, training and cache.

    Returns:
        (model in eval mode, training history).
    """
    from mmcourse.data import Shapes
    from mmcourse.objectives.itm import itm_loss_fn
    from mmcourse.recipes.clip import DEFAULT_SHAPES_HOLDOUT

    clip = load_shapes_clip(two_objects=True, cache_dir=cache).model.cpu().eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    state = {k: v.clone() for k, v in clip.state_dict().items()}
    tokenizer = fusion_tokenizer()
    train_config = train_config or itm_train_config()

    def build():
        clip.load_state_dict(state)
        return FusionModel.from_clip(clip, "cross_attention", 2, vocab_size=tokenizer.vocab_size, layers=2,
                                     freeze_towers=freeze_towers)

    @torch.no_grad()
    def similarity(batch):  # (B, B) the CLIP's logits_per_image, from its image embeddings when computed in advance
        device = batch["input_ids"].device
        clip.to(device)
        if "clip_image_embeds" not in batch:
            return clip(batch["image"], batch["input_ids"], batch["attention_mask"]).logits_per_image
        text = clip.encode_text(batch["input_ids"], batch["attention_mask"], normalize=True)  # (B, D)
        return clip.logit_scale.exp() * batch["clip_image_embeds"] @ text.T

    def make():
        data = Shapes("train", n=n_train, seed=seed, two_objects=True, holdout=DEFAULT_SHAPES_HOLDOUT)
        if freeze_towers:  # per scene: the image tokens the matcher reads, the embedding CLIP ranks negatives by
            data = _with_image_features(data, {"image_features": build().eval().encode_image,
                                               "clip_image_embeds": lambda x: clip.encode_image(x, normalize=True)})
        return _loader(data, tokenizer, batch_size, seed)

    key = {"towers": asdict(replace(clip.config, vocab_size=tokenizer.vocab_size)), "hard": hard, "layers": 2,
           "freeze_towers": freeze_towers}
    data_key = {"n_train": n_train, "seed": seed, "batch_size": batch_size, "holdout": DEFAULT_SHAPES_HOLDOUT}
    model, history, _ = train_or_load(Recipe("itm", build, key, train_config, make, data_key,
                                             loss_fn=itm_loss_fn(similarity, hard=hard, seed=seed)),
                                      cache=cache, force=force)
    return model, history
