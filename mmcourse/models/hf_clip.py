"""The course's CLIP as a Hugging Face `transformers.CLIPModel`, and one adapter so the course's
`fit`, zero-shot and retrieval functions use it unchanged.

What is called what (course `mmcourse.models.clip.CLIP` -> `transformers.CLIPModel`):

| course                                   | transformers                                          |
|------------------------------------------|-------------------------------------------------------|
| `visual` (`TinyViT`, CLS pooling)        | `vision_model` (CLS token, then `post_layernorm`)     |
| `text` (`TextTransformer`, pool="eot")   | `text_model` (pools at the first `eos_token_id`)      |
| `image_projection`                       | `visual_projection` (linear, no bias)                 |
| `text_projection`                        | `text_projection` (linear, no bias)                   |
| `logit_scale` (log of 1/τ, init ln 1/0.07)| `logit_scale` (same; `logit_scale_init_value=2.6592`) |
| `encode_image(image)`                    | `get_image_features(pixel_values=...)`                |
| `encode_text(input_ids, attention_mask)` | `get_text_features(input_ids=..., attention_mask=...)`|
| `clip_loss(img, txt, logit_scale.exp())` | `CLIPModel(..., return_loss=True).loss`               |

One difference in training: `mmcourse.training.loop.fit` clamps `logit_scale` to [0, ln 100] after
every step, as open_clip does; `transformers` itself never clamps it (its `Trainer` does not
either), so a long run outside `fit` can drive the temperature towards 0.

Reads top to bottom: the config (`hf_clip_config`), reading features across transformers
versions (`as_features`), the adapter (`HFCLIPAdapter`), saving and loading a folder
(`save_hf_clip`, `load_hf_clip`), and the cached digits model (`load_digits_hf_clip`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcourse.models.clip import CLIPOutput
from mmcourse.utils import quiet_hf_loading

# ------------------------------------------------------------------------------ the config


@dataclass
class HFCLIPSettings:
    """The sizes of a tiny `transformers.CLIPModel`, chosen like the course models: 2-layer
    towers of width 64, 4 heads, a 64-dim joint space, 16x16 grey images in 4x4 patches.
    Token ids come from the tokenizer (`hf_clip_config` fills them in)."""

    image_size: int = 16
    patch_size: int = 4
    num_channels: int = 1
    width: int = 64
    layers: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    embed_dim: int = 64


def hf_clip_config(tokenizer=None, settings: HFCLIPSettings | None = None):
    """A `transformers.CLIPConfig` for a tiny CLIP that reads the course's tokenizer.

    Args:
        tokenizer: a `CaptionTokenizer` (default `default_tokenizer()`): gives `vocab_size`,
            the context length (`max_position_embeddings`) and the ids of [PAD], [SOT], [EOT].
        settings: the sizes (default `HFCLIPSettings()`).

    Returns:
        `transformers.CLIPConfig`; `CLIPModel(config)` has random weights and `logit_scale`
        = ln(1/0.07) = 2.6592.
    """
    from transformers import CLIPConfig

    from mmcourse.data.tokenizer import EOT, PAD, SOT, default_tokenizer

    tokenizer = tokenizer or default_tokenizer()
    s = settings or HFCLIPSettings()
    vocab = tokenizer.get_vocab()
    tower = dict(hidden_size=s.width, intermediate_size=s.mlp_ratio * s.width, num_hidden_layers=s.layers,
                 num_attention_heads=s.heads)
    text = dict(tower, vocab_size=tokenizer.vocab_size, max_position_embeddings=tokenizer.context_length,
                pad_token_id=vocab[PAD], bos_token_id=vocab[SOT], eos_token_id=vocab[EOT])
    vision = dict(tower, image_size=s.image_size, patch_size=s.patch_size, num_channels=s.num_channels)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=s.embed_dim)


# -------------------------------------------------------------- features across versions


def as_features(output: Any) -> torch.Tensor:
    """The (B, D) projected features from `get_image_features` / `get_text_features`.

    transformers 4.x returns the tensor itself; transformers 5 returns a model output whose
    `pooler_output` holds the projected features (and whose `last_hidden_state` holds the
    tower's tokens). Both are accepted; a tuple (`return_dict=False`) gives its second item.

    Raises:
        ValueError: anything else (e.g. a whole `CLIPOutput`).
    """
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    if isinstance(output, tuple) and len(output) > 1 and isinstance(output[1], torch.Tensor):
        return output[1]
    raise ValueError(f"expected the features of get_image_features/get_text_features (a tensor, or an output "
                     f"with pooler_output), got {type(output).__name__}")


# ----------------------------------------------------------------------------- the adapter


class HFCLIPAdapter(nn.Module):
    """A `transformers.CLIPModel` behind the course's CLIP interface.

    `encode_image`, `encode_text`, `forward(image=, input_ids=, attention_mask=)` returning a
    `mmcourse.models.clip.CLIPOutput`, and a `logit_scale` attribute (the model's own parameter, so
    `fit` records and clamps it) — enough for `fit`, `build_zero_shot_classifier`,
    `encode_dataset`, `retrieval_metrics` and `zero_shot_val_fn`. The wrapped model is
    `adapter.model`; its parameters are the adapter's.
    """

    logit_bias = None  # a CLIP model (softmax loss), not SigLIP

    def __init__(self, model: nn.Module):
        super().__init__()
        if not all(hasattr(model, n) for n in ("get_image_features", "get_text_features", "logit_scale")):
            raise ValueError(f"expected a transformers CLIPModel, got {type(model).__name__}")
        self.model = model

    @property
    def logit_scale(self) -> nn.Parameter:
        """log(1/τ), the `CLIPModel`'s parameter (not exponentiated)."""
        return self.model.logit_scale

    @property
    def config(self):
        """The wrapped model's `transformers.CLIPConfig`."""
        return self.model.config

    def num_parameters(self) -> int:
        """Number of parameters (all of them train)."""
        return sum(p.numel() for p in self.parameters())

    def _check_image(self, image: torch.Tensor) -> None:
        v = self.model.config.vision_config
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or not image.is_floating_point():
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image must be a float (B, C, H, W) tensor, got {shape}")
        want = (v.num_channels, v.image_size, v.image_size)
        if tuple(image.shape[1:]) != want:
            raise ValueError(f"image is {tuple(image.shape[1:])} (C, H, W), this CLIPModel expects {want}")

    def _text_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        t = self.model.config.text_config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be an integer (B, L) tensor of token ids, got {shape}")
        if input_ids.shape[1] > t.max_position_embeddings:
            raise ValueError(f"input_ids has {input_ids.shape[1]} tokens, more than max_position_embeddings="
                             f"{t.max_position_embeddings}; truncate when tokenizing")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= t.vocab_size):
            raise ValueError(f"token ids must lie in [0, vocab_size={t.vocab_size}): tokenizer and model disagree")
        if not (input_ids == t.eos_token_id).any(dim=1).all():
            raise ValueError(f"every caption needs its end-of-text token (id {t.eos_token_id}): the text tower "
                             f"pools there; tokenize with the model's tokenizer")
        mask = (input_ids != t.pad_token_id).long() if attention_mask is None else attention_mask.long()
        if mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(mask.shape)} differs from input_ids {tuple(input_ids.shape)}")
        return mask

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, C, H, W) float images -> (B, D) `get_image_features`, L2-normalised if asked."""
        self._check_image(image)
        x = as_features(self.model.get_image_features(pixel_values=image))  # (B, D)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    normalize: bool = False) -> torch.Tensor:
        """(B, L) right-padded token ids (and mask, default: ids != pad) -> (B, D)
        `get_text_features`, L2-normalised if asked. Columns that are padding in every row are
        dropped first, as `CLIP.encode_text` does: with causal attention and pooling at the
        end-of-text token they cannot change the result."""
        mask = self._text_mask(input_ids, attention_mask)
        keep = int(mask.sum(1).max())
        x = as_features(self.model.get_text_features(input_ids=input_ids[:, :keep], attention_mask=mask[:, :keep]))
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, image: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> CLIPOutput:
        """As `CLIP.forward`: unit-norm `image_embeds` (B_img, D) and `text_embeds` (B_txt, D),
        `logits_per_image` (B_img, B_txt), `logits_per_text` and the exponentiated `logit_scale`."""
        if image is None and input_ids is None:
            raise ValueError("forward needs image, input_ids, or both")
        out = CLIPOutput(logit_scale=self.logit_scale.exp())
        if image is not None:
            out.image_embeds = self.encode_image(image, normalize=True)
        if input_ids is not None:
            out.text_embeds = self.encode_text(input_ids, attention_mask, normalize=True)
        if image is not None and input_ids is not None:
            out.logits_per_image = out.logit_scale * out.image_embeds @ out.text_embeds.T  # (B_img, B_txt)
            out.logits_per_text = out.logits_per_image.T
        return out


def hf_loss_fn(adapter: HFCLIPAdapter, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A `loss_fn` for `fit` that uses Hugging Face's own loss (`return_loss=True`) instead of
    `mmcourse.objectives.losses.clip_loss`; the two are equal (tests/test_hf.py)."""
    return adapter.model(input_ids=batch["input_ids"], pixel_values=batch["image"],
                         attention_mask=batch.get("attention_mask"), return_loss=True).loss


