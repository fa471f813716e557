"""Checkpoints of `mmcourse.training.loop.fit`: the whole run state, saved atomically, and the checks
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
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from mmcourse.training.types import TrainConfig, TrainState

__all__ = ["save_atomic", "save_checkpoint", "load_checkpoint", "loader_fingerprint", "check_resumable",
           "restore", "RESUMABLE_CHANGES"]

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


def loader_fingerprint(loader: Any) -> dict[str, Any]:
    """What a resumed run assumes about its data loader: `batches` (its length), `batch_size`,
    `dataset_len`, `sampler` (the class name: shuffled or not), `drop_last` and `generators`
    (how many torch.Generators drive its order). Entries a loader does not have are None."""
    dataset = getattr(loader, "dataset", None)
    try:
        dataset_len = len(dataset) if dataset is not None else None
    except TypeError:
        dataset_len = None
    sampler = getattr(loader, "sampler", None)
    return {"batches": len(loader), "batch_size": getattr(loader, "batch_size", None), "dataset_len": dataset_len,
            "sampler": type(sampler).__name__ if sampler is not None else None,
            "drop_last": getattr(loader, "drop_last", None), "generators": len(_loader_generators(loader))}


_REQUIRED = ("model", "optimizer", "scheduler", "config", "history", "epoch", "global_step", "step_in_epoch",
             "rng", "rng_epoch_start")


def check_resumable(ckpt: dict[str, Any], config: TrainConfig, run: dict[str, Any]) -> None:
    """Refuse to resume from `ckpt` into a run that differs from the saved one.

    Args:
        ckpt: a checkpoint dict from `load_checkpoint`.
        config: the `TrainConfig` of the resumed run.
        run: the resumed run's `{"loader": loader_fingerprint(loader), "world_size": ...}`; entries
            the checkpoint does not have (older checkpoints) are not compared.

    Raises:
        ValueError: naming what differs (old -> new) and what to do: the checkpoint lacks entries
            a resume needs, a `TrainConfig` field other than `RESUMABLE_CHANGES` changed, the
            loader has another number of batches per epoch (or batch size, dataset length,
            sampler, drop_last, number of generators), or another world size (number of processes).
    """
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise ValueError(f"cannot resume: the checkpoint lacks {missing} (it was not written by fit, or by an older "
                         f"version); start a new run with another checkpoint_path or resume=False")
    _check_same_config(ckpt["config"], config)
    saved = ckpt.get("run", {})
    old, new = saved.get("loader", {}), run.get("loader", {})
    if "batches" in old and old["batches"] != new.get("batches"):
        changed = "".join(f", {k} {old.get(k)!r} -> {new.get(k)!r}" for k in ("batch_size", "dataset_len", "drop_last")
                          if old.get(k) != new.get(k))
        raise ValueError(
            f"cannot resume: the checkpoint's train_loader had {old['batches']} batches per epoch, this one has "
            f"{new.get('batches')}{changed}. The learning-rate schedule, the epoch boundaries and the place to "
            f"resume (step {ckpt['step_in_epoch']} of epoch {ckpt['epoch'] + 1}) depend on it: pass a loader over "
            f"the same dataset with the same batch_size ({old['batches']} batches per epoch), or start a new run "
            f"with another checkpoint_path (or resume=False)")
    differ = [k for k in old if k != "batches" and k in new and old[k] != new[k]]
    if differ:
        detail = ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in differ)
        raise ValueError(f"cannot resume: the train_loader differs from the checkpoint's ({detail}), so the data "
                         f"order differs from the saved run's; pass the same loader (same dataset, batch_size, "
                         f"shuffle, drop_last, generator) or start a new run with another checkpoint_path")
    if "world_size" in saved and saved["world_size"] != run.get("world_size"):
        raise ValueError(f"cannot resume: the checkpoint was trained by {saved['world_size']} processes, this run has "
                         f"{run.get('world_size')}: each process's share of the data differs; launch as many "
                         f"processes, or start a new run with another checkpoint_path")


def restore(ckpt: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
            scaler: Any = None) -> None:
    """Load the model, optimizer, scheduler (and gradient scaler) states of `ckpt`, raising a
    `ValueError` that names the parameters when the model or its trainable parameters changed."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).split("\n\t", 2)[:2]
        raise ValueError(f"cannot resume: the model's parameters differ from the checkpoint's ({' '.join(first)[:400]}); "
                         f"build the model with the same config, or start a new run with another checkpoint_path") from None
    saved_names = [g.get("names") for g in ckpt["optimizer"]["param_groups"]]
    now_names = [g.get("names") for g in optimizer.param_groups]
    if saved_names != now_names or any(len(a["params"]) != len(b["params"]) for a, b in
                                       zip(ckpt["optimizer"]["param_groups"], optimizer.param_groups)):
        was = {n for g in saved_names for n in (g or [])}
        now = {n for g in now_names for n in (g or [])}
        raise ValueError(f"cannot resume: the trainable parameters differ from the checkpoint's (now trainable, "
                         f"were not: {sorted(now - was)[:5]}; were trainable, now not: {sorted(was - now)[:5]}); "
                         f"freeze the same parameters as the saved run (requires_grad), or start a new run")
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])


def _check_same_config(saved: dict[str, Any], config: TrainConfig) -> None:
    now = asdict(config)
    # a field the checkpoint lacks was added later: the saved run had its default
    saved = {**{f.name: f.default for f in fields(config) if f.default is not MISSING}, **saved}
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and _norm(saved.get(k)) != _norm(now[k]))
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ValueError(f"cannot resume: the TrainConfig differs from the checkpoint's ({detail}); "
                         f"use the same config or a new checkpoint_path")


def _norm(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v
