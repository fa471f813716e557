"""Train once, then cache: the CLIP models lessons 04-06 share, so notebooks stay fast.

    model, tokenizer, history = load_digits_clip()      # trains ~10 s the first time, then loads
    model, tokenizer, history = load_shapes_clip(holdout=("red circle",))

Lesson 04 trains the digits model through `load_digits_clip(callbacks=[LivePlot()])`, so a learner
going through lessons 04 -> 05 -> 06 in order trains each model once: lesson 04 the digits model
(and its shared-head variant), lesson 05 the Shapes model, lesson 06 the two-object Shapes model.

A trained model is saved under a name that hashes everything that determines it (model config,
training config, data settings, a format version), in `MMCOURSE_CACHE` or else
`~/.cache/mmcourse`. Files are written atomically (temporary file, then rename), so an
interrupted save never leaves a broken cache entry; an interrupted *training* keeps its
checkpoint and resumes from it on the next call.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
import torch.nn as nn

from . import zero_shot_metadata as meta
from .models import CLIP, CLIPConfig
from .train import History, TrainConfig, fit, load_checkpoint, save_atomic
from .utils import REFERENCE_THREADS, torch_threads

CACHE_VERSION = 1  # bump when the saved format or the training code changes what a config means
DEFAULT_SHAPES_HOLDOUT = ("red circle", "blue square", "green triangle")


class PretrainedCLIP(NamedTuple):
    """What the loaders return; unpacks as `model, tokenizer, history = ...`."""

    model: CLIP
    tokenizer: Callable
    history: History


# ------------------------------------------------------------------------------ configs

def digits_clip_config(tokenizer=None) -> CLIPConfig:
    """The lessons' digits model: 8x8 grey images, a small CNN, a 2-layer text Transformer
    (about 240k parameters). Tuned with `benchmarks/bench_train.py`."""
    tokenizer = tokenizer or _default_tokenizer()
    return CLIPConfig(image_encoder="cnn", image_size=8, in_channels=1, image_width=64, cnn_channels=(32, 64, 128),
                      text_encoder="transformer", vocab_size=tokenizer.vocab_size,
                      context_length=tokenizer.context_length, text_width=64, text_layers=2, text_heads=4,
                      pad_token_id=tokenizer.pad_token_id, embed_dim=64)


def digits_train_config(**changes) -> TrainConfig:
    """30 epochs (300 steps with batches of 128), peak learning rate 2e-3: about 90% zero-shot
    accuracy after 1.5 s and about 98.5% at the end (10 s) on one laptop CPU core.

    Batches of 256 with this short a warmup first collapse: both towers map everything to nearly
    one direction and the loss sits at ln 256 for tens of steps. Twice as many, noisier steps of
    128 (or a warmup of 25 steps) avoid that."""
    return replace(TrainConfig(epochs=30, lr=2e-3, weight_decay=0.1, warmup_fraction=0.05), **changes)


def shapes_clip_config(tokenizer=None) -> CLIPConfig:
    """The Shapes model: 32x32 RGB, a CNN that halves the image in its first conv (position
    matters, so it flattens rather than average-pools), a 2-layer text Transformer."""
    tokenizer = tokenizer or _default_tokenizer()
    return CLIPConfig(image_encoder="cnn", image_size=32, in_channels=3, image_width=64,
                      cnn_channels=(16, 32, 64, 64), cnn_stem_stride=2, text_encoder="transformer",
                      vocab_size=tokenizer.vocab_size, context_length=tokenizer.context_length, text_width=64,
                      text_layers=2, text_heads=4, pad_token_id=tokenizer.pad_token_id, embed_dim=64)


def shapes_train_config(**changes) -> TrainConfig:
    """20 epochs of batch 256 over 5,000 scenes (400 steps), peak learning rate 4e-3: about 35 s
    on one quiet CPU core. Zero-shot colour x shape accuracy on the validation scenes jumps from
    about 50% to about 99% between epochs 9 and 13 (15 epochs gave only 60%: the cosine schedule
    ends before the jump)."""
    return replace(TrainConfig(epochs=20, lr=4e-3, weight_decay=0.1, warmup_fraction=0.05), **changes)


def _default_tokenizer():
    from .tokenizer import default_tokenizer

    return default_tokenizer()


# ------------------------------------------------------------------------------ validation

def zero_shot_val_fn(dataset, tokenizer: Callable, classnames: Sequence[str], templates: Sequence[str],
                     prefix: str = "zero_shot") -> Callable[[CLIP], dict[str, float]]:
    """A `val_fn` for `fit`: zero-shot top-1 accuracy of the model on a dataset's images.

    Args:
        dataset: has `images` (N, C, H, W) and `labels` (N,) (e.g. `CaptionedDigits("val")`).
        tokenizer, classnames, templates: as for `build_zero_shot_classifier`.
        prefix: the metric is called f"{prefix}_top1".

    Returns:
        `val_fn(model) -> {f"{prefix}_top1": fraction}`.
    """
    from .evaluate import accuracy, build_zero_shot_classifier, zero_shot_logits

    def val_fn(model: CLIP) -> dict[str, float]:
        device = next(model.parameters()).device
        weights = build_zero_shot_classifier(model, tokenizer, classnames, templates)  # (D, C)
        emb = torch.cat([model.encode_image(x.to(device), normalize=True).cpu()
                         for x in dataset.images.split(1024)])  # (N, D)
        top1 = accuracy(zero_shot_logits(emb, weights), dataset.labels, topk=(1,))["top1"]
        return {f"{prefix}_top1": top1}

    return val_fn


# ------------------------------------------------------------------------------ the cache

def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Where trained models are kept: `path`, else `MMCOURSE_CACHE`, else `~/.cache/mmcourse`."""
    path = path or os.environ.get("MMCOURSE_CACHE") or Path.home() / ".cache" / "mmcourse"
    return Path(path).expanduser()


