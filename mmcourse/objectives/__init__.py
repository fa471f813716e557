"""What a model is trained to do: the contrastive losses (InfoNCE, CLIP, SigLIP), MLM's loss,
blocked/fused and distributed versions of the CLIP loss, and image-text matching with hard negatives.
Imports only `mmcourse.utils`, `mmcourse.norms` and `mmcourse.data`.

Public names are importable from here (`from mmcourse.objectives import ...`), resolved lazily so importing
one of them pays only for its own module.
"""
from __future__ import annotations

import importlib

_API = {
    "blockwise": ["blocked_clip_loss", "fused_clip_loss", "default_block_size"],
    "distributed": ["world_info", "gather_with_grad", "local_loss_labels", "clip_loss_distributed",
        "ring_shift", "siglip_loss_distributed", "DistributedContrastiveLoss"],
    "itm": ["ON_EMPTY", "same_caption_mask", "hard_negative_weights", "sample_hard_negatives",
        "build_itm_pairs", "itm_loss_fn"],
    "losses": ["info_nce", "clip_loss", "siglip_loss", "alignment", "uniformity", "ClipLoss", "SigLipLoss"],
}
_WHERE = {name: module for module, names in _API.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
