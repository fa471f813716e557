"""The course's own trained models: load them (cached or shipped), or train and cache them.

Every lesson model the course trains itself (never downloaded, never "pre-trained weights" from
elsewhere) is a `Recipe`: the data (`make_loader`, `data_key`), the model builder and its
`settings`, and the `TrainConfig`. `train_or_load(recipe)` loads it from the cache or the shipped
weights, and trains it with `mmcourse.training.fit` (then caches it) only when neither has it.

A trained model is saved under a name that hashes everything that determines it (model settings,
training config, data settings, a format version), in `MMCOURSE_CACHE` or else
`~/.cache/mmcourse`. Files are written atomically (temporary file, then rename), so an
interrupted save never leaves a broken cache entry; an interrupted *training* keeps its
checkpoint and resumes from it on the next call. Two processes asking for the same model: the
second waits for the first (an inter-process lock), then loads its result.

Shipped weights: the course ships, in `mmcourse/recipes/weights/`, the models its lessons and
assignments load, as these recipes trained them on the reference setup (one torch thread, AVX2 kernels), under
the same file names. A recipe not in the cache is loaded from there instead of trained, so a lesson's
first run does not wait for training; a changed recipe has a new key, finds no shipped file and is
trained. `MMCOURSE_SHIPPED_WEIGHTS=0` ignores them (everything trains from scratch, as `make weights`
does to rebuild them); `=required` makes a lesson that would train a model the course should have
shipped fail with an error instead (the test suite's staleness check).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
import torch.nn as nn

from mmcourse.models.clip import CLIP, CLIPConfig
from mmcourse.training.types import History, TrainConfig
from mmcourse.training.loop import fit
from mmcourse.training.checkpoint import load_checkpoint, save_atomic
from mmcourse._filelock import file_lock
from mmcourse.utils import REFERENCE_THREADS, torch_threads


SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights"
SHIPPED_MODES = ("1", "0", "required")

CACHE_VERSION = 2  # bump when the saved format or the training code changes what a config means
# 2: batches padded to their longest caption (`make_collate`), images channels-last in `SmallCNN`


# ------------------------------------------------------------------------------ the cache

def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Where trained models are kept: `path`, else `MMCOURSE_CACHE`, else `~/.cache/mmcourse`."""
    path = path or os.environ.get("MMCOURSE_CACHE") or Path.home() / ".cache" / "mmcourse"
    return Path(path).expanduser()


def shipped_mode() -> str:
    """`MMCOURSE_SHIPPED_WEIGHTS`: "1" (default) load shipped weights, "0" ignore them, "required"
    raise `ShippedWeightsMissing` instead of training a lesson model into the default cache.

    Raises:
        ValueError: the variable holds anything else (named, with the values it takes).
    """
    mode = os.environ.get("MMCOURSE_SHIPPED_WEIGHTS", "1").strip().lower() or "1"
    if mode not in SHIPPED_MODES:
        raise ValueError(f"MMCOURSE_SHIPPED_WEIGHTS={mode!r}: use 1 (load the shipped weights), 0 (train "
                         f"everything from scratch) or required (fail instead of training a lesson model)")
    return mode


class ShippedWeightsMissing(RuntimeError):
    """A model the course should ship is not in `mmcourse/recipes/weights/` (stale shipped weights)."""


