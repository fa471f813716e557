"""Checkpoints of `mmcourse.train.fit`: the whole run state, saved atomically, and the checks
that a resumed run is the run that was saved.

A checkpoint holds the model, optimizer, scheduler (and gradient scaler), every random number
generator (Python, NumPy, torch, CUDA, the loader's own), the history, and where in the epoch
the run stopped. `fit(..., resume=True)` continues from it exactly, which needs everything the
run depends on to be unchanged: the `TrainConfig` (except fields that do not change the result,
`RESUMABLE_CHANGES`), and the data loader (`loader_fingerprint`: its number of batches, batch
size, dataset length and number of random generators). A difference raises a `ValueError`
naming the old and new values and what to do, instead of a bare `StopIteration` or a silently
different run.
"""
from __future__ import annotations

import os
import random
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from .callbacks import TrainState
    from .train import TrainConfig

__all__ = ["save_atomic", "save_checkpoint", "load_checkpoint", "loader_fingerprint", "check_resumable",
           "RESUMABLE_CHANGES"]

# TrainConfig fields that may change between a run and its resumption without changing the result.
RESUMABLE_CHANGES = {"device", "max_seconds", "log_every", "progress"}


def _loader_generators(loader: Any) -> list[torch.Generator]:
    gens = []
    for obj in (loader, getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        g = getattr(obj, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not x for x in gens):
            gens.append(g)
    return gens


def _rng_state(loader: Any) -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "loader": [g.get_state() for g in _loader_generators(loader)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], loader: Any) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    for g, s in zip(_loader_generators(loader), state["loader"]):
        g.set_state(s)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` to a temporary file in the same folder, then rename it: a crash while
    saving never leaves a broken file behind (a rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(path: str | os.PathLike, state: TrainState, extra: dict[str, Any]) -> None:
    """Write a checkpoint of the whole training state atomically (see `save_atomic`)."""
    payload = {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "config": asdict(state.config),
        "history": state.history.to_dict(),
        "epoch": state.epoch,
        "global_step": state.global_step,
        **extra,
    }
    save_atomic(payload, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `fit` (a trusted local file: it holds RNG states, so it is
    loaded with `weights_only=False`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=False)


def _check_same_config(saved: dict[str, Any], config: TrainConfig) -> None:
    now = asdict(config)
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and _norm(saved.get(k)) != _norm(now[k]))
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ValueError(f"cannot resume: the TrainConfig differs from the checkpoint's ({detail}); "
                         f"use the same config or a new checkpoint_path")


def _norm(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v
