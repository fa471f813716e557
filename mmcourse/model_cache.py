"""Train once, then cache — for any model, not only the course's `CLIP`.

`mmcourse.pretrained.train_or_load` caches the course `CLIP`; lesson 11 also trains a Hugging Face
`CLIPModel` (behind an adapter) and a CLIP whose text tower is a locked pre-trained encoder. This
is the same mechanism with the model built by a function you pass. What is saved is the model's
`state_dict()` (a locked `PretrainedTextEncoder` leaves its package's weights out of it):

    model, history, path = train_or_load_model("digits_hf_clip", build, settings, train_config,
                                               make_loader, data_key)

Same cache folder, key and guarantees as `pretrained.train_or_load` (it reuses `cache_dir`,
`config_hash`, the inter-process lock and atomic saves): a file is named by a hash of
everything that determines the trained weights; an interrupted training resumes from its
checkpoint on the next call.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from .pretrained import _exclusive, _train_key, cache_dir, config_hash
from .train import History, TrainConfig, fit, load_checkpoint, save_atomic


def train_or_load_model(name: str, build_model: Callable[[], nn.Module], settings: Any, train_config: TrainConfig,
                        make_loader: Callable[[], Any], data_key: dict[str, Any], *,
                        loss_fn: Callable | None = None, val_fn: Callable | None = None,
                        cache: str | os.PathLike | None = None, force: bool = False,
                        callbacks: Sequence = (), device: str | torch.device | None = None,
                        ) -> tuple[nn.Module, History, Path]:
    """Load model `name` from the cache if one with exactly these settings was trained before;
    otherwise build it, train it with `mmcourse.train.fit` and cache its `state_dict()`.

    Args:
        name: a file-name-safe model name, e.g. "digits_hf_clip".
        build_model: `build_model() -> nn.Module`, called after seeding torch with
            `train_config.seed`, so the initial weights depend on the seed only.
        settings: everything that defines the architecture (a dataclass or JSON-able value);
            part of the cache key.
        train_config: how to train (part of the key, minus device/progress/log_every).
        make_loader: `make_loader() -> DataLoader` of training batches (called only to train).
        data_key: JSON-able description of the data (part of the key).
        loss_fn, val_fn, callbacks: passed to `fit`.
        cache: the cache folder (default `MMCOURSE_CACHE` or `~/.cache/mmcourse`).
        force: retrain even if cached.
        device: where to put a loaded model (default: `train_config.device`, else
            `mmcourse.utils.get_device()`).

    Returns:
        (model in eval mode, its training `History`, the cache file).
    """
    key = config_hash(name, settings, _train_key(train_config), data_key)
    path = cache_dir(cache) / f"{name}_{key}.pt"
    with _exclusive(path.with_name(path.name + ".lock")):
        partial = path.with_name(path.stem + ".partial.pt")
        if path.exists() and not force:
            from .utils import get_device

            saved = load_checkpoint(path)
            model = build_model()
            model.load_state_dict(saved["model"])
            model.to(torch.device(device or train_config.device or get_device()))
            return model.eval(), History.from_dict(saved["history"]), path
        if force:
            partial.unlink(missing_ok=True)
        torch.manual_seed(train_config.seed)
        model = build_model()
        history = fit(model, make_loader(), train_config, loss_fn=loss_fn, val_fn=val_fn, callbacks=callbacks,
                      checkpoint_path=partial, resume=True)
        if history.stopped == "interrupted":
            warnings.warn(f"training was interrupted; the next call resumes from {partial}", stacklevel=2)
            return model.eval(), history, partial
        save_atomic({"model": {k: v.cpu() for k, v in model.state_dict().items()}, "settings": settings if isinstance(settings, dict) else repr(settings),
                     "data": data_key, "history": history.to_dict()}, path)
        partial.unlink(missing_ok=True)
        return model.eval(), history, path
