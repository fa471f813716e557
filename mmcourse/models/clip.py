"""Encoders and the CLIP model, small enough to train on a laptop CPU in seconds.

Reads bottom-up like nanoGPT's `model.py`:

1. transformer parts shared by both towers: `Attention`, `MLP`, `Block`
2. image encoders: `SmallCNN`, `TinyViT`
3. text encoders: `TextTransformer` (pools at the end-of-text token, as CLIP does),
   `BagOfWords` (a baseline that ignores word order)
4. `CLIPConfig`: the architecture as data
5. `CLIP`: two towers, a projection head per tower (or one shared head, the variant lesson 04
   shows to be worse), a learnable `logit_scale`, and optionally a `logit_bias` (SigLIP).

Shape letters: B batch, C channels, H/W image height/width, L tokens, N patches, E tower width,
D joint embedding size, h heads.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcourse.norms import l2_normalize

# ----------------------------------------------------------------------------------------------
# 1. Transformer parts (pre-LayerNorm, as in CLIP and GPT-2)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None,
            dropout_p: float) -> torch.Tensor:
    """Scaled dot-product attention over `heads` heads: q (B, Lq, E), k and v (B, Lk, E) -> (B, Lq, E).
    `mask` is bool, True = may attend, broadcastable to (B, h, Lq, Lk)."""
    B, Lq, E = q.shape
    q, k, v = (t.view(B, t.shape[1], heads, E // heads).transpose(1, 2) for t in (q, k, v))  # (B, h, L, E/h)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)  # (B, h, Lq, E/h)
    return y.transpose(1, 2).reshape(B, Lq, E)  # (B, Lq, E)


class Attention(nn.Module):
    """Multi-head self-attention. `mask` says which keys each query may look at."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.qkv(x).split(x.shape[-1], dim=2)  # 3 x (B, L, E)
        # mask: (B, 1, L, L) bool, True = may attend; broadcast over heads
        y = _attend(q, k, v, self.heads, mask, self.dropout if self.training else 0.0)  # (B, L, E)
        return self.proj(y)