def config_hash(*parts: Any) -> str:
    """A short stable hash of dataclasses / JSON-able values."""
    norm = [asdict(p) if hasattr(p, "__dataclass_fields__") else p for p in parts]
    text = json.dumps([CACHE_VERSION, norm], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _train_key(config: TrainConfig) -> dict[str, Any]:
    # Settings that do not change the trained weights stay out of the key.
    return {k: v for k, v in asdict(config).items() if k not in ("device", "progress", "log_every")}


def train_or_load_model(name: str, build_model: Callable[[], nn.Module], settings: Any, train_config: TrainConfig,
                        make_loader: Callable[[], Any], data_key: Any, *, loss_fn: Callable | None = None,
                        val_fn: Callable | None = None, cache: str | os.PathLike | None = None, force: bool = False,
                        callbacks: Sequence = (), device: str | torch.device | None = None,
                        ) -> tuple[nn.Module, History, Path]:
    """Train once, then cache — for any model (the one mechanism every lesson's cached models use).

    Load model `name` from the cache if one with exactly these settings was trained before;
    otherwise build it, train it with `mmcourse.train.fit` (resuming an interrupted earlier
    attempt from its checkpoint) and cache its `state_dict()`. The file is named by a hash of
    everything that determines the trained weights: `name`, `settings`, the training config
    (minus device/progress/log_every) and `data_key`. Training runs with one torch thread
    (`mmcourse.utils.torch_threads`): the thread count changes the order of floating-point sums, so
    the same model is trained on every machine, whatever the caller's threads. Two notebooks (or test workers) asking for
    the same model at once: the second waits for the first, then loads its result.

    Args:
        name: a file-name-safe model name, e.g. "digits_clip".
        build_model: `build_model() -> nn.Module`, called after seeding torch with
            `train_config.seed`, so the initial weights depend on the seed only.
        settings: what defines the architecture (a dataclass or JSON-able value).
        train_config: how to train.
        make_loader: `make_loader() -> DataLoader` of training batches (called only to train).
        data_key: JSON-able description of the data.
        loss_fn, val_fn, callbacks: passed to `fit`.
        cache: the cache folder (default `MMCOURSE_CACHE` or `~/.cache/mmcourse`).
        force: retrain even if cached.
        device: where to put a loaded model (default `train_config.device`, else `get_device()`).

    Returns:
        (model in eval mode, its training `History`, the cache file).
    """
    key = config_hash(name, settings, _train_key(train_config), data_key)
    path = cache_dir(cache) / f"{name}_{key}.pt"
    with _exclusive(path.with_name(path.name + ".lock")):
        partial = path.with_name(path.stem + ".partial.pt")
        torch.manual_seed(train_config.seed)  # the initial weights depend on the seed only
        model = build_model()
        if path.exists() and not force:
            from .utils import get_device

            saved = load_checkpoint(path)
            model.load_state_dict(saved["model"])
            model.to(torch.device(device or train_config.device or get_device()))
            return model.eval(), History.from_dict(saved["history"]), path
        if force:
            partial.unlink(missing_ok=True)
        with torch_threads(REFERENCE_THREADS):  # the same weights whatever the caller's thread count
            history = fit(model, make_loader(), train_config, loss_fn=loss_fn, val_fn=val_fn, callbacks=callbacks,
                          checkpoint_path=partial, resume=True)
        if history.stopped == "interrupted":
            warnings.warn(f"training was interrupted; the next call resumes from {partial}", stacklevel=2)
            return model.eval(), history, partial
        saved_settings = asdict(settings) if hasattr(settings, "__dataclass_fields__") else settings
        save_atomic({"model": {k: v.cpu() for k, v in model.state_dict().items()}, "settings": saved_settings,
                     "train_config": asdict(train_config), "data": data_key, "history": history.to_dict()}, path)
        partial.unlink(missing_ok=True)
        return model.eval(), history, path


def train_or_load(name: str, config: CLIPConfig, train_config: TrainConfig, make_loader: Callable[[], Any],
                  data_key: dict[str, Any], val_fn: Callable | None = None, cache: str | os.PathLike | None = None,
                  force: bool = False, callbacks: Sequence = ()) -> tuple[CLIP, History, Path]:
    """`train_or_load_model` for the course's `CLIP` built from `config`.

    Returns:
        (model in eval mode, its training history, the cache file).
    """
    return train_or_load_model(name, lambda: CLIP(config), config, train_config, make_loader, data_key,
                               val_fn=val_fn, cache=cache, force=force, callbacks=callbacks)


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """An inter-process lock on `lock_path` (a no-op where fcntl does not exist, e.g. Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------ the models

def load_digits_clip(config: CLIPConfig | None = None, train_config: TrainConfig | None = None,
                     cache_dir: str | os.PathLike | None = None, force: bool = False, batch_size: int = 128,
                     seed: int = 0, callbacks: Sequence = ()) -> PretrainedCLIP:
    """A CLIP trained on captioned digits (training templates only), from the cache or trained now.

    Args:
        config: the architecture (default `digits_clip_config()`).
        train_config: how to train (default `digits_train_config()`).
        cache_dir: where to cache (default `MMCOURSE_CACHE` or `~/.cache/mmcourse`).
        force: retrain even if cached.
        batch_size, seed: of the training loader (seed also fixes the data split).
        callbacks: passed to `fit` when training (e.g. `LivePlot()`).

    Returns:
        `PretrainedCLIP(model, tokenizer, history)`; `history.val` holds zero-shot accuracy on
        the validation images with held-out templates after each epoch ("zero_shot_top1").
    """
    from .data import CaptionedDigits, digits_dataloaders

    tokenizer = _default_tokenizer()
    config = config or digits_clip_config(tokenizer)
    train_config = train_config or digits_train_config()
    val_fn = zero_shot_val_fn(CaptionedDigits("val", seed=seed), tokenizer, meta.DIGIT_CLASSNAMES,
                              meta.DIGIT_TEMPLATES_HELDOUT)
    model, history, _ = train_or_load(
        "digits_clip", config, train_config,
        make_loader=lambda: digits_dataloaders(tokenizer, batch_size=batch_size, seed=seed)[0],
        data_key={"dataset": "digits", "batch_size": batch_size, "seed": seed}, val_fn=val_fn,
        cache=cache_dir, force=force, callbacks=callbacks)
    return PretrainedCLIP(model, tokenizer, history)


def load_shapes_clip(config: CLIPConfig | None = None, train_config: TrainConfig | None = None,
                     holdout: Sequence[str] = DEFAULT_SHAPES_HOLDOUT, two_objects: bool = False,
                     n_train: int | None = None, cache_dir: str | os.PathLike | None = None, force: bool = False,
                     batch_size: int = 256, seed: int = 0, callbacks: Sequence = ()) -> PretrainedCLIP:
    """A CLIP trained on Shapes with whole colour-shape combinations held out of training.

    Args:
        holdout: combinations never shown in training, e.g. ("red circle",) (default
            `DEFAULT_SHAPES_HOLDOUT`); the test split has them, to probe compositional
            generalisation.
        two_objects: two objects and their relation per image.
        n_train: number of training scenes (default: the dataset's, 5000).
        Others: as `load_digits_clip` (defaults `shapes_clip_config()`, `shapes_train_config()`).

    Returns:
        `PretrainedCLIP(model, tokenizer, history)`; `history.val` holds zero-shot colour x shape
        accuracy on the validation scenes (which exclude the held-out combinations).
    """
    from .data import Shapes

    tokenizer = _default_tokenizer()
    config = config or shapes_clip_config(tokenizer)
    train_config = train_config or shapes_train_config()
    holdout = tuple(" ".join(h) if not isinstance(h, str) else h for h in holdout)
    kwargs = {"holdout": holdout, "two_objects": two_objects}
    val_fn = zero_shot_val_fn(Shapes("val", seed=seed, **kwargs), tokenizer, Shapes.classnames,
                              meta.SHAPES_CLASS_TEMPLATES_HELDOUT)

    def make_loader():
        from torch.utils.data import DataLoader

        from .data import make_collate

        train = Shapes("train", n=n_train, seed=seed, **kwargs)
        return DataLoader(train, batch_size=batch_size, shuffle=True, collate_fn=make_collate(tokenizer),
                          generator=torch.Generator().manual_seed(seed))

    model, history, _ = train_or_load(
        "shapes_clip", config, train_config, make_loader=make_loader,
        data_key={"dataset": "shapes", "batch_size": batch_size, "seed": seed, "n_train": n_train, **kwargs},
        val_fn=val_fn, cache=cache_dir, force=force, callbacks=callbacks)
    return PretrainedCLIP(model, tokenizer, history)
