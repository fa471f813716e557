"""Lesson 02's toy CLIP: a toy image-text problem's sizes (`ToyConfig`) and two MLP towers with a
`logit_scale` stored as a log (`ToyCLIP`), small enough to train in about a second per run."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mmcourse.norms import l2_normalize


@dataclass
class ToyConfig:
    """A toy image-text problem that trains in about a second per run on one CPU core.

    Each pair shares a latent h = μ_c + noise·ε (class c, `num_classes` centres in
    `latent_dim` dimensions); the "image" is A h and the "text" is B h (fixed random linear
    maps to `input_dim`, plus a little independent noise). Two small MLPs embed each view on the
    unit sphere in `embed_dim` = 3 dimensions, so the embeddings can be plotted.
    """

    num_classes: int = 10
    latent_dim: int = 4
    input_dim: int = 16
    embed_dim: int = 3
    hidden_dim: int = 64
    class_spread: float = 2.0
    noise: float = 0.5
    view_noise: float = 0.05
    num_train: int = 2048
    num_val: int = 512
    batch_size: int = 128
    epochs: int = 6
    lr: float = 1e-2
    seed: int = 0


class ToyCLIP(torch.nn.Module):
    """Two MLP towers and a `logit_scale` stored as a log, as in CLIP.

    Args:
        config: sizes.
        temperature: a fixed τ (logit_scale = ln(1/τ), not trained), or None for a learned
            one initialised at ln(1/0.07) as CLIP does.
    """

    def __init__(self, config: ToyConfig, temperature: float | None = None):
        super().__init__()

        def tower():
            return torch.nn.Sequential(torch.nn.Linear(config.input_dim, config.hidden_dim), torch.nn.GELU(),
                                       torch.nn.Linear(config.hidden_dim, config.embed_dim))

        self.image_encoder, self.text_encoder = tower(), tower()
        init = math.log(1 / 0.07) if temperature is None else math.log(1 / _positive(temperature))
        self.logit_scale = torch.nn.Parameter(torch.tensor(init), requires_grad=temperature is None)

    def encode_image(self, image: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.image_encoder(image)  # (B, embed_dim)
        return l2_normalize(z) if normalize else z

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.text_encoder(text)  # (B, embed_dim)
        return l2_normalize(z) if normalize else z

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image_embeds": self.encode_image(image), "text_embeds": self.encode_text(text),
                "logit_scale": self.logit_scale.exp()}


def _positive(temperature: float) -> float:
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be > 0 and finite, got {temperature}")
    return t
