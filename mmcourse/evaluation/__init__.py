"""Evaluating trained models the way the field does: zero-shot classification, retrieval (open_clip's
metric names), probes, what a model learned (`analysis`) and caption metrics.

Public names are importable from here (`from mmcourse.evaluation import ...`), resolved lazily so importing
one of them pays only for its own module.
"""
from __future__ import annotations

import importlib

_API = {
    "analysis": ["image_text_similarity", "modality_gap", "occlusion_map", "expected_calibration_error"],
    "caption_metrics": ["CLIP_SCORE_WEIGHT", "coco_tokenize", "corpus_bleu", "cider", "clip_score",
        "ref_clip_score"],
    "probes": ["encode_dataset", "ImageClassifier", "classification_loss", "classifier_accuracy",
        "LinearProbe", "linear_probe"],
    "retrieval": ["retrieval_ranks", "retrieval_metrics"],
    "zero_shot": ["RECALL_KS", "encode_texts", "build_zero_shot_classifier", "class_embedding",
        "zero_shot_logits", "accuracy"],
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
