"""Masked language models: BERT's objective on captions, alone and conditioned on the image.

Reads bottom-up:

1. `MLMHead`: BERT's prediction head (dense, GELU, LayerNorm, then a decoder whose weight IS
   the token embedding matrix: tied weights, as BERT and Hugging Face's `BertForMaskedLM` do);
2. `MLMConfig` and `MaskedLanguageModel`: a bidirectional `TextTransformer` (every token sees
   every real token) followed by `fusion_layers` more `Block`s. With `image_conditioned=True`
   those blocks also cross-attend to the image tower's tokens (`SmallCNN.forward_tokens`, one
   token per cell of the last feature map, plus a learned position embedding): ALBEF's
   multimodal encoder, kept tiny. Without it the same blocks have no cross-attention, so the
   two models differ only in whether they can look at the image;
3. `mlm_loss_fn`: the `loss_fn` that `mmcourse.training.loop.fit` trains these models with;
4. evaluation: `WORD_CLASSES` / `word_class_ids`, `predict_masked`, `cross_attention_weights`.

The train-once cached loaders live in `mmcourse.recipes.mlm`.

Shape letters: B batch, L tokens, V vocabulary, E width, N image tokens, h heads.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcourse.data import zero_shot_metadata as meta
from mmcourse.objectives.losses import mlm_loss
from mmcourse.models.clip import Block, SmallCNN, TextTransformer

# ----------------------------------------------------------------------------------------------
# 1. The prediction head


class MLMHead(nn.Module):
    """h -> LayerNorm(GELU(W h)) -> logits over the vocabulary, with the decoder weight tied to
    the token embedding (BERT's `BertLMPredictionHead`; names as there: `dense`, `decoder`).

    Args:
        width: E, the hidden size.
        token_embedding: the model's `nn.Embedding(V, E)`; its weight is the decoder's.
    """

    def __init__(self, width: int, token_embedding: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.ln = nn.LayerNorm(width)
        vocab_size = token_embedding.num_embeddings
        self.decoder = nn.Linear(width, vocab_size)
        self.decoder.weight = token_embedding.weight  # the same Parameter: (V, E), one set of numbers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.ln(F.gelu(self.dense(x))))  # (B, L, E) -> (B, L, V)


# ----------------------------------------------------------------------------------------------
# 2. The model


@dataclass
class MLMConfig:
    """A masked language model as data. The defaults suit the course's captions and Shapes.

    The text tower has the shape of the Shapes CLIP's (`shapes_clip_config`: width 64, 2 layers,
    4 heads) but is bidirectional, so its weights can initialise a CLIP text tower with
    `text_causal=False`.
    """

    vocab_size: int = 76  # the tokenizer's (`default_tokenizer().vocab_size`)
    context_length: int = 20
    width: int = 64
    text_layers: int = 2
    fusion_layers: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    pad_token_id: int = 0
    image_conditioned: bool = False
    # image tower (used when image_conditioned): a SmallCNN whose last feature map is the tokens
    image_size: int = 32
    in_channels: int = 3
    cnn_channels: tuple[int, ...] = (16, 32, 64)
    cnn_stem_stride: int = 2

    def __post_init__(self) -> None:
        self.cnn_channels = tuple(self.cnn_channels)
        for name in ("vocab_size", "context_length", "width", "heads", "image_size", "in_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"MLMConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.text_layers < 0 or self.fusion_layers < 0:
            raise ValueError("MLMConfig.text_layers and fusion_layers must be >= 0")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.image_conditioned and self.fusion_layers < 1:
            raise ValueError("an image-conditioned model needs fusion_layers >= 1 (they hold the cross-attention)")

    @property
    def image_grid(self) -> int:
        """Side of the image tower's last feature map: N = image_grid ** 2 image tokens."""
        side = self.image_size
        for i in range(len(self.cnn_channels)):
            side = (side - 1) // (self.cnn_stem_stride if i == 0 else 2) + 1
        return side

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MLMOutput:
    """What `MaskedLanguageModel.forward` returns (names as Hugging Face's `MaskedLMOutput`)."""

    logits: torch.Tensor  # (B, L, V)
    hidden_states: torch.Tensor  # (B, L, E), the head's input

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


