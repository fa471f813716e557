"""The types the training loop, its checkpoints and its callbacks share: `TrainConfig` (how to
train), `History` (what happened), `TrainState` (the running state a callback sees) and `Callback`.

They live here, below `loop`, `checkpoint` and `callbacks`, so those three import this module and
never each other in a circle.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn as nn

__all__ = ["TrainConfig", "History", "TrainState", "Callback"]

_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    """How to train. The batch size is the data loader's.

    Attributes:
        epochs: passes over the training loader.
        lr: peak learning rate (reached at the end of warmup).
        weight_decay: AdamW decay for weight matrices; gains, biases and `logit_scale` get none.
        betas, eps: AdamW's (open_clip's defaults for ViTs).
        warmup_steps: steps of linear warmup; if None, `warmup_fraction` of all steps.
        warmup_fraction: used when `warmup_steps` is None.
        grad_clip_norm: clip the gradient norm to this value (None: no clipping).
        logit_scale_max: clamp `model.logit_scale` to [0, this] after every step (None: no clamp).
        seed: seeds Python, NumPy, torch and the loader's shuffling generator (if it has one)
            at the start of a fresh run, so a run can be repeated with the same loader object.
        device: "cpu", "cuda", "mps"...; None picks with `mmcourse.utils.get_device`.
        max_seconds: stop after this much training time (validation excluded); None: no limit.
        log_every: update the progress bar's loss read-out every this many steps.
        progress: show a tqdm progress bar.
        grad_cache_chunk: compute each batch's loss and gradients by gradient caching in
            chunks of this many pairs (`mmcourse.training.gradcache`): the same gradients as the whole
            batch (models without BatchNorm) with the activation memory of one chunk. Needs
            the default CLIP/SigLIP loss (no custom `loss_fn`) and one process. None: off.
        precision: "fp32"; "bf16" (bfloat16 autocast, CPU or CUDA); "fp16" (float16 autocast
            with a `GradScaler`, CUDA only). The loss is always computed in float32.
    """

    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int | None = None
    warmup_fraction: float = 0.05
    grad_clip_norm: float | None = None
    logit_scale_max: float | None = math.log(100)
    seed: int = 0
    device: str | None = None
    max_seconds: float | None = None
    log_every: int = 10
    progress: bool = True
    grad_cache_chunk: int | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, got {self.max_seconds}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")
        if self.grad_cache_chunk is not None and (isinstance(self.grad_cache_chunk, bool) or
                                                  not isinstance(self.grad_cache_chunk, int) or self.grad_cache_chunk < 1):
            raise ValueError(f"grad_cache_chunk must be a positive int (pairs per chunk) or None, got {self.grad_cache_chunk!r}")
        if self.precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, got {self.precision!r}")

    def num_warmup_steps(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return min(self.warmup_steps, total_steps)
        return int(round(self.warmup_fraction * total_steps))


@dataclass
class History:
    """What happened during training.

    Per step (lists of equal length): `step` (1-based global step), `epoch` (fractional: 1.5 is
    half-way through the second epoch), `loss`, `logit_scale` (exponentiated, i.e. 1 /
    temperature, after the clamp), `lr` (the rate used for that step), `time` (seconds of
    training so far, validation excluded).

    Per epoch: `val`, one dict per finished epoch with `epoch`, `step`, `time` and whatever
    `val_fn` returned. `stopped` says why training ended early ("interrupted", "max_seconds",
    "callback") or is None.
    """

    step: list[int] = field(default_factory=list)
    epoch: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    logit_scale: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)
    stopped: str | None = None

    def metric(self, name: str) -> tuple[list[float], list[float]]:
        """(epochs, values) of a validation metric, e.g. `history.metric("zero_shot_top1")`."""
        rows = [row for row in self.val if name in row]
        if not rows:
            known = sorted({k for row in self.val for k in row} - {"epoch", "step", "time"})
            raise KeyError(f"no validation metric {name!r} in the history; known: {known}")
        return [row["epoch"] for row in rows], [row[name] for row in rows]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "History":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def __repr__(self) -> str:
        last = f", last loss {self.loss[-1]:.4f}" if self.loss else ""
        return f"History({len(self.step)} steps, {len(self.val)} epochs validated{last})"



class Callback:
    """Override any of these. `state` is the running `TrainState`; set `state.stop = True` to end
    training after the current step."""

    def on_train_begin(self, state: "TrainState") -> None: ...
    def on_step_end(self, state: "TrainState") -> None: ...
    def on_epoch_end(self, state: "TrainState") -> None: ...
    def on_train_end(self, state: "TrainState") -> None: ...


@dataclass
class TrainState:
    """What a callback sees: the model, optimizer and scheduler being trained, the config, the
    history so far, and counters (`epoch`: epochs finished, `global_step`: steps finished)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    config: TrainConfig
    history: History
    total_steps: int
    epoch: int = 0  # epochs finished
    global_step: int = 0  # steps finished
    stop: bool = False
