"""mmcourse: how multimodal foundation models are trained, as a runnable course.

The public API, importable from the top level (`from mmcourse import clip_loss, CLIP, fit`).
Names are resolved lazily, so `import mmcourse` stays fast and a lesson pays only for what it
uses. The package is laid out by layer; a layer imports only the layers above it in this list
(`docs/architecture.md`; `tests/test_architecture.py` keeps it so):

- `utils`, `norms`: seeding, device, threads; L2 norms in float32
- `data`: offline data sets, the tokenizer, class names and templates, BERT's masking
- `objectives`: InfoNCE, CLIP, SigLIP and MLM losses, blocked/fused and distributed losses, ITM negatives
- `models`: encoders and CLIP, MLM, fusion, the captioner and decoding, the HF CLIP adapter, MiniLM
- `training`: the one loop (`fit`), its types, checkpoints, callbacks, gradient caching, DDP
- `evaluation`: zero-shot, retrieval, probes, analysis, caption metrics
- `viz`: plots and the temperature explorer
- `recipes`: the course's own trained models (train once with `fit`, then cached)
- `classroom`: checks, the exercise generator, the grader, the lesson runner (never imported by the rest)

The flat module paths of 0.1 (`mmcourse.train`, `mmcourse.pretrained`, ...) still import, with a
`DeprecationWarning` naming the new place (`mmcourse._compat`).
"""
from __future__ import annotations

__version__ = "0.2.0"

from . import _compat
from ._lazy import lazy_exports

_compat.install()

_API = {
    "utils": ["seed_everything", "get_device", "set_threads", "setup_notebook"],
    "objectives.losses": ["info_nce", "clip_loss", "siglip_loss", "alignment", "uniformity", "ClipLoss",
        "SigLipLoss", "mlm_loss", "masked_token_accuracy"],
    "norms": ["l2_normalize", "l2_norm", "unit_vectors"],
    "viz.temperature": ["temperature_explorer"],
    "recipes.temperature": ["run_temperature_experiment"],
    "models.toy": ["ToyConfig"],
    "viz.plots": ["plot_similarity_matrix", "plot_softmax_bars", "show_image_grid", "plot_history",
        "plot_embeddings_2d", "plot_modality_gap", "plot_occlusion_maps"],
    "data": ["CaptionedDigits", "Shapes", "make_collate", "make_digits_splits", "digits_dataloaders",
        "shapes_dataloaders", "ShapesVQA", "FacesSentiment"],
    "data.tokenizer": ["CaptionTokenizer", "build_tokenizer", "load_tokenizer", "default_tokenizer"],
    "models.clip": ["CLIPConfig", "CLIP", "CLIPOutput", "SmallCNN", "TinyViT", "TextTransformer",
        "BagOfWords"],
    "training.types": ["TrainConfig", "History"],
    "training.loop": ["fit"],
    "training.callbacks": ["LivePlot"],
    "training.checkpoint": ["save_checkpoint", "load_checkpoint"],
    "training.gradcache": ["grad_cache_step"],
    "objectives.blockwise": ["blocked_clip_loss", "fused_clip_loss"],
    "objectives.distributed": ["clip_loss_distributed", "siglip_loss_distributed",
        "DistributedContrastiveLoss"],
    "recipes.clip": ["load_digits_clip", "load_shapes_clip", "PretrainedCLIP"],
    "evaluation.zero_shot": ["build_zero_shot_classifier", "zero_shot_logits", "accuracy"],
    "evaluation.retrieval": ["retrieval_metrics"],
    "evaluation.probes": ["encode_dataset", "linear_probe", "ImageClassifier"],
    "models.fusion": ["FusionConfig", "FusionModel", "LateFusion", "ConcatFusion", "GatedFusion",
        "FiLMFusion", "CrossAttentionFusion", "classification_loss_fn", "itm_scores"],
    "objectives.itm": ["hard_negative_weights", "sample_hard_negatives", "same_caption_mask", "itm_loss_fn"],
    "recipes.fusion": ["load_vqa_model", "load_sentiment_model", "load_itm_model", "fusion_tokenizer"],
    "evaluation.analysis": ["modality_gap", "occlusion_map", "image_text_similarity",
        "expected_calibration_error"],
    "models.captioner": ["CaptionerConfig", "PrefixCaptioner", "caption_loss", "caption_labels"],
    "recipes.captioner": ["load_captioner"],
    "models.decoding": ["greedy_search", "beam_search", "sample", "Generation"],
    "evaluation.caption_metrics": ["corpus_bleu", "cider", "meteor", "clip_score", "ref_clip_score", "coco_tokenize",
        "tokenize_captions"],
    "models.hf_clip": ["HFCLIPAdapter", "hf_clip_config", "build_hf_clip", "save_hf_clip", "load_hf_clip"],
    "recipes.hf_clip": ["load_digits_hf_clip"],
    "models.minilm": ["PretrainedTextEncoder", "LockedTextCLIP", "mean_pool", "load_minilm"],
    "recipes.locked_text": ["load_digits_locked_clip", "load_shapes_locked_clip"],
    "data.masking": ["mask_tokens", "mask_selected", "MaskingCollator"],
    "models.mlm": ["MLMConfig", "MaskedLanguageModel", "mlm_loss_fn"],
    "recipes.mlm": ["load_text_mlm", "load_image_mlm", "load_few_pair_clip"],
    "data.noisy_pairs": ["Pairs", "clean_pairs", "corrupt", "mix_noise", "rule_filter"],  # lesson 12
    "evaluation.data_filtering": ["clip_scores", "top_fraction", "choose_threshold", "near_duplicates"],
    "objectives.multi_positive": ["multi_positive_clip_loss"],
    "recipes.data_cleaning": ["train_on_pairs"],
    "models.assistant": ["AssistantConfig", "VisualAssistant", "DecoderLM", "Projector", "assistant_labels",
        "assistant_loss", "merge_image_features", "answer_questions"],
    "recipes.assistant": ["load_assistant"],
}
# lesson 13: audio and video
_API["data"] = _API["data"] + ["SpokenDigits", "DigitClips"]
_API["models.audio"] = ["LogMelSpectrogram", "AudioEncoder", "AudioEncoderConfig", "mel_filterbank", "bind_loss",
                        "encode_audio"]
_API["models.video"] = ["mean_pool_frames", "TemporalTransformer", "ClipClassifier"]
_API["recipes.audio"] = ["load_audio_encoder"]
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _API)
