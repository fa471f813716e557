"""Evaluating trained models the way the field does: zero-shot classification, retrieval (open_clip's
metric names), probes, what a model learned (`analysis`) and caption metrics.

Public names are importable from here (`from mmcourse.evaluation import ...`), resolved lazily so importing
one of them pays only for its own module.
"""
from __future__ import annotations

from mmcourse._lazy import lazy_exports

_API = {
    "analysis": ["image_text_similarity", "modality_gap", "occlusion_map", "expected_calibration_error"],
    "caption_metrics": ["CLIP_SCORE_WEIGHT", "coco_tokenize", "corpus_bleu", "cider", "clip_score",
        "ref_clip_score", "meteor", "tokenize_captions", "java_available", "CaptionScore"],
    "data_filtering": ["clip_scores", "top_fraction", "choose_threshold", "Duplicates", "near_duplicates",
        "downstream_scores"],
    "ptb_tokenizer": ["ptb_tokenize"],
    "probes": ["encode_dataset", "ImageClassifier", "classification_loss", "classifier_accuracy",
        "LinearProbe", "linear_probe"],
    "retrieval": ["retrieval_ranks", "retrieval_metrics"],
    "zero_shot": ["RECALL_KS", "encode_texts", "build_zero_shot_classifier", "class_embedding",
        "zero_shot_logits", "accuracy"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _API)