def build_hf_clip(tokenizer=None, settings: HFCLIPSettings | None = None) -> HFCLIPAdapter:
    """A randomly initialised tiny `CLIPModel` (see `hf_clip_config`) behind an `HFCLIPAdapter`."""
    from transformers import CLIPModel

    return HFCLIPAdapter(CLIPModel(hf_clip_config(tokenizer, settings)))


# ------------------------------------------------------------------------ saving and loading


def save_hf_clip(model: HFCLIPAdapter | nn.Module, tokenizer, path: str | os.PathLike) -> Path:
    """Save the `CLIPModel` (config.json + model.safetensors, `save_pretrained`) and the
    tokenizer (tokenizer.json + tokenizer_config.json) into one folder. Returns the folder."""
    path = Path(path)
    hf = model.model if isinstance(model, HFCLIPAdapter) else model
    hf.save_pretrained(str(path))
    tokenizer.save(path)
    return path


def load_hf_clip(path: str | os.PathLike, device: str | torch.device | None = None):
    """Load what `save_hf_clip` saved, offline (`local_files_only=True`: nothing is downloaded).

    Returns:
        `(HFCLIPAdapter in eval mode, CaptionTokenizer)`.

    Raises:
        ValueError: `path` is not a folder holding config.json and model.safetensors.
    """
    from transformers import CLIPModel

    from mmcourse.data.tokenizer import load_tokenizer

    path = Path(path)
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (path / f).exists()]
    if missing:
        raise ValueError(f"{path} is not a saved CLIP folder: it lacks {missing} (save with save_hf_clip)")
    with quiet_hf_loading():
        hf = CLIPModel.from_pretrained(str(path), local_files_only=True)
    adapter = HFCLIPAdapter(hf).eval()
    if device is not None:
        adapter.to(device)
    return adapter, load_tokenizer(path)