def config_hash(*parts: Any) -> str:
    """A short stable hash of dataclasses / JSON-able values."""
    text = json.dumps([CACHE_VERSION, [_jsonable(p) for p in parts]], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _jsonable(value: Any) -> Any:
    """Dataclasses as dicts, also inside lists, tuples and dicts (what the key and the saved settings hold)."""
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _train_key(config: TrainConfig) -> dict[str, Any]:
    # Settings that do not change the trained weights stay out of the key.
    return {k: v for k, v in asdict(config).items() if k not in ("device", "progress", "log_every")}


@dataclass(frozen=True)
class Recipe:
    """One of the course's trained models, as data: what to build, on what data, how to train.

    Attributes:
        name: a file-name-safe model name, e.g. "digits_clip" (the cache file starts with it).
        build_model: `build_model() -> nn.Module`, called after seeding torch with
            `train_config.seed`, so the initial weights depend on the seed only.
        settings: what defines the architecture (a dataclass or JSON-able value); hashed into the key.
        train_config: how to train (`mmcourse.training.TrainConfig`).
        make_loader: `make_loader() -> DataLoader` of training batches (called only to train).
        data_key: JSON-able description of the data (hashed into the key), or None.
        loss_fn: `loss_fn(model, batch) -> loss` for `fit` (default: the CLIP loss).
        val_fn: `val_fn(model) -> dict` run by `fit` after each epoch (recorded in the history).
    """

    name: str
    build_model: Callable[[], nn.Module]
    settings: Any
    train_config: TrainConfig
    make_loader: Callable[[], Any]
    data_key: Any = None
    loss_fn: Callable | None = None
    val_fn: Callable | None = None

    def key(self) -> str:
        """The hash of everything that determines the trained weights: name, settings, training
        config (minus device/progress/log_every, which do not change them) and data key."""
        return config_hash(self.name, self.settings, _train_key(self.train_config), self.data_key)

    def path(self, cache: str | os.PathLike | None = None) -> Path:
        """The cache file this recipe's model is (or will be) saved in."""
        return cache_dir(cache) / f"{self.name}_{self.key()}.pt"


class TrainedModel(NamedTuple):
    """What `train_or_load` returns; unpacks as `model, history, path = ...`."""

    model: nn.Module
    history: History
    path: Path


def train_or_load(recipe: Recipe, *, cache: str | os.PathLike | None = None, force: bool = False,
                  callbacks: Sequence = (), device: str | torch.device | None = None,
                  shipped: bool = True) -> TrainedModel:
    """Load or train: the one mechanism behind every trained model of every lesson.

    Loads `recipe`'s model from the cache if one with exactly this recipe's key was trained
    before, else from the course's shipped weights if they hold it (see the module docstring);
    otherwise builds it, trains it with `mmcourse.training.fit` (resuming an interrupted
    earlier attempt from its checkpoint) and caches its `state_dict()`. Training runs with one
    torch thread (`mmcourse.utils.torch_threads`): the thread count changes the order of
    floating-point sums (a convolution's weight gradient), so with it the trained weights and every
    figure computed from them; with one thread and the same CPU kernels (AVX2 on x86-64, which the reference
    setup pins: `mmcourse.classroom.course.reference_cpu_env`) the same model is trained on every machine. Two notebooks (or test
    workers) asking for the same model at once: the second waits for the first, then loads its
    result.

    Args:
        recipe: the `Recipe`.
        cache: the cache folder (default `MMCOURSE_CACHE` or `~/.cache/mmcourse`).
        force: retrain even if cached or shipped.
        callbacks: passed to `fit` when training (e.g. `LivePlot()`).
        device: where to put a loaded model (default `train_config.device`, else `get_device()`).
        shipped: look in the shipped weights (False: train it here unless cached, as lesson 04 does
            to show training).

    The global torch random state is the same after the call as before it, whether the model was
    loaded or trained (so what a lesson draws next does not depend on the cache).

    Returns:
        `TrainedModel(model in eval mode, its training History, the file it came from)`; if training
        was interrupted, the model so far and the checkpoint the next call resumes from.

    Raises:
        TypeError: `recipe` is not a `Recipe`.
        ValueError: `MMCOURSE_SHIPPED_WEIGHTS` holds an unknown value.
        ShippedWeightsMissing: `MMCOURSE_SHIPPED_WEIGHTS=required`, the default cache, and a model
            that is neither cached nor shipped (the shipped weights are stale: `make weights`).
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(f"train_or_load takes a Recipe, got {type(recipe).__name__}")
    mode = shipped_mode()
    # The caller's random state is left as it was, whether the model is loaded or trained: otherwise what a
    # lesson computes after this call (a shuffled batch, a random init) would differ between a first run,
    # which trained, and every later one, which loaded.
    with torch.random.fork_rng(devices=_rng_devices()):
        return _train_or_load(recipe, cache, force, callbacks, device, shipped, mode)


def _rng_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def _train_or_load(recipe: Recipe, cache, force: bool, callbacks: Sequence, device, shipped: bool,
                   mode: str) -> TrainedModel:
    train_config = recipe.train_config
    path = recipe.path(cache)
    with file_lock(path.with_name(path.name + ".lock")):
        partial = path.with_name(path.stem + ".partial.pt")
        torch.manual_seed(train_config.seed)  # the initial weights depend on the seed only
        model = recipe.build_model()
        ship = SHIPPED_WEIGHTS / path.name
        for source in (path, ship if shipped and mode != "0" else None):
            if source is not None and source.exists() and not force:
                from mmcourse.utils import get_device

                saved = load_checkpoint(source)
                model.load_state_dict(saved["model"])
                model.to(torch.device(device or train_config.device or get_device()))
                return TrainedModel(model.eval(), History.from_dict(saved["history"]), source)
        if shipped and mode == "required" and cache is None and not force:
            raise ShippedWeightsMissing(
                f"{path.name}: this model is neither in the cache nor in the shipped weights "
                f"({SHIPPED_WEIGHTS}); a recipe changed since they were built: run `make weights`")
        if force:
            partial.unlink(missing_ok=True)
        with torch_threads(REFERENCE_THREADS):  # the same weights whatever the caller's thread count
            history = fit(model, recipe.make_loader(), train_config, loss_fn=recipe.loss_fn, val_fn=recipe.val_fn,
                          callbacks=callbacks, checkpoint_path=partial, resume=True)
        if history.stopped == "interrupted":
            warnings.warn(f"training was interrupted; the next call resumes from {partial}", stacklevel=2)
            return TrainedModel(model.eval(), history, partial)
        save_atomic({"model": {k: v.cpu() for k, v in model.state_dict().items()}, "settings": _jsonable(recipe.settings),
                     "train_config": asdict(train_config), "data": recipe.data_key, "history": history.to_dict()},
                    path)
        partial.unlink(missing_ok=True)
        return TrainedModel(model.eval(), history, path)


def clip_recipe(name: str, config: CLIPConfig, train_config: TrainConfig, make_loader: Callable[[], Any],
                data_key: Any, val_fn: Callable | None = None) -> Recipe:
    """A `Recipe` for the course's `CLIP` built from `config` (trained with the CLIP loss)."""
    return Recipe(name, lambda: CLIP(config), config, train_config, make_loader, data_key, val_fn=val_fn)
