"""The models: encoders and the CLIP (`clip`), the masked language model (`mlm`), fusion modules
(`fusion`), the prefix captioner (`captioner`) and decoding (`decoding`), the course's CLIP as a
`transformers.CLIPModel` (`hf_clip`), the genuinely pre-trained MiniLM text tower (`minilm`) and
lesson 02's toy CLIP (`toy`). A model knows no training loop, no cache and no metric.

Public names are importable from here (`from mmcourse.models import ...`), resolved lazily so importing
one of them pays only for its own module.
"""
from __future__ import annotations

from mmcourse._lazy import lazy_exports

_API = {
    "audio": ["LogMelSpectrogram", "AudioEncoderConfig", "AudioEncoder", "mel_filterbank", "encode_audio", "bind_loss"],
    "assistant": ["AssistantConfig", "DecoderLM", "Projector", "VisualAssistant", "expand_image_tokens",
        "merge_image_features", "assistant_labels", "assistant_loss", "answer_questions", "set_trainable"],
    "captioner": ["IGNORE_INDEX", "CaptionerConfig", "MappingNetwork", "PrefixCaptioner", "caption_labels",
        "caption_loss"],
    "clip": ["Attention", "CrossAttention", "MLP", "Block", "text_attention_mask", "SmallCNN", "TinyViT",
        "eot_positions", "TextTransformer", "BagOfWords", "IMAGE_ENCODERS", "TEXT_ENCODERS", "CLIPConfig",
        "CLIPOutput", "CLIP"],
    "configs": ["digits_clip_config", "shapes_clip_config"],
    "decoding": ["Generation", "next_log_probs", "greedy_search", "sample", "beam_search_step",
        "beam_search"],
    "fusion": ["FUSIONS", "ImageOnly", "TextOnly", "LateFusion", "ConcatFusion", "GatedFusion", "FiLMFusion",
        "CrossAttentionFusion", "FusionConfig", "FusionModel", "classification_loss_fn", "predict_logits",
        "itm_scores"],
    "hf_clip": ["HFCLIPSettings", "hf_clip_config", "as_features", "HFCLIPAdapter", "hf_loss_fn",
        "build_hf_clip", "save_hf_clip", "load_hf_clip"],
    "minilm": ["PACKAGE", "MODEL_NAME", "INSTALL_HINT", "minilm_available", "minilm_path", "minilm_version",
        "mean_pool", "MiniLMTokenizer", "PretrainedTextEncoder", "load_minilm", "shared_minilm",
        "sentence_transformers_embed", "LockedTextCLIP"],
    "mlm": ["MLMHead", "MLMConfig", "MLMOutput", "MaskedLanguageModel", "mlm_loss_fn", "word_class_ids",
        "predict_masked", "cross_attention_weights"],
    "toy": ["ToyConfig", "ToyCLIP"],
}
_API["video"] = ["POOLINGS", "mean_pool_frames", "TemporalTransformer", "ClipClassifier"]  # lesson 13
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _API)
