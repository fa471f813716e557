"""What a model is trained to do: the contrastive losses (InfoNCE, CLIP, SigLIP), MLM's loss,
blocked/fused and distributed versions of the CLIP loss, and image-text matching with hard negatives.
Imports only `mmcourse.utils`, `mmcourse.norms` and `mmcourse.data`.

Public names are importable from here (`from mmcourse.objectives import ...`), resolved lazily so importing
one of them pays only for its own module.
"""
from __future__ import annotations

from mmcourse._lazy import lazy_exports

_API = {
    "blockwise": ["blocked_clip_loss", "fused_clip_loss", "default_block_size"],
    "distributed": ["world_info", "gather_sizes", "gather_with_grad", "local_loss_labels", "clip_loss_distributed",
        "ring_shift", "siglip_loss_distributed", "DistributedContrastiveLoss"],
    "itm": ["ON_EMPTY", "same_caption_mask", "hard_negative_weights", "sample_hard_negatives",
        "build_itm_pairs", "itm_loss_fn"],
    "multi_positive": ["positives_from_labels", "positives_from_captions", "multi_positive_clip_loss",
        "multi_positive_loss_fn", "false_negative_stats"],
    "losses": ["info_nce", "clip_loss", "siglip_loss", "alignment", "uniformity", "ClipLoss", "SigLipLoss"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _API)
