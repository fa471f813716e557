"""The course's OWN trained models — not pre-trained weights from elsewhere: each is a `Recipe`
(data + model builder + training config), shipped with the course in `weights/` and otherwise
trained by `fit` and cached by `train_or_load` (`cache`), one module per lesson topic.

Public names are importable from here (`from mmcourse.recipes import ...`), resolved lazily so importing
one of them pays only for its own module.
"""
from __future__ import annotations

from mmcourse._lazy import lazy_exports

_API = {
    "audio": ["TARGETS", "audio_train_config", "paired_targets", "audio_recipe", "load_audio_encoder"],
    "cache": ["CACHE_VERSION", "cache_dir", "config_hash", "Recipe", "TrainedModel", "train_or_load",
        "clip_recipe"],
    "captioner": ["PretrainedCaptioner", "captioner_train_config", "load_captioner"],
    "clip": ["DEFAULT_SHAPES_HOLDOUT", "PretrainedCLIP", "digits_clip_config", "digits_train_config",
        "shapes_clip_config", "shapes_train_config", "zero_shot_val_fn", "load_digits_clip",
        "load_shapes_clip"],
    "data_cleaning": ["TrainedOnPairs", "cleaning_clip_config", "cleaning_train_config", "pairs_loader",
        "pairs_recipe", "train_on_pairs", "load_judge"],
    "fusion": ["VQA_HOLDOUT", "fusion_tokenizer", "vqa_towers", "vqa_train_config", "load_vqa_model",
        "faces_towers", "sentiment_train_config", "load_sentiment_model", "itm_train_config",
        "load_itm_model"],
    "hf_clip": ["hf_train_config", "load_digits_hf_clip"],
    "locked_text": ["load_digits_locked_clip", "load_shapes_locked_clip"],
    "mlm": ["MLM_PROBABILITY", "mlm_config", "mlm_train_config", "text_mlm_train_config", "masked_accuracy_val_fn",
        "load_text_mlm", "load_image_mlm", "TEXT_INITS", "few_pair_clip_config", "few_pair_train_config",
        "load_few_pair_clip"],
    "temperature": ["make_toy_data", "toy_loss", "evaluate_toy", "TensorBatches", "ToyRun",
        "run_temperature_experiment", "plot_temperature_experiment", "plot_toy_embeddings"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _API)