class MaskedLanguageModel(nn.Module):
    """A bidirectional text Transformer with BERT's MLM head, optionally reading an image.

    `forward(input_ids, attention_mask=None, image=None) -> MLMOutput(logits (B, L, V), ...)`.
    An image-conditioned model needs `image` (B, C, H, W); a text-only one refuses it.
    """

    def __init__(self, config: MLMConfig | None = None):
        super().__init__()
        self.config = c = config or MLMConfig()
        self.text = TextTransformer(c.vocab_size, c.context_length, c.width, c.text_layers, c.heads, c.mlp_ratio,
                                    causal=False, pool="mean", dropout=c.dropout)
        if c.image_conditioned:
            # SmallCNN's `fc` (for a pooled vector) is unused here: the tokens are its feature map.
            self.visual = SmallCNN(c.in_channels, c.image_size, c.cnn_channels, c.width, c.cnn_stem_stride)
            self.visual.fc = nn.Identity()
            self.image_positional_embedding = nn.Parameter(torch.zeros(c.image_grid ** 2, c.cnn_channels[-1]))
        else:
            self.visual = None
        self.fusion = nn.ModuleList([
            Block(c.width, c.heads, c.mlp_ratio, c.dropout, cross_attention=c.image_conditioned,
                  context_width=c.cnn_channels[-1] if c.image_conditioned else None)
            for _ in range(c.fusion_layers)])
        self.ln_final = nn.LayerNorm(c.width)
        self.head = MLMHead(c.width, self.text.token_embedding)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # BERT's init (normal, std 0.02; zero biases); convolutions keep PyTorch's default.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, TextTransformer):
            nn.init.normal_(module.positional_embedding, std=0.01)
        elif isinstance(module, MaskedLanguageModel) and module.visual is not None:
            nn.init.normal_(module.image_positional_embedding, std=0.02)

    # -- inputs ------------------------------------------------------------------------------------
    def _inputs(self, input_ids, attention_mask, image):
        c = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError("input_ids must be a (B, L) integer tensor of token ids")
        if input_ids.shape[1] > c.context_length:
            raise ValueError(f"input_ids has {input_ids.shape[1]} tokens, more than context_length={c.context_length}")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= c.vocab_size):
            raise ValueError(f"token ids must lie in [0, vocab_size={c.vocab_size}): tokenizer and model disagree")
        if attention_mask is None:
            attention_mask = (input_ids != c.pad_token_id).long()
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids "
                             f"{tuple(input_ids.shape)}")
        if (attention_mask.sum(1) == 0).any():
            raise ValueError("a caption in the batch has no tokens (its attention_mask is all zeros)")
        if c.image_conditioned:
            if image is None:
                raise ValueError("this model is image-conditioned: pass image=(B, C, H, W)")
            want = (input_ids.shape[0], c.in_channels, c.image_size, c.image_size)
            if not isinstance(image, torch.Tensor) or tuple(image.shape) != want or not image.is_floating_point():
                got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
                raise ValueError(f"image must be a float tensor of shape {want}, got {got}")
        elif image is not None:
            raise ValueError("this model is text-only (image_conditioned=False): it cannot read an image")
        return attention_mask.long()

    def image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, C_last) image tokens with their position embedding."""
        return self.visual.forward_tokens(image) + self.image_positional_embedding  # (B, N, C_last)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                image: torch.Tensor | None = None) -> MLMOutput:
        """Token scores at every position.

        Args:
            input_ids: (B, L) ids (with [MASK] at the positions to fill), padded on the right.
            attention_mask: (B, L), 1 for tokens, 0 for padding (None: from `pad_token_id`).
            image: (B, C, H, W) floats in [0, 1], for an image-conditioned model only.

        Returns:
            `MLMOutput(logits=(B, L, V), hidden_states=(B, L, E))`.
        """
        attention_mask = self._inputs(input_ids, attention_mask, image)
        x = self.text.forward_tokens(input_ids, attention_mask)  # (B, L, E), bidirectional
        mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L): padding is never a key
        context = self.image_tokens(image) if self.visual is not None else None  # (B, N, C_last)
        for block in self.fusion:
            x = block(x, mask, context=context)  # self-attention [+ cross-attention to the image], MLP
        x = self.ln_final(x)  # (B, L, E)
        return MLMOutput(logits=self.head(x), hidden_states=x)

    def num_parameters(self) -> int:
        """Distinct parameters (the tied decoder weight counted once)."""
        return sum(p.numel() for p in self.parameters())


# ----------------------------------------------------------------------------------------------
# 3. The loss function for `fit`


def mlm_loss_fn(model: MaskedLanguageModel, batch: dict[str, Any]) -> torch.Tensor:
    """`loss_fn` for `mmcourse.training.loop.fit`: `mlm_loss` of the model's logits on a masked batch.

    Args:
        model: a `MaskedLanguageModel`.
        batch: from `MaskingCollator`: "input_ids" (masked), "attention_mask", "labels", and
            "image" for an image-conditioned model.
    """
    missing = {"input_ids", "labels"} - set(batch)
    if missing:
        raise ValueError(f"the batch lacks {sorted(missing)}: build it with mmcourse.data.masking.MaskingCollator")
    image = batch.get("image") if model.config.image_conditioned else None
    out = model(batch["input_ids"], batch.get("attention_mask"), image=image)
    return mlm_loss(out.logits, batch["labels"])


# ----------------------------------------------------------------------------------------------
# 4. Evaluation helpers

# Which words of the captions belong to which class (multi-word positions count per word).
WORD_CLASSES: dict[str, tuple[str, ...]] = {
    "colour": meta.COLOUR_NAMES,
    "shape": meta.SHAPE_NAMES,
    "position": tuple(dict.fromkeys(w for p in meta.POSITION_NAMES for w in p.split())),
    "size": meta.SIZE_NAMES,
    "digit": meta.DIGIT_CLASSNAMES + meta.DIGIT_NUMERALS,
}


def word_class_ids(tokenizer: Any) -> dict[str, torch.Tensor]:
    """Token ids of each word class in `WORD_CLASSES`, plus "template": every other non-special word.

    Returns:
        {"colour": LongTensor of ids, ..., "template": ...}.
    """
    vocab = tokenizer.get_vocab()
    out = {name: torch.tensor(sorted(vocab[w] for w in words if w in vocab)) for name, words in WORD_CLASSES.items()}
    taken = torch.cat(list(out.values()))
    special = {tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.sot_token_id, tokenizer.eot_token_id,
               tokenizer.mask_token_id}
    out["template"] = torch.tensor(sorted(i for i in vocab.values() if i not in special and i not in taken.tolist()))
    return out


@torch.no_grad()
def predict_masked(model: MaskedLanguageModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   image: torch.Tensor | None = None, batch_size: int = 512) -> torch.Tensor:
    """Logits (B, L, V) of a model on a (large) batch, in chunks, on the model's device, returned
    on the CPU. `image` is used only by an image-conditioned model."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(input_ids), batch_size):
        sl = slice(start, start + batch_size)
        img = image[sl].to(device) if (image is not None and model.config.image_conditioned) else None
        chunks.append(model(input_ids[sl].to(device), attention_mask[sl].to(device), image=img).logits.cpu())
    model.train(was_training)
    return torch.cat(chunks)


