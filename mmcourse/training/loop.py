"""The course's one training loop: `fit(model, train_loader, config) -> History`.

What it does, in the order of one step (as open_clip's `train_one_epoch`):

1. move the batch to the device, `loss = loss_fn(model, batch)` (default: the CLIP loss),
2. `loss.backward()`, optional gradient clipping, AdamW step, learning-rate schedule step
   (linear warmup, then cosine decay to zero),
3. clamp `model.logit_scale` to [0, ln 100] so the temperature stays >= 0.01,
4. record loss, logit scale (exponentiated) and learning rate in the `History`.

After each epoch it runs `val_fn(model) -> dict` (if given), calls the callbacks and saves a
checkpoint (if `checkpoint_path` is given). A checkpoint holds the model, optimizer, scheduler,
every random number generator and the history, so `fit(..., resume=True)` continues exactly
where the run stopped: the loss curve is the one an uninterrupted run gives. Interrupting
(Ctrl-C / the stop button) never loses work: `fit` saves a checkpoint and returns the history
so far. Checkpoints live in `mmcourse.training.checkpoint`, callbacks in `mmcourse.training.callbacks` (both
importable from here too).

Options for large batches (lesson 10): `TrainConfig(grad_cache_chunk=k)` does the forward and backward by
gradient caching in chunks of k pairs (`mmcourse.training.gradcache`: the same gradients, one chunk's
memory); `TrainConfig(precision="bf16")` runs the forward under autocast (the loss stays float32;
"fp16" adds a `GradScaler`, CUDA only); a DDP-wrapped model with
`mmcourse.objectives.distributed.DistributedContrastiveLoss` trains on several processes.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn

from mmcourse.training.checkpoint import (_loader_generators, _rng_state, _set_rng_state, check_resumable,
                                          load_checkpoint, loader_fingerprint, restore, save_checkpoint)
from mmcourse.training.gradcache import grad_cache_step
from mmcourse.training.types import Callback, History, TrainConfig, TrainState
from mmcourse.objectives.losses import clip_loss, siglip_loss
from mmcourse.utils import get_device, seed_everything
from mmcourse.training.types import _PRECISIONS

__all__ = ["fit", "clip_loss_fn", "param_groups", "make_optimizer", "lr_factor", "make_scheduler",
           "clamp_logit_scale"]

# ----------------------------------------------------------------------------------------------
# Configuration and history


# ----------------------------------------------------------------------------------------------
# Pieces of the loop: the loss, the optimizer, the schedule


def clip_loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The default `loss_fn`: the symmetric CLIP loss of a batch of matching image-caption pairs
    (`mmcourse.objectives.losses.clip_loss`; the sigmoid loss `siglip_loss` if the model has a `logit_bias`).

    Args:
        model: a `CLIP` (anything whose forward returns `image_embeds`, `text_embeds` and
            `logit_scale`).
        batch: dict with "image" (B, C, H, W), "input_ids" (B, L) and optionally
            "attention_mask" (B, L).

    Returns:
        The scalar loss.
    """
    missing = {"image", "input_ids"} - set(batch)
    if missing:
        raise ValueError(f"the batch lacks {sorted(missing)}: the CLIP loss needs images and captions "
                         f"(or pass your own loss_fn)")
    out = model(image=batch["image"], input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
    if out["logit_bias"] is not None:  # a SigLIP model
        return siglip_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"], out["logit_bias"])
    return clip_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"])


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups as open_clip builds them: no weight decay for parameters with
    fewer than 2 dimensions (gains, biases, the scalar `logit_scale`) or whose name says they
    belong to a norm layer ("bn", "ln") or are biases or the logit scale. Decaying a gain or
    the temperature would pull it towards zero, which nobody wants.

    Returns:
        [{"params": decayed, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
        each group also has "names" (for inspection).
    """
    def exclude(name: str, p: torch.Tensor) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    decay, no_decay = [], []
    for name, p in model.named_parameters():  # a shared parameter is listed once
        if p.requires_grad:
            (no_decay if exclude(name, p) else decay).append((name, p))
    return [
        {"params": [p for _, p in decay], "names": [n for n, _ in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay], "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups(model, config.weight_decay)`."""
    groups = param_groups(model, config.weight_decay)
    # foreach=False keeps CPU results bit-identical whatever the parameter grouping
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, foreach=False)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the peak learning rate for (0-based) `step`: linear warmup reaching 1 at
    the last warmup step, then a cosine decay to 0 at `total_steps` (as open_clip's
    `cosine_lr`)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """A `LambdaLR` following `lr_factor`; call `.step()` after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup_steps, total_steps))


def clamp_logit_scale(model: nn.Module, max_value: float | None = math.log(100)) -> None:
    """Clamp `model.logit_scale` (stored as a log) to [0, max_value], in place, if the model has
    a learnable one. Exponentiated: the scale stays in [1, 100], the temperature in [0.01, 1]."""
    scale = getattr(model, "logit_scale", None)
    if max_value is not None and isinstance(scale, torch.Tensor) and scale.requires_grad:
        with torch.no_grad():
            scale.clamp_(0, max_value)


@contextlib.contextmanager
def _defer_interrupt():
    """Hold a Ctrl-C until the block ends, so an update is never half applied."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *args: received.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


# ----------------------------------------------------------------------------------------------
# The loop


def fit(
    model: nn.Module,
    train_loader: Iterable,
    config: TrainConfig | None = None,
    *,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor | dict[str, torch.Tensor]] | None = None,
    val_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    callbacks: Sequence[Callback] = (),
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
) -> History:
    """Train `model` and return its `History`.

    Args:
        model: any `nn.Module`; moved to `config.device` (default: `get_device()`). Under
            `torchrun` it may be wrapped in `DistributedDataParallel` (see `mmcourse.training.ddp`):
            rank 0 alone writes checkpoints and shows progress, the history records the loss
            averaged over processes, and a `DistributedSampler` gets `set_epoch` every epoch.
        train_loader: an iterable of batches with a length (e.g. a `DataLoader`). For exactly
            repeatable runs give the DataLoader a `generator`, or rely on the global seed.
        config: a `TrainConfig` (defaults if None).
        loss_fn: `loss_fn(model, batch) -> loss` (a scalar, or a dict whose "loss" entry, or
            else whose sum, is the loss). Default: `clip_loss_fn`, the CLIP loss.
        val_fn: `val_fn(model) -> dict[str, float]`, run after every epoch in eval mode without
            gradients; its values go to `history.val`.
        callbacks: `Callback`s, e.g. `LivePlot()`.
        checkpoint_path: save a checkpoint here after every epoch and when stopped early.
        resume: continue from `checkpoint_path` if it exists (exactly: same losses as an
            uninterrupted run); a finished run returns its history without training.

    Returns:
        The `History`. On Ctrl-C, the history so far (with `stopped="interrupted"`), after
        saving a checkpoint when `checkpoint_path` is given. The model is left in eval mode.

    Raises:
        ValueError: a loader without length or batches, a non-scalar loss, `resume` without a
            checkpoint path, or a checkpoint written by a different run: another `TrainConfig`,
            a loader with another number of batches (batch size, dataset, sampler, generators),
            another model, set of trainable parameters or world size (see
            `mmcourse.training.checkpoint.check_resumable`).
        FloatingPointError: the loss became NaN or infinite (training diverged).
    """
    config = config or TrainConfig()
    if config.grad_cache_chunk is not None and loss_fn not in (None, clip_loss_fn):
        raise ValueError("grad_cache_chunk computes the CLIP/SigLIP loss from the model's embeddings itself: "
                         "it cannot split a custom loss_fn into chunks (drop loss_fn or grad_cache_chunk)")
    loss_fn = loss_fn or clip_loss_fn
    try:
        steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError("train_loader must have a length (e.g. a DataLoader) to plan the schedule") from None
    if steps_per_epoch == 0:
        raise ValueError("train_loader is empty: no batches to train on (drop_last with too few samples?)")
    if resume and checkpoint_path is None:
        raise ValueError("resume=True needs a checkpoint_path")
    total_steps = config.epochs * steps_per_epoch
    world_size = torch.distributed.get_world_size() if torch.distributed.is_available() and torch.distributed.is_initialized() else 1
    if config.grad_cache_chunk is not None and world_size > 1:
        raise ValueError("grad_cache_chunk works in one process; across processes use a distributed loss "
                         "(mmcourse.objectives.distributed) and a smaller batch per process")
    device = torch.device(config.device) if config.device else get_device()
    autocast, scaler = _mixed_precision(config.precision, device)
    model.to(device)
    core = _unwrap(model)  # the model itself, also when wrapped in DistributedDataParallel
    rank = torch.distributed.get_rank() if world_size > 1 else 0

    ckpt = load_checkpoint(checkpoint_path) if resume and Path(checkpoint_path).exists() else None
    if ckpt is None:  # a fresh run: every generator starts from config.seed, so runs repeat exactly
        seed_everything(config.seed)
        for g in _loader_generators(train_loader):
            g.manual_seed(config.seed)
    optimizer = make_optimizer(core, config)
    scheduler = make_scheduler(optimizer, config.num_warmup_steps(total_steps), total_steps)
    state = TrainState(core, optimizer, scheduler, config, History(), total_steps)
    elapsed = 0.0  # seconds of training (validation excluded), carried across resumptions
    step_in_epoch = 0  # steps of the current epoch already done
    # rng_resume: the generators' state right after the last finished step (or at the start of
    # the current epoch); rng_epoch_start: their state when the current epoch's iterator was made.
    rng_resume = rng_epoch_start = None
    run = {"loader": loader_fingerprint(train_loader), "world_size": world_size}
    if ckpt is not None:
        check_resumable(ckpt, config, run)  # same config, loader and world size, or a ValueError
        restore(ckpt, core, optimizer, scheduler, scaler)
        state.history = History.from_dict(ckpt["history"])
        state.history.stopped = None
        state.epoch, state.global_step = ckpt["epoch"], ckpt["global_step"]
        elapsed = state.history.time[-1] if state.history.time else 0.0
        step_in_epoch = ckpt["step_in_epoch"]
        rng_resume, rng_epoch_start = ckpt["rng"], ckpt["rng_epoch_start"]
        if step_in_epoch == 0:
            _set_rng_state(rng_resume, train_loader)
        if state.epoch >= config.epochs:
            return state.history

    def save() -> None:
        if checkpoint_path is not None and rank == 0:  # one writer across processes
            save_checkpoint(checkpoint_path, state, {"step_in_epoch": step_in_epoch, "rng": rng_resume,
                                                     "rng_epoch_start": rng_epoch_start, "run": run,
                                                     "scaler": scaler.state_dict() if scaler else None})

    from tqdm.auto import tqdm

    # TQDM_DISABLE=1 (tqdm's own switch, set by the reference setup of `make course` and the tests) hides the bar
    # everywhere, also in a notebook where tqdm.auto draws a widget that ignores it.
    quiet = os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    bar = tqdm(total=total_steps, initial=state.global_step, disable=not config.progress or rank != 0 or quiet,
               desc="training", unit="step", dynamic_ncols=True)
    for cb in callbacks:
        cb.on_train_begin(state)
    model.train()
    try:
        while state.epoch < config.epochs and not state.stop:
            sampler = getattr(train_loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):  # a DistributedSampler shuffles per epoch
                sampler.set_epoch(state.epoch)
            if step_in_epoch:
                # Resuming inside an epoch: replay the epoch's data order, skip the batches already
                # done, then restore the generators as they were after the last finished step.
                _set_rng_state(rng_epoch_start, train_loader)
                iterator = iter(train_loader)
                for _ in range(step_in_epoch):
                    next(iterator)
                _set_rng_state(rng_resume, train_loader)
            else:
                rng_epoch_start = rng_resume = _rng_state(train_loader)
                iterator = iter(train_loader)
            for batch in iterator:
                t0 = time.perf_counter()
                batch = _to_device(batch, device)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.zero_grad(set_to_none=True)
                if config.grad_cache_chunk is not None:  # forward and backward, chunk by chunk
                    loss = grad_cache_step(model, batch, config.grad_cache_chunk, autocast=autocast,
                                           scale=scaler.scale if scaler else lambda x: x)
                else:
                    with autocast():
                        loss = _as_loss(loss_fn(model, batch))
                    if torch.isfinite(loss):
                        (scaler.scale(loss) if scaler else loss).backward()
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"the loss is {loss.item()} at step {state.global_step + 1}: training diverged "
                        f"(lower the learning rate, or check the inputs for NaN)")
                loss = _mean_over_processes(loss.detach().float(), world_size)
                with _defer_interrupt():  # the update and its bookkeeping happen entirely or not at all
                    if scaler is not None:
                        scaler.unscale_(optimizer)  # clip the true gradients
                    if config.grad_clip_norm is not None:
                        nn.utils.clip_grad_norm_(core.parameters(), config.grad_clip_norm)
                    if scaler is not None:
                        scaler.step(optimizer)  # skipped if the scaled gradients overflowed
                        scaler.update()
                    else:
                        optimizer.step()
                    scheduler.step()
                    clamp_logit_scale(core, config.logit_scale_max)
                    state.global_step += 1
                    step_in_epoch += 1
                    elapsed += time.perf_counter() - t0
                    _record_step(state, loss, lr, elapsed, steps_per_epoch)
                    rng_resume = _rng_state(train_loader)
                if state.global_step % config.log_every == 0 or step_in_epoch == steps_per_epoch:
                    bar.set_postfix(loss=f"{state.history.loss[-1]:.3f}",
                                    scale=f"{state.history.logit_scale[-1]:.1f}", refresh=False)
                bar.update(1)
                for cb in callbacks:
                    cb.on_step_end(state)
                if config.max_seconds is not None and elapsed >= config.max_seconds:
                    state.history.stopped = "max_seconds"
                    state.stop = True
                if state.stop:
                    break
            if step_in_epoch < steps_per_epoch:  # stopped inside the epoch
                state.history.stopped = state.history.stopped or "callback"
                break
            next(iterator, None)  # finish the iterator as a full pass does (samplers draw at the end)
            _validate(state, val_fn, elapsed)
            with _defer_interrupt():
                state.epoch += 1
                step_in_epoch = 0
                rng_resume = _rng_state(train_loader)
                save()
            for cb in callbacks:
                cb.on_epoch_end(state)
        if state.stop and state.history.stopped is None:
            state.history.stopped = "callback"
        if step_in_epoch:  # stopped inside an epoch: validate what we have, keep it
            _validate(state, val_fn, elapsed)
            save()
    except KeyboardInterrupt:
        state.history.stopped = "interrupted"
        save()
        where = f"; checkpoint saved to {checkpoint_path}" if checkpoint_path is not None else ""
        print(f"Interrupted after {state.global_step} of {total_steps} steps{where}. "
              f"Returning the history so far.")
    finally:
        bar.close()
        model.eval()
    for cb in callbacks:
        cb.on_train_end(state)
    return state.history


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a `DistributedDataParallel` (or `DataParallel`) wrapper, else the model."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    return model.module if isinstance(model, wrappers) else model


