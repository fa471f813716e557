"""mmcourse: how multimodal foundation models are trained, as a runnable course.

The public API, importable from the top level (`from mmcourse import clip_loss, CLIP, fit`).
Names are resolved lazily, so `import mmcourse` stays fast and a lesson pays only for what it
uses. Each name lives in one module:

- `utils`: seed_everything, get_device, set_threads, setup_notebook
- `losses`: info_nce, clip_loss, siglip_loss, alignment, uniformity, ClipLoss, SigLipLoss
- `norms`: l2_normalize, l2_norm, unit_vectors (norms in float32: finite in float16/bfloat16)
- `temperature`: temperature_explorer, run_temperature_experiment
- `data`, `tokenizer`, `zero_shot_metadata`: offline datasets, the tokenizer, class names and templates
- `models`: CLIPConfig, CLIP and its encoders
- `train`: TrainConfig, fit, History (the course's one training loop)
- `gradcache`, `blockwise_loss`, `distributed`: large batches (lesson 10)
- `pretrained`: load_digits_clip, load_shapes_clip (train once, then cached)
- `fusion`, `itm`, `pretrained_fusion`: fusion modules and classifiers, ITM with hard negatives,
  the cached models of lesson 08
- `evaluate`, `analysis`: zero-shot, retrieval, probes; modality gap, occlusion maps
- `captioning`, `decoding`, `caption_metrics`: a prefix captioner, greedy/beam/sampling, BLEU/CIDEr/CLIPScore
- `hf`, `pretrained_text`: the CLIP as a transformers `CLIPModel`; a locked pre-trained text tower
- `checks`, `exercises`, `grade`, `notebooks`: the classroom tooling
- `masking`, `mlm`, `mlm_pretrained`: masked language modelling (lesson 07)
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "utils": ["seed_everything", "get_device", "set_threads", "setup_notebook"],
    "losses": ["info_nce", "clip_loss", "siglip_loss", "alignment", "uniformity", "ClipLoss", "SigLipLoss"],
    "norms": ["l2_normalize", "l2_norm", "unit_vectors"],
    "temperature": ["temperature_explorer", "run_temperature_experiment", "ToyConfig"],
    "plots": ["plot_similarity_matrix", "plot_softmax_bars", "show_image_grid", "plot_history",
              "plot_embeddings_2d", "plot_modality_gap", "plot_occlusion_maps"],
    "data": ["CaptionedDigits", "Shapes", "make_collate", "make_digits_splits", "digits_dataloaders",
             "shapes_dataloaders", "ShapesVQA", "FacesSentiment"],
    "tokenizer": ["CaptionTokenizer", "build_tokenizer", "load_tokenizer", "default_tokenizer"],
    "models": ["CLIPConfig", "CLIP", "CLIPOutput", "SmallCNN", "TinyViT", "TextTransformer", "BagOfWords"],
    "train": ["TrainConfig", "History", "fit", "LivePlot", "save_checkpoint", "load_checkpoint"],
    "gradcache": ["grad_cache_step"],
    "blockwise_loss": ["blocked_clip_loss", "fused_clip_loss"],
    "distributed": ["clip_loss_distributed", "siglip_loss_distributed", "DistributedContrastiveLoss"],
    "pretrained": ["load_digits_clip", "load_shapes_clip", "PretrainedCLIP"],
    "evaluate": ["build_zero_shot_classifier", "zero_shot_logits", "accuracy", "retrieval_metrics",
                 "encode_dataset", "linear_probe", "ImageClassifier"],
    "fusion": ["FusionConfig", "FusionModel", "LateFusion", "ConcatFusion", "GatedFusion", "FiLMFusion",
               "CrossAttentionFusion", "classification_loss_fn"],
    "itm": ["hard_negative_weights", "sample_hard_negatives", "same_caption_mask", "itm_loss_fn", "itm_scores"],
    "pretrained_fusion": ["load_vqa_model", "load_sentiment_model", "load_itm_model", "fusion_tokenizer"],
    "analysis": ["modality_gap", "occlusion_map", "image_text_similarity", "expected_calibration_error"],
    "captioning": ["CaptionerConfig", "PrefixCaptioner", "caption_loss", "caption_labels", "load_captioner"],
    "decoding": ["greedy_search", "beam_search", "sample", "Generation"],
    "caption_metrics": ["corpus_bleu", "cider", "clip_score", "ref_clip_score", "coco_tokenize"],
    "hf": ["HFCLIPAdapter", "hf_clip_config", "build_hf_clip", "save_hf_clip", "load_hf_clip", "load_digits_hf_clip"],
    "pretrained_text": ["PretrainedTextEncoder", "LockedTextCLIP", "mean_pool", "load_minilm", "load_digits_locked_clip",
                        "load_shapes_locked_clip"],
}
# lesson 07: masked language modelling
_API["losses"] = _API["losses"] + ["mlm_loss", "masked_token_accuracy"]
_API["masking"] = ["mask_tokens", "mask_selected", "MaskingCollator"]
_API["mlm"] = ["MLMConfig", "MaskedLanguageModel", "mlm_loss_fn"]
_API["mlm_pretrained"] = ["load_text_mlm", "load_image_mlm", "load_few_pair_clip"]
# lesson 14: a tiny visual assistant
_API["assistant"] = ["AssistantConfig", "VisualAssistant", "DecoderLM", "Projector", "assistant_labels",
                     "assistant_loss", "merge_image_features", "answer_questions"]
_API["pretrained_assistant"] = ["load_assistant"]
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