@torch.no_grad()
def cross_attention_weights(model: MaskedLanguageModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            image: torch.Tensor) -> torch.Tensor:
    """Where each text token looks in the image: the softmax weights of every cross-attention.

    The model's attention runs in `F.scaled_dot_product_attention`, which does not return its
    weights; this recomputes them from the inputs each `CrossAttention` receives (captured with
    forward hooks): softmax(q k^T / sqrt(E/h)) per head.

    Returns:
        (B, fusion_layers, h, L, N) weights; each row over the N image tokens sums to 1. Reshape
        N to (image_grid, image_grid) for a map (row-major, as the feature map).
    """
    if not model.config.image_conditioned:
        raise ValueError("a text-only model has no cross-attention")
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [block.cross_attn.register_forward_hook(lambda m, args, out: seen.append((args[0], args[1])))
             for block in model.fusion]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        model(input_ids.to(device), attention_mask.to(device), image=image.to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    maps = []
    for block, (x, context) in zip(model.fusion, seen):
        attn = block.cross_attn
        B, L, E = x.shape
        d = E // attn.heads
        q = attn.q(x).view(B, L, attn.heads, d).transpose(1, 2)  # (B, h, L, d)
        k, _ = attn.kv(context).split(E, dim=2)  # (B, N, E)
        k = k.view(B, -1, attn.heads, d).transpose(1, 2)  # (B, h, N, d)
        maps.append((q @ k.transpose(-2, -1) / math.sqrt(d)).softmax(dim=-1).cpu())  # (B, h, L, N)
    return torch.stack(maps, dim=1)  # (B, layers, h, L, N)
