"""The lessons' CLIP architectures as data (like open_clip's model configs): one function per model,
returning a `CLIPConfig` sized for a laptop CPU. Recipes (`mmcourse.recipes`) pair them with data and
a training config; the DDP entry point and the benchmarks build from them too."""
from __future__ import annotations

from mmcourse.data.tokenizer import default_tokenizer
from mmcourse.models.clip import CLIPConfig

__all__ = ["digits_clip_config", "shapes_clip_config"]


def digits_clip_config(tokenizer=None) -> CLIPConfig:
    """The lessons' digits model: 8x8 grey images, a small CNN, a 2-layer text Transformer
    (about 240k parameters). Tuned with `benchmarks/bench_train.py`."""
    tokenizer = tokenizer or default_tokenizer()
    return CLIPConfig(image_encoder="cnn", image_size=8, in_channels=1, image_width=64, cnn_channels=(32, 64, 128),
                      text_encoder="transformer", vocab_size=tokenizer.vocab_size,
                      context_length=tokenizer.context_length, text_width=64, text_layers=2, text_heads=4,
                      pad_token_id=tokenizer.pad_token_id, embed_dim=64)


def shapes_clip_config(tokenizer=None) -> CLIPConfig:
    """The Shapes model: 32x32 RGB, a CNN that halves the image in its first conv (position
    matters, so it flattens rather than average-pools), a 2-layer text Transformer."""
    tokenizer = tokenizer or default_tokenizer()
    return CLIPConfig(image_encoder="cnn", image_size=32, in_channels=3, image_width=64,
                      cnn_channels=(16, 32, 64, 64), cnn_stem_stride=2, text_encoder="transformer",
                      vocab_size=tokenizer.vocab_size, context_length=tokenizer.context_length, text_width=64,
                      text_layers=2, text_heads=4, pad_token_id=tokenizer.pad_token_id, embed_dim=64)
