"""Training: the one loop (`fit` in `loop`), the types it shares with checkpoints and callbacks
(`types`), exact-resume checkpoints, callbacks, gradient caching, the DDP entry point and peak
memory. Imports models and objectives, never recipes or evaluation.

Public names are importable from here (`from mmcourse.training import ...`), resolved lazily so importing
one of them pays only for its own module.
"""
from __future__ import annotations

from mmcourse._lazy import lazy_exports

_API = {
    "callbacks": ["LivePlot"],
    "checkpoint": ["save_atomic", "save_checkpoint", "load_checkpoint", "loader_fingerprint",
        "check_resumable", "restore", "RESUMABLE_CHANGES"],
    "ddp": ["digits_vit_config", "main"],
    "gradcache": ["grad_cache_step", "split_batch", "contrastive_loss"],
    "loop": ["fit", "clip_loss_fn", "param_groups", "make_optimizer", "lr_factor", "make_scheduler",
        "clamp_logit_scale"],
    "memory": ["peak_memory", "memory_measurable"],
    "types": ["TrainConfig", "History", "TrainState", "Callback"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _API)