class CrossAttention(nn.Module):
    """Multi-head cross-attention: queries from `x` (e.g. text tokens), keys and values from
    `context` (e.g. image patches), as in ALBEF's multimodal encoder and a Transformer decoder.
    `context_mask` says which context tokens may be looked at (padding never)."""

    def __init__(self, width: int, heads: int, context_width: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(context_width or width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        k, v = self.kv(context).split(x.shape[-1], dim=2)  # 2 x (B, Lk, E)
        mask = None
        if context_mask is not None:  # (B, Lk), 1 = real token -> (B, 1, 1, Lk)
            mask = context_mask.bool()[:, None, None, :]
        y = _attend(self.q(x), k, v, self.heads, mask, self.dropout if self.training else 0.0)  # (B, Lq, E)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, width: int, ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(width, int(width * ratio))
        self.proj = nn.Linear(int(width * ratio), width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """x + attn(ln(x)), [x + cross_attn(ln(x), context)], then x + mlp(ln(x)).

    Parameter names (`ln_1`, `ln_2`) follow open_clip. With `cross_attention=True` the block
    also reads a `context` sequence (BERT/ALBEF's cross-attention layer, a Transformer decoder's
    encoder-decoder attention); `context_width` is the context's width when it differs.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 cross_attention: bool = False, context_width: int | None = None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, dropout)
        if cross_attention:
            self.ln_cross = nn.LayerNorm(width)
            self.cross_attn = CrossAttention(width, heads, context_width, dropout)
        else:
            self.cross_attn = None
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)  # (B, L, E)
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this Block has cross-attention: pass context=(B, Lk, E_ctx) tokens")
            x = x + self.cross_attn(self.ln_cross(x), context, context_mask)  # (B, L, E)
        elif context is not None:
            raise ValueError("context given to a Block built without cross_attention=True")
        return x + self.mlp(self.ln_2(x))  # (B, L, E)


def text_attention_mask(attention_mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """Self-attention mask for right-padded text: (B, L) 0/1 -> (B, 1, L, L) bool, True = may attend.

    Padding is never a key; with `causal=True` position t also never sees t+1, t+2, ...
    """
    B, L = attention_mask.shape
    keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
    if causal:
        keys = keys & torch.ones(L, L, dtype=torch.bool, device=attention_mask.device).tril()  # (B, 1, L, L)
    return keys.expand(B, 1, L, L)


# ----------------------------------------------------------------------------------------------
# 2. Image encoders: (B, C, H, W) -> (B, E)


def _channels_last(image: torch.Tensor) -> torch.Tensor:
    """The same (B, C, H, W) image stored pixel by pixel (NHWC): oneDNN's convolutions run faster on it
    on a CPU (the Shapes CLIP's image tower, forward and backward on a batch of 256: 49 -> 35 ms of CPU;
    a whole training step 9% less, `benchmarks/bench_step.py`), and values, shapes and indexing do not
    change."""
    return image.contiguous(memory_format=torch.channels_last) if image.dim() == 4 else image


class SmallCNN(nn.Module):
    """Conv-BN-ReLU stages (the first keeps the resolution unless `stem_stride` > 1, later ones
    halve it), then a linear layer on the flattened feature map. Flattening, rather than global average pooling, keeps
    *where* things are, which the Shapes captions ("... on the left") need."""

    def __init__(self, in_channels: int, image_size: int, channels: tuple[int, ...], width: int,
                 stem_stride: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, side = in_channels, image_size
        for i, c_out in enumerate(channels):
            stride = stem_stride if i == 0 else 2
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in, side = c_out, (side - 1) // stride + 1  # 3x3 conv, padding 1: ceil(H / stride)
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Linear(channels[-1] * side * side, width)

    def forward_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """The last feature map as a sequence of spatial tokens: (B, H'*W', C_last), row-major
        (what a cross-attention layer reads as "image tokens")."""
        return self.convs(_channels_last(image)).flatten(2).transpose(1, 2)  # (B, H'*W', C_last)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.convs(_channels_last(image))  # (B, C_last, H', W')
        return F.relu(self.fc(x.flatten(1)))  # (B, E)


class TinyViT(nn.Module):
    """A Vision Transformer: cut the image into patches, embed each linearly, add a learned
    position embedding, run transformer blocks, pool the CLS token (or the mean of patches)."""

    def __init__(self, in_channels: int, image_size: int, patch_size: int, width: int, layers: int,
                 heads: int, mlp_ratio: float = 4.0, pool: str = "cls", dropout: float = 0.0):
        super().__init__()
        self.pool = pool
        n_patches = (image_size // patch_size) ** 2
        # A conv with kernel = stride = patch size is a linear map of each patch, as in open_clip.
        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width)) if pool == "cls" else None
        self.positional_embedding = nn.Parameter(torch.zeros(n_patches + (pool == "cls"), width))
        self.ln_pre = nn.LayerNorm(width)
        self.blocks = nn.ModuleList([Block(width, heads, mlp_ratio, dropout) for _ in range(layers)])
        self.ln_post = nn.LayerNorm(width)

    def forward_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """Every token's final hidden state: (B, C, H, W) -> (B, [1 +] N, E) (CLS first if any)."""
        x = self.patch_embed(image).flatten(2).transpose(1, 2)  # (B, N, E)
        if self.class_embedding is not None:
            cls = self.class_embedding.expand(x.shape[0], 1, -1)  # (B, 1, E)
            x = torch.cat([cls, x], dim=1)  # (B, 1 + N, E)
        x = self.ln_pre(x + self.positional_embedding)
        for block in self.blocks:
            x = block(x)  # every patch sees every patch: no mask
        return self.ln_post(x)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.forward_tokens(image)
        return x[:, 0] if self.pool == "cls" else x.mean(dim=1)  # (B, E)


# ----------------------------------------------------------------------------------------------
# 3. Text encoders: input_ids (B, L), attention_mask (B, L) -> (B, E)


def eot_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each right-padded sequence: the end-of-text token.

    Args:
        attention_mask: (B, L), 1 for tokens and 0 for padding, padding on the right.

    Returns:
        (B,) long tensor of positions.
    """
    return attention_mask.long().sum(dim=1) - 1  # (B,)


class TextTransformer(nn.Module):
    """Token + learned position embeddings, transformer blocks, a final LayerNorm, and pooling.

    `pool="eot"` takes the hidden state at the end-of-text token, as CLIP does: with causal
    attention it is the only position that has seen the whole caption. `pool="mean"` averages the
    real (non-padding) tokens. `causal=False` lets every token attend to every real token.
    Padding never influences real tokens: it is masked as a key, and (causal or not) it sits after
    every real token.
    """

    def __init__(self, vocab_size: int, context_length: int, width: int, layers: int, heads: int,
                 mlp_ratio: float = 4.0, causal: bool = True, pool: str = "eot", dropout: float = 0.0):
        super().__init__()
        self.causal, self.pool = causal, pool
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context_length, width))
        self.blocks = nn.ModuleList([Block(width, heads, mlp_ratio, dropout) for _ in range(layers)])
        self.ln_final = nn.LayerNorm(width)

    def forward_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Every token's final hidden state (B, L, E), before pooling (what an MLM head reads)."""
        L = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.positional_embedding[:L]  # (B, L, E)
        mask = text_attention_mask(attention_mask, self.causal)  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_final(x)  # (B, L, E)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        B = input_ids.shape[0]
        x = self.forward_tokens(input_ids, attention_mask)  # (B, L, E)
        if self.pool == "eot":
            return x[torch.arange(B, device=x.device), eot_positions(attention_mask)]  # (B, E)
        m = attention_mask.to(x.dtype).unsqueeze(-1)  # (B, L, 1)
        return (x * m).sum(1) / m.sum(1)  # (B, E)


class BagOfWords(nn.Module):
    """Baseline: the mean of the real tokens' embeddings. Blind to word order, so "a red circle
    left of a blue square" and "a blue circle left of a red square" look the same to it."""

    def __init__(self, vocab_size: int, width: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.ln_final = nn.LayerNorm(width)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = attention_mask.to(self.token_embedding.weight.dtype).unsqueeze(-1)  # (B, L, 1)
        x = (self.token_embedding(input_ids) * m).sum(1) / m.sum(1)  # (B, E)
        return self.ln_final(x)


# ----------------------------------------------------------------------------------------------
# 4. The architecture as data

IMAGE_ENCODERS = ("cnn", "vit")
TEXT_ENCODERS = ("transformer", "bow")


@dataclass
class CLIPConfig:
    """Everything that defines a CLIP architecture. The defaults suit captioned 8x8 digits.

    `shared_projection=True` is the variant of the course's source material: ONE projection
    head maps both towers into the joint space (so both widths must be equal). CLIP uses one
    head per tower, because the two towers' features live in unrelated spaces; lesson 04
    compares the two.
    """

    # image tower
    image_encoder: str = "cnn"  # "cnn" | "vit"
    image_size: int = 8
    in_channels: int = 1
    image_width: int = 64
    cnn_channels: tuple[int, ...] = (32, 64, 128)
    cnn_stem_stride: int = 1  # 2 halves a large image (e.g. 32x32 Shapes) in the first conv
    vit_patch_size: int = 2
    vit_layers: int = 2
    vit_heads: int = 4
    vit_pool: str = "cls"  # "cls" | "mean"
    # text tower
    text_encoder: str = "transformer"  # "transformer" | "bow"
    vocab_size: int = 128  # >= the tokenizer's (76 for `default_tokenizer()`)
    context_length: int = 20  # as `mmcourse.data.tokenizer.DEFAULT_CONTEXT_LENGTH`
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_causal: bool = True
    text_pool: str = "eot"  # "eot" | "mean"
    pad_token_id: int | None = 0  # builds the attention mask when none is given (None: no padding)
    # joint space
    embed_dim: int = 64
    shared_projection: bool = False
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    init_logit_scale: float = math.log(1 / 0.07)  # CLIP's temperature 0.07
    init_logit_bias: float | None = None  # set (e.g. -10.0) for a SigLIP model

    def __post_init__(self) -> None:
        self.cnn_channels = tuple(self.cnn_channels)  # JSON round trips give lists
        _choice("image_encoder", self.image_encoder, IMAGE_ENCODERS)
        _choice("text_encoder", self.text_encoder, TEXT_ENCODERS)
        _choice("vit_pool", self.vit_pool, ("cls", "mean"))
        _choice("text_pool", self.text_pool, ("eot", "mean"))
        for name in ("image_size", "in_channels", "image_width", "vocab_size", "context_length",
                     "text_width", "embed_dim", "vit_patch_size", "cnn_stem_stride", "vit_heads", "text_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"CLIPConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.image_encoder == "vit":
            if self.image_size % self.vit_patch_size:
                raise ValueError(f"image_size {self.image_size} is not a multiple of vit_patch_size {self.vit_patch_size}")
            if self.image_width % self.vit_heads:
                raise ValueError(f"image_width {self.image_width} is not divisible by vit_heads {self.vit_heads}")
        if self.text_encoder == "transformer" and self.text_width % self.text_heads:
            raise ValueError(f"text_width {self.text_width} is not divisible by text_heads {self.text_heads}")
        if self.shared_projection and self.image_width != self.text_width:
            raise ValueError(
                f"shared_projection needs equal tower widths, got image_width={self.image_width} and "
                f"text_width={self.text_width}: one matrix cannot map both to the joint space")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"CLIPConfig.{name} must be one of {allowed}, got {value!r}")


# ----------------------------------------------------------------------------------------------
# 5. CLIP


@dataclass
class CLIPOutput:
    """What `CLIP.forward` returns; names as in Hugging Face's `CLIPOutput` and open_clip.
    Also readable like a dict: `out["logits_per_image"]`."""

    image_embeds: torch.Tensor | None = None  # (B, D), unit norm
    text_embeds: torch.Tensor | None = None  # (B, D), unit norm
    logits_per_image: torch.Tensor | None = None  # (B_img, B_txt) = logit_scale * image_embeds @ text_embeds.T (+ bias)
    logits_per_text: torch.Tensor | None = None  # (B_txt, B_img) = logits_per_image.T
    logit_scale: torch.Tensor | None = None  # () exponentiated: 1 / temperature
    logit_bias: torch.Tensor | None = None  # () or None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def keys(self) -> list[str]:
        return [k for k in self.__dataclass_fields__ if getattr(self, k) is not None]


class CLIP(nn.Module):
    """Two towers, a projection per tower into a D-dim joint space, and a learned temperature.

    `logit_scale` is stored as log(1 / temperature), as in CLIP and open_clip; the training loop
    clamps it to [0, ln 100] so the temperature never drops below 0.01.
    """

    def __init__(self, config: CLIPConfig | None = None):
        super().__init__()
        self.config = config = config or CLIPConfig()
        if config.image_encoder == "cnn":
            self.visual: nn.Module = SmallCNN(config.in_channels, config.image_size, config.cnn_channels,
                                              config.image_width, config.cnn_stem_stride)
        else:
            self.visual = TinyViT(config.in_channels, config.image_size, config.vit_patch_size, config.image_width,
                                  config.vit_layers, config.vit_heads, config.mlp_ratio, config.vit_pool,
                                  config.dropout)
        if config.text_encoder == "transformer":
            self.text: nn.Module = TextTransformer(config.vocab_size, config.context_length, config.text_width,
                                                   config.text_layers, config.text_heads, config.mlp_ratio,
                                                   config.text_causal, config.text_pool, config.dropout)
        else:
            self.text = BagOfWords(config.vocab_size, config.text_width)
        # Projection heads: linear, no bias, as in CLIP.
        self.image_projection = nn.Linear(config.image_width, config.embed_dim, bias=False)
        if config.shared_projection:
            self.text_projection = self.image_projection  # the same module (and parameters) twice
        else:
            self.text_projection = nn.Linear(config.text_width, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.logit_bias = (nn.Parameter(torch.tensor(float(config.init_logit_bias)))
                           if config.init_logit_bias is not None else None)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # nanoGPT-style small normal init; projection heads std = width^-0.5 as in open_clip;
        # convolutions keep PyTorch's (Kaiming) default, which suits ReLU.
        if module in (self.image_projection, self.text_projection):
            nn.init.normal_(module.weight, std=module.in_features ** -0.5)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, (TextTransformer, TinyViT)):
            nn.init.normal_(module.positional_embedding, std=0.01)
            if getattr(module, "class_embedding", None) is not None:
                nn.init.normal_(module.class_embedding, std=module.class_embedding.shape[0] ** -0.5)

    # -- input checks: a clear error rather than a silent wrong number ---------------------------
    def _check_image(self, image: torch.Tensor) -> None:
        c = self.config
        if not isinstance(image, torch.Tensor) or image.dim() != 4:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image must be a (B, C, H, W) tensor, got {shape}")
        if not image.is_floating_point():
            raise ValueError(f"image must be a float tensor, got dtype {image.dtype}")
        if image.shape[1] != c.in_channels:
            raise ValueError(f"image has {image.shape[1]} channels, this model expects in_channels={c.in_channels}")
        if tuple(image.shape[2:]) != (c.image_size, c.image_size):
            raise ValueError(f"image is {tuple(image.shape[2:])} pixels, this model expects "
                             f"{(c.image_size, c.image_size)} (image_size={c.image_size})")

    def _text_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        c = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a (B, L) tensor of token ids, got {shape}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
        if input_ids.shape[1] > c.context_length:
            raise ValueError(f"input_ids has {input_ids.shape[1]} tokens, longer than context_length="
                             f"{c.context_length}; truncate when tokenizing")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= c.vocab_size):
            raise ValueError(f"token ids must lie in [0, vocab_size={c.vocab_size}), got ids from "
                             f"{int(input_ids.min())} to {int(input_ids.max())}: tokenizer and model disagree")
        if attention_mask is None:
            if c.pad_token_id is None:
                return torch.ones_like(input_ids)
            attention_mask = (input_ids != c.pad_token_id).long()
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids "
                             f"shape {tuple(input_ids.shape)}")
        m = attention_mask.long()
        if ((m != 0) & (m != 1)).any():
            raise ValueError("attention_mask must contain only 0 (padding) and 1 (token)")
        if (m.sum(1) == 0).any():
            raise ValueError("a caption in the batch has no tokens (its attention_mask is all zeros)")
        if (m[:, 1:] > m[:, :-1]).any():
            raise ValueError("attention_mask has padding before tokens; pad on the right")
        return m

    # -- the model ---------------------------------------------------------------------------------
    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Embed images into the joint space.

        Args:
            image: (B, C, H, W) float tensor.
            normalize: L2-normalise each embedding (the norm is computed in float32, so a
                float16/bfloat16 model gives unit vectors too; an all-zero embedding stays zero).

        Returns:
            (B, D) embeddings, in the model's dtype.
        """
        self._check_image(image)
        x = self.image_projection(self.visual(image))  # (B, E_img) -> (B, D)
        return l2_normalize(x) if normalize else x

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    normalize: bool = False) -> torch.Tensor:
        """Embed tokenised captions into the joint space.

        Args:
            input_ids: (B, L) token ids, L <= context_length, padded on the right.
            attention_mask: (B, L), 1 for tokens and 0 for padding. If None: built from
                `config.pad_token_id`, or all ones when that is None.
            normalize: L2-normalise each embedding (in float32, as `encode_image`).

        Returns:
            (B, D) embeddings, in the model's dtype.
        """
        mask = self._text_mask(input_ids, attention_mask)
        # Drop the columns that are padding in every row: they cannot change the result, and
        # captions padded to context_length are mostly padding (a large saving on a CPU).
        keep = int(mask.sum(1).max())
        input_ids, mask = input_ids[:, :keep], mask[:, :keep]  # (B, L') with L' <= L
        x = self.text_projection(self.text(input_ids, mask))  # (B, E_txt) -> (B, D)
        return l2_normalize(x) if normalize else x

    def forward(self, image: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> CLIPOutput:
        """Embed whatever is given; with both images and texts, also the two logit matrices.

        Returns:
            `CLIPOutput` with unit-norm `image_embeds` (B_img, D) and `text_embeds` (B_txt, D),
            `logits_per_image` (B_img, B_txt), `logits_per_text` (B_txt, B_img) and the
            exponentiated `logit_scale` (and `logit_bias` if the model has one).
        """
        if image is None and input_ids is None:
            raise ValueError("CLIP.forward needs image, input_ids, or both")
        out = CLIPOutput(logit_scale=self.logit_scale.exp(), logit_bias=self.logit_bias)
        if image is not None:
            out.image_embeds = self.encode_image(image, normalize=True)  # (B_img, D)
        if input_ids is not None:
            out.text_embeds = self.encode_text(input_ids, attention_mask, normalize=True)  # (B_txt, D)
        if image is not None and input_ids is not None:
            logits = out.logit_scale * out.image_embeds @ out.text_embeds.T  # (B_img, B_txt)
            if self.logit_bias is not None:
                logits = logits + self.logit_bias
            out.logits_per_image, out.logits_per_text = logits, logits.T
        return out

    def num_parameters(self) -> int:
        """Number of distinct parameters (a shared projection is counted once)."""
        return sum(p.numel() for p in self.parameters())