def _mixed_precision(precision: str, device: torch.device):
    """(autocast context factory, GradScaler or None) for `TrainConfig.precision`."""
    dtype = _PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext, None
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError(f"precision='fp16' needs a CUDA device (float16 training needs a GradScaler), got "
                         f"{device.type!r}; use precision='bf16' on CPU")
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def _mean_over_processes(loss: torch.Tensor, world_size: int) -> torch.Tensor:
    """The loss averaged over processes (what the history records under DDP; gradients are
    averaged by DDP itself)."""
    if world_size > 1:
        loss = loss.clone()
        torch.distributed.all_reduce(loss)
        loss /= world_size
    return loss


def _as_loss(out: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    if isinstance(out, dict):
        out = out["loss"] if "loss" in out else sum(out.values())
    if not isinstance(out, torch.Tensor) or out.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar tensor (or a dict of them), got {out!r:.80}")
    return out.reshape(())


def _record_step(state: TrainState, loss: torch.Tensor, lr: float, elapsed: float, steps_per_epoch: int) -> None:
    h = state.history
    h.step.append(state.global_step)
    h.epoch.append(state.global_step / steps_per_epoch)
    h.loss.append(loss.item())
    scale = getattr(state.model, "logit_scale", None)
    h.logit_scale.append(scale.detach().exp().item() if isinstance(scale, torch.Tensor) else float("nan"))
    h.lr.append(lr)
    h.time.append(elapsed)


def _validate(state: TrainState, val_fn: Callable | None, elapsed: float) -> None:
    if val_fn is None:
        return
    model = state.model
    model.eval()
    with torch.no_grad():
        metrics = val_fn(model)
    model.train()
    if not isinstance(metrics, dict):
        raise ValueError(f"val_fn must return a dict of metrics, got {type(metrics).__name__}")
    row = {"epoch": state.global_step / max(state.total_steps // state.config.epochs, 1),
           "step": state.global_step, "time": elapsed}
    row.update({k: float(v) for k, v in metrics.items()})
    state.history.val.append(row)
