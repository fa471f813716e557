"""mmcourse: how multimodal foundation models are trained, as a runnable course.

The public API, importable from the top level (`from mmcourse import clip_loss, CLIP, fit`).
Names are resolved lazily, so `import mmcourse` stays fast and a lesson pays only for what it
uses. Each name lives in one module:

- `utils`: seed_everything, get_device, set_threads, setup_notebook
- `losses`: info_nce, clip_loss, siglip_loss, alignment, uniformity, ClipLoss, SigLipLoss
- `temperature`: temperature_explorer, run_temperature_experiment
- `data`, `tokenizer`, `zero_shot_metadata`: offline datasets, the tokenizer, class names and templates
- `models`: CLIPConfig, CLIP and its encoders
- `train`: TrainConfig, fit, History (the course's one training loop)
- `gradcache`, `blockwise_loss`, `distributed`: large batches (lesson 10)
- `pretrained`: load_digits_clip, load_shapes_clip (train once, then cached)
- `evaluate`, `analysis`: zero-shot, retrieval, probes; modality gap, occlusion maps
- `checks`, `exercises`, `grade`, `notebooks`: the classroom tooling
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "utils": ["seed_everything", "get_device", "set_threads", "setup_notebook"],
    "losses": ["info_nce", "clip_loss", "siglip_loss", "alignment", "uniformity", "ClipLoss", "SigLipLoss"],
    "temperature": ["temperature_explorer", "run_temperature_experiment", "ToyConfig"],
    "plots": ["plot_similarity_matrix", "plot_softmax_bars", "show_image_grid", "plot_history",
              "plot_embeddings_2d", "plot_modality_gap", "plot_occlusion_maps"],
    "data": ["CaptionedDigits", "Shapes", "make_collate", "make_digits_splits", "digits_dataloaders",
             "shapes_dataloaders"],
    "tokenizer": ["CaptionTokenizer", "build_tokenizer", "load_tokenizer", "default_tokenizer"],
    "models": ["CLIPConfig", "CLIP", "CLIPOutput", "SmallCNN", "TinyViT", "TextTransformer", "BagOfWords"],
    "train": ["TrainConfig", "History", "fit", "LivePlot", "save_checkpoint", "load_checkpoint"],
    "gradcache": ["grad_cache_step"],
    "blockwise_loss": ["blocked_clip_loss", "fused_clip_loss"],
    "distributed": ["clip_loss_distributed", "siglip_loss_distributed", "DistributedContrastiveLoss"],
    "pretrained": ["load_digits_clip", "load_shapes_clip", "PretrainedCLIP"],
    "evaluate": ["build_zero_shot_classifier", "zero_shot_logits", "accuracy", "retrieval_metrics",
                 "encode_dataset", "linear_probe", "ImageClassifier"],
    "analysis": ["modality_gap", "occlusion_map", "image_text_similarity", "expected_calibration_error"],
}
_WHERE = {name: module for module, names in _API.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'mmcourse' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
