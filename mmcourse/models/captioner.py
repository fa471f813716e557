"""A ClipCap-style prefix captioner: a CLIP image embedding becomes k "prefix" tokens that a small
causal Transformer decoder reads before it writes the caption (Mokady et al. 2021, ClipCap).

    image --CLIP image tower--> (B, D) --mapping network--> prefix (B, k, E)
    decoder input:  [p_1 ... p_k] [SOT] a red circle . [EOT] [PAD] ...
    labels:          -100 ... -100 -100  a  red circle .  [EOT] -100 ...   (shifted by one inside the loss)

Reads top to bottom:

1. `CaptionerConfig`, the architecture as data;
2. `MappingNetwork` (ClipCap's MLP) and `PrefixCaptioner`: the course's `Block`s with the causal
   `text_attention_mask`, a language-model head, `next_token_logits` for decoding and `generate`;
3. `caption_labels` and `caption_loss`: teacher-forced cross-entropy on caption tokens only.
   Prefix positions, the given `[SOT]` and padding carry label -100. Padding is found from the
   attention mask, never from the token id: ClipCap's `ignore_index=0` also ignores every real
   token whose id happens to be 0;
4. `load_captioner`: train once with `mmcourse.training.loop.fit(loss_fn=caption_loss)`, then cache.

Shape letters: B batch, D CLIP embedding size, k prefix length, E decoder width, L caption
tokens, V vocabulary.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcourse.models.decoding import Generation, beam_search, greedy_search, sample
from mmcourse.models.clip import CLIP, Block, text_attention_mask

IGNORE_INDEX = -100  # PyTorch's and Hugging Face's default ignore_index

# ----------------------------------------------------------------------------------------------
# 1. The architecture as data


@dataclass
class CaptionerConfig:
    """Everything that defines a prefix captioner (the image tower is the CLIP it is built on).

    Attributes:
        vocab_size, context_length: the tokenizer's (V and L, [SOT] and [EOT] included).
        pad_token_id, sot_token_id, eot_token_id: the tokenizer's special ids.
        embed_dim: D, the CLIP joint embedding size the mapping network reads.
        prefix_length: k, how many prefix tokens one image becomes.
        width, layers, heads, mlp_ratio, dropout: the decoder's Transformer.
        freeze_image_tower: keep the CLIP image tower fixed (ClipCap's default) or fine-tune it.
    """

    vocab_size: int = 76
    context_length: int = 20
    pad_token_id: int = 0
    sot_token_id: int = 2
    eot_token_id: int = 3
    embed_dim: int = 64
    prefix_length: int = 4
    width: int = 64
    layers: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    freeze_image_tower: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "embed_dim", "prefix_length", "width", "layers", "heads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"CaptionerConfig.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        for name in ("pad_token_id", "sot_token_id", "eot_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name}={getattr(self, name)} is outside the vocabulary [0, {self.vocab_size})")

    @classmethod
    def for_clip(cls, clip: CLIP, tokenizer, **changes) -> "CaptionerConfig":
        """A config matching a CLIP model's embedding size and a tokenizer's vocabulary and ids."""
        return cls(vocab_size=tokenizer.vocab_size, context_length=tokenizer.context_length,
                   pad_token_id=tokenizer.pad_token_id, sot_token_id=tokenizer.sot_token_id,
                   eot_token_id=tokenizer.eot_token_id, embed_dim=clip.config.embed_dim, **changes)


# ----------------------------------------------------------------------------------------------
# 2. The model


class MappingNetwork(nn.Module):
    """ClipCap's MLP mapping: (B, D) -> (B, k, E) through one tanh hidden layer of k*E/2 units."""

    def __init__(self, embed_dim: int, prefix_length: int, width: int):
        super().__init__()
        self.prefix_length, self.width = prefix_length, width
        hidden = prefix_length * width // 2
        self.net = nn.Sequential(nn.Linear(embed_dim, hidden), nn.Tanh(), nn.Linear(hidden, prefix_length * width))

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.net(image_embeds).view(-1, self.prefix_length, self.width)  # (B, k, E)


class PrefixCaptioner(nn.Module):
    """A CLIP image tower, a mapping network to k prefix tokens, and a causal Transformer decoder.

    The CLIP model is copied, so training never changes the model it was built from. With
    `freeze_image_tower=True` the copy's weights are fixed and it stays in eval mode (its
    BatchNorm statistics too) even while the captioner trains.

    Args:
        clip: a trained `CLIP` (only its image tower and image projection are used).
        config: a `CaptionerConfig` (e.g. `CaptionerConfig.for_clip(clip, tokenizer)`).
    """

    def __init__(self, clip: CLIP, config: CaptionerConfig):
        super().__init__()
        if clip.config.embed_dim != config.embed_dim:
            raise ValueError(f"config.embed_dim={config.embed_dim} differs from the CLIP's {clip.config.embed_dim}")
        self.config = c = config
        self.clip = copy.deepcopy(clip)
        self.clip.text.requires_grad_(False)  # never used: the decoder writes the text
        self.clip.text_projection.requires_grad_(False)
        self.clip.logit_scale.requires_grad_(False)
        if c.freeze_image_tower:
            self.clip.requires_grad_(False)
        self.mapping = MappingNetwork(c.embed_dim, c.prefix_length, c.width)
        self.token_embedding = nn.Embedding(c.vocab_size, c.width)
        self.positional_embedding = nn.Parameter(torch.zeros(c.prefix_length + c.context_length, c.width))
        self.blocks = nn.ModuleList([Block(c.width, c.heads, c.mlp_ratio, c.dropout) for _ in range(c.layers)])
        self.ln_final = nn.LayerNorm(c.width)
        self.lm_head = nn.Linear(c.width, c.vocab_size, bias=False)
        for module in [self.mapping, self.token_embedding, self.blocks, self.lm_head]:
            module.apply(_init_weights)
        nn.init.normal_(self.positional_embedding, std=0.01)

    def train(self, mode: bool = True) -> "PrefixCaptioner":
        super().train(mode)
        if self.config.freeze_image_tower:
            self.clip.eval()  # a frozen tower keeps its BatchNorm statistics
        return self

    def image_prefix(self, image: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> prefix tokens (B, k, E), from the unit-norm CLIP image embedding."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_image_tower):
            image_embeds = self.clip.encode_image(image, normalize=True)  # (B, D)
        return self.mapping(image_embeds)  # (B, k, E)

    def decode(self, prefix: torch.Tensor, input_ids: torch.Tensor,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for every position of [prefix, tokens]: (B, k, E) and (B, t) -> (B, k + t, V).

        The logits at position i predict the token at position i + 1. Attention is causal
        (position i never sees i + 1) and padding (attention_mask 0) is never attended to.
        """
        B, k, _ = prefix.shape
        t = input_ids.shape[1]
        if t > self.config.context_length:
            raise ValueError(f"input_ids has {t} tokens, more than context_length={self.config.context_length}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = torch.cat([prefix, self.token_embedding(input_ids)], dim=1)  # (B, k + t, E)
        x = x + self.positional_embedding[: k + t]
        full_mask = torch.cat([attention_mask.new_ones(B, k), attention_mask], dim=1)  # (B, k + t)
        mask = text_attention_mask(full_mask, causal=True)  # (B, 1, k + t, k + t)
        for block in self.blocks:
            x = block(x, mask)
        return self.lm_head(self.ln_final(x))  # (B, k + t, V)

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits: images (B, C, H, W), captions (B, L) -> (B, k + L, V)."""
        return self.decode(self.image_prefix(image), input_ids, attention_mask)

    def next_token_logits(self, prefix: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """The `step` function of `mmcourse.models.decoding`: (N, k, E), (N, t) -> (N, V) logits of token t+1."""
        return self.decode(prefix, input_ids)[:, -1]  # (N, V)

    def suppress_tokens(self) -> list[int]:
        """Ids a caption never contains: [PAD] and [SOT]."""
        return [self.config.pad_token_id, self.config.sot_token_id]

    @torch.no_grad()
    def generate(self, image: torch.Tensor, method: str = "greedy", max_new_tokens: int | None = None,
                 **kwargs: Any) -> Generation:
        """Caption images: `method` "greedy" (`greedy_search`), "beam" (`beam_search`, e.g.
        `beam_width=4, length_penalty=1.0`) or "sample" (`sample`, e.g. `temperature=0.7, top_k=5,
        generator=...`). Returns a `Generation`; `tokenizer.batch_decode(out.sequences)` gives text.

        Raises:
            ValueError: an unknown method (or bad arguments of the decoding function).
        """
        functions = {"greedy": greedy_search, "beam": beam_search, "sample": sample}
        if method not in functions:
            raise ValueError(f"method must be one of {sorted(functions)}, got {method!r}")
        was_training = self.training
        self.eval()
        c = self.config
        try:
            prefix = self.image_prefix(image)  # (B, k, E)
            return functions[method](self.next_token_logits, prefix, sot_token_id=c.sot_token_id,
                                     eot_token_id=c.eot_token_id, pad_token_id=c.pad_token_id,
                                     max_new_tokens=max_new_tokens or c.context_length - 1,
                                     suppress_tokens=self.suppress_tokens(), **kwargs)
        finally:
            self.train(was_training)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------------------------
# 3. The loss


def caption_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix_length: int) -> torch.Tensor:
    """Labels aligned with the decoder's input [prefix, tokens]: (B, L) -> (B, k + L).

    The token id where a caption token is predicted; -100 on the k prefix positions, on the
    given [SOT] (position 0 of every caption) and on padding (attention_mask 0). Padding is
    read from the mask, so a real token with id 0 keeps its label.

    Raises:
        ValueError: shapes differ, or prefix_length < 0.
    """
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
                         "must be the same (B, L) shape")
    if prefix_length < 0:
        raise ValueError(f"prefix_length must be >= 0, got {prefix_length}")
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)  # (B, L)
    labels[:, 0] = IGNORE_INDEX  # [SOT] is given, never predicted
    prefix = labels.new_full((labels.shape[0], prefix_length), IGNORE_INDEX)
    return torch.cat([prefix, labels], dim=1)  # (B, k + L)


def caption_loss(model: PrefixCaptioner, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Teacher-forced cross-entropy (nats per caption token), a `loss_fn` for `mmcourse.training.loop.fit`.

    The logits at position i are scored against the label at i + 1 (the shift), and positions
    labelled -100 (prefix, [SOT], padding) are skipped, as Hugging Face's causal language models do.

    Args:
        model: a `PrefixCaptioner`.
        batch: "image" (B, C, H, W), "input_ids" (B, L), "attention_mask" (B, L).

    Raises:
        ValueError: the batch lacks a key.
    """
    missing = {"image", "input_ids", "attention_mask"} - set(batch)
    if missing:
        raise ValueError(f"the batch lacks {sorted(missing)}: captioning needs images and tokenized captions")
    logits = model(batch["image"], batch["input_ids"], batch["attention_mask"])  # (B, k + L, V)
    labels = caption_labels(batch["input_ids"], batch["attention_mask"], model.config.prefix_length)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX)
