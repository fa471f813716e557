"""Fusing modalities: where image and text meet, and a classifier built around each choice.

CLIP keeps its towers apart until one dot product. The modules here join them earlier, all with
one interface (as MultiBench's `fusions/common_fusions.py`)::

    fusion(image_features, text_features, text_mask=None) -> (B, D)

`image_features` is (B, E_img) pooled or (B, N, E_img) tokens and `text_features` (B, E_txt) or
(B, L, E_txt), as each module's `image_input` / `text_input` says ("pooled" or "tokens"):

- `ImageOnly`, `TextOnly`: unimodal baselines (an MLP on one modality, the other ignored).
- `LateFusion`: additive late fusion, f(image) + g(text): each modality votes separately, so it
  cannot represent an interaction such as XOR.
- `ConcatFusion`: concatenation, then an MLP (early fusion of pooled features).
- `GatedFusion`: the gated multimodal unit (GMU, Arevalo et al. 2017):
  h = z * tanh(W_v x_v) + (1 - z) * tanh(W_t x_t), z = sigmoid(W_z [x_v; x_t]).
- `FiLMFusion`: the text predicts a per-channel scale and shift of the image tokens
  (FiLM, Perez et al. 2018), which are then read position by position.
- `CrossAttentionFusion`: text tokens attend to image tokens in Transformer blocks with
  cross-attention (ALBEF's multimodal encoder, Li et al. 2021), pooled at the first token.

`FusionModel` = the two towers of `models.py` (a `SmallCNN`/`TinyViT` and a `TextTransformer`,
built from a `CLIPConfig`) + one fusion module + a linear head; `FusionModel.from_clip` starts
from a trained CLIP's towers. Train it with `mmcourse.training.loop.fit(model, loader,
loss_fn=classification_loss_fn)`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcourse.models.clip import CLIP, Block, CLIPConfig, SmallCNN, TextTransformer, TinyViT, text_attention_mask

FUSIONS = ("image", "text", "late", "concat", "gated", "film", "cross_attention")


def _mlp(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(), nn.Linear(d_out, d_out), nn.ReLU())


class ImageOnly(nn.Module):
    """Baseline: an MLP on the pooled image features; the text is ignored. (B, E_img) -> (B, D)."""

    image_input, text_input = "pooled", None

    def __init__(self, image_dim: int, text_dim: int, dim: int):
        super().__init__()
        self.net = _mlp(image_dim, dim)

    def forward(self, image_features, text_features=None, text_mask=None):
        return self.net(image_features)  # (B, D)


class TextOnly(nn.Module):
    """Baseline: an MLP on the pooled text features; the image is ignored. (B, E_txt) -> (B, D).
    For VQA this is the question-only model."""

    image_input, text_input = None, "pooled"

    def __init__(self, image_dim: int, text_dim: int, dim: int):
        super().__init__()
        self.net = _mlp(text_dim, dim)

    def forward(self, image_features, text_features, text_mask=None):
        return self.net(text_features)  # (B, D)


class LateFusion(nn.Module):
    """Additive late fusion: f(x_image) + g(x_text), each an MLP. With the linear head after it,
    the class scores are a sum of one image-only and one text-only score: no interaction."""

    image_input, text_input = "pooled", "pooled"

    def __init__(self, image_dim: int, text_dim: int, dim: int):
        super().__init__()
        self.image_net, self.text_net = _mlp(image_dim, dim), _mlp(text_dim, dim)

    def forward(self, image_features, text_features, text_mask=None):
        return self.image_net(image_features) + self.text_net(text_features)  # (B, D)


class ConcatFusion(nn.Module):
    """Concatenate the pooled features, then an MLP: [x_image; x_text] -> (B, D)."""

    image_input, text_input = "pooled", "pooled"

    def __init__(self, image_dim: int, text_dim: int, dim: int):
        super().__init__()
        self.net = _mlp(image_dim + text_dim, dim)

    def forward(self, image_features, text_features, text_mask=None):
        return self.net(torch.cat([image_features, text_features], dim=-1))  # (B, D)


class GatedFusion(nn.Module):
    """The gated multimodal unit (Arevalo et al., 2017):

        h_v = tanh(W_v x_v), h_t = tanh(W_t x_t), z = sigmoid(W_z [x_v; x_t]),
        h = z * h_v + (1 - z) * h_t                                  # (B, D)

    The gate z decides, per feature and per example, how much each modality contributes. The
    paper's unit ends here; an MLP on h (as every fusion here has a nonlinearity before the head)
    lets the classifier combine the gated features.
    """

    image_input, text_input = "pooled", "pooled"

    def __init__(self, image_dim: int, text_dim: int, dim: int):
        super().__init__()
        self.image_proj = nn.Linear(image_dim, dim)  # W_v
        self.text_proj = nn.Linear(text_dim, dim)  # W_t
        self.gate = nn.Linear(image_dim + text_dim, dim)  # W_z
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())

    def gmu(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """The GMU output h (B, D), before the MLP."""
        h_v = torch.tanh(self.image_proj(image_features))  # (B, D)
        h_t = torch.tanh(self.text_proj(text_features))  # (B, D)
        z = torch.sigmoid(self.gate(torch.cat([image_features, text_features], dim=-1)))  # (B, D)
        return z * h_v + (1 - z) * h_t

    def forward(self, image_features, text_features, text_mask=None):
        return self.out(self.gmu(image_features, text_features))  # (B, D)


class FiLMFusion(nn.Module):
    """FiLM (Perez et al., 2018): the text predicts a scale gamma and a shift beta per image
    channel, applied to every image token, x' = ReLU((1 + gamma) * LN(x) + beta); the modulated
    tokens are then flattened (keeping where each one is) and mapped to (B, D).
    Image tokens (B, N, E_img), pooled text (B, E_txt) -> (B, D)."""

    image_input, text_input = "tokens", "pooled"

    def __init__(self, image_dim: int, text_dim: int, dim: int, n_image_tokens: int):
        super().__init__()
        self.norm = nn.LayerNorm(image_dim, elementwise_affine=False)
        self.film = nn.Linear(text_dim, 2 * image_dim)  # -> (gamma, beta)
        nn.init.normal_(self.film.weight, std=text_dim ** -0.5)  # modulations of order 1 from the start, so
        nn.init.zeros_(self.film.bias)  # both towers get gradient (zeros would leave the text tower none)
        self.out = nn.Sequential(nn.Linear(n_image_tokens * image_dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, image_features, text_features, text_mask=None):
        gamma, beta = self.film(text_features).unsqueeze(1).chunk(2, dim=-1)  # 2 x (B, 1, E_img)
        x = F.relu((1 + gamma) * self.norm(image_features) + beta)  # (B, N, E_img)
        return self.out(x.flatten(1))  # (B, D)


class CrossAttentionFusion(nn.Module):
    """A multimodal encoder as ALBEF's: text tokens (queries) run through `layers` Transformer
    blocks that self-attend (padding never attended) and cross-attend to the image tokens (plus a
    learned position embedding, since a CNN's tokens do not say where they are). The first text
    token ([SOT], like BERT's [CLS]) sees everything and is the output.
    Image tokens (B, N, E_img), text tokens (B, L, E_txt), text_mask (B, L) -> (B, D)."""

    image_input, text_input = "tokens", "tokens"

    def __init__(self, image_dim: int, text_dim: int, dim: int, n_image_tokens: int, layers: int = 1,
                 heads: int = 4, dropout: float = 0.0):
        super().__init__()
        self.text_in = nn.Linear(text_dim, dim)
        self.image_pos = nn.Parameter(torch.randn(n_image_tokens, image_dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads, dropout=dropout, cross_attention=True, context_width=image_dim)
                                     for _ in range(layers)])
        self.ln = nn.LayerNorm(dim)

    def forward(self, image_features, text_features, text_mask=None):
        x = self.text_in(text_features)  # (B, L, D)
        if text_mask is None:
            text_mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
        mask = text_attention_mask(text_mask, causal=False)  # (B, 1, L, L): padding is never a key
        context = image_features + self.image_pos  # (B, N, E_img)
        for block in self.blocks:
            x = block(x, mask, context=context)
        return self.ln(x[:, 0])  # (B, D)


@dataclass
class FusionConfig:
    """A fusion classifier: the towers (as a `CLIPConfig`; its projection settings are unused),
    the fusion strategy, its width D and the number of classes."""

    fusion: str = "cross_attention"  # one of FUSIONS
    num_classes: int = 2
    towers: CLIPConfig = field(default_factory=CLIPConfig)
    dim: int = 64
    layers: int = 1  # cross-attention blocks
    heads: int = 4
    # Frozen towers (as a linear probe, or LiT's locked tower): no gradient, always in eval mode; only the
    # fusion and the head learn, and the image tower's output can be computed once in advance.
    freeze_towers: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.towers, dict):  # from JSON
            self.towers = CLIPConfig(**self.towers)
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.num_classes < 2 or self.dim < 1 or self.layers < 1:
            raise ValueError(f"need num_classes >= 2, dim >= 1, layers >= 1; got {self.num_classes}, "
                             f"{self.dim}, {self.layers}")
        if self.fusion == "cross_attention" and self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if not isinstance(self.freeze_towers, bool):
            raise ValueError(f"freeze_towers must be True or False, got {self.freeze_towers!r}")
        if self.towers.text_encoder != "transformer":
            raise ValueError("FusionModel needs a Transformer text tower (its tokens are fused)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FusionModel(nn.Module):
    """Image tower + text tower + fusion module + linear head -> class logits.

    `forward(image (B, C, H, W), input_ids (B, L), attention_mask (B, L) or None) -> (B, num_classes)`
    logits; the mask defaults to `input_ids != pad_token_id`. With `config.freeze_towers` the towers
    get no gradient and stay in eval mode, and `forward(None, input_ids, attention_mask,
    image_features=model.encode_image(image))` accepts the image tower's output computed in advance.
    """

    def __init__(self, config: FusionConfig | None = None):
        super().__init__()
        self.config = config = config or FusionConfig()
        t = config.towers
        if t.image_encoder == "cnn":
            self.visual: nn.Module = SmallCNN(t.in_channels, t.image_size, t.cnn_channels, t.image_width,
                                              t.cnn_stem_stride)
        else:
            self.visual = TinyViT(t.in_channels, t.image_size, t.vit_patch_size, t.image_width, t.vit_layers,
                                  t.vit_heads, t.mlp_ratio, t.vit_pool, t.dropout)
        self.text = TextTransformer(t.vocab_size, t.context_length, t.text_width, t.text_layers, t.text_heads,
                                    t.mlp_ratio, t.text_causal, t.text_pool, t.dropout)
        with torch.no_grad():  # the image tokens' number and width, from a dry run
            tokens = self.visual.forward_tokens(torch.zeros(1, t.in_channels, t.image_size, t.image_size))
        n_tokens, token_dim = tokens.shape[1:]
        image_dim = token_dim if config.fusion in ("film", "cross_attention") else t.image_width
        simple = {"image": ImageOnly, "text": TextOnly, "late": LateFusion, "concat": ConcatFusion,
                  "gated": GatedFusion}
        if config.fusion in simple:
            self.fusion = simple[config.fusion](image_dim, t.text_width, config.dim)
        elif config.fusion == "film":
            self.fusion = FiLMFusion(image_dim, t.text_width, config.dim, n_tokens)
        else:
            self.fusion = CrossAttentionFusion(image_dim, t.text_width, config.dim, n_tokens, config.layers,
                                               config.heads, t.dropout)
        self.head = nn.Linear(config.dim, config.num_classes)
        if config.freeze_towers:
            self.visual.requires_grad_(False)
            self.text.requires_grad_(False)
        for name, module in self.named_modules():  # CLIP's initialisation (convolutions keep PyTorch's)
            if isinstance(module, nn.Linear) and name != "fusion.film":
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, (TextTransformer, TinyViT)):
                nn.init.normal_(module.positional_embedding, std=0.01)

    @classmethod
    def from_clip(cls, clip: CLIP, fusion: str = "cross_attention", num_classes: int = 2,
                  vocab_size: int | None = None, **changes: Any) -> "FusionModel":
        """A fusion model whose towers start as copies of a trained CLIP's (`clip.visual`,
        `clip.text`); fusion and head start fresh. `vocab_size` larger than the CLIP's grows the
        token embedding (old rows kept, new rows initialised), as Hugging Face's
        `resize_token_embeddings` does after adding tokens."""
        towers = CLIPConfig(**{**clip.config.to_dict(), "vocab_size": vocab_size or clip.config.vocab_size})
        if towers.vocab_size < clip.config.vocab_size:
            raise ValueError(f"vocab_size {towers.vocab_size} is smaller than the CLIP's {clip.config.vocab_size}")
        model = cls(FusionConfig(fusion=fusion, num_classes=num_classes, towers=towers, **changes))
        model.visual.load_state_dict(clip.visual.state_dict())
        text_state = {k: v.clone() for k, v in clip.text.state_dict().items()}
        old = text_state["token_embedding.weight"]
        text_state["token_embedding.weight"] = torch.cat([old, model.text.token_embedding.weight.detach()[len(old):]])
        model.text.load_state_dict(text_state)
        return model.train(model.training)  # frozen towers: back to eval mode

    def train(self, mode: bool = True) -> "FusionModel":
        super().train(mode)
        if self.config.freeze_towers:  # BatchNorm statistics and dropout of frozen towers never change
            self.visual.eval()
            self.text.eval()
        return self

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """What this model's fusion reads of an image (B, C, H, W): the image tower's tokens
        (B, N, E_img) or pooled output (B, E_img); None for a text-only model. Without gradient
        when the towers are frozen (then it can be computed once and passed as `image_features`)."""
        f = self.fusion
        if f.image_input is None:
            return None
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_towers):
            return self.visual.forward_tokens(image) if f.image_input == "tokens" else self.visual(image)

    def features(self, image: torch.Tensor | None, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor | None = None, image_features: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """The fused representation (B, D), before the head. `image_features` (what `encode_image`
        returns) replaces `image` when given.

        Raises:
            ValueError: neither `image` nor `image_features` given (and the fusion reads images).
        """
        if attention_mask is None:
            pad = self.config.towers.pad_token_id
            attention_mask = (input_ids != pad).long() if pad is not None else torch.ones_like(input_ids)
        keep = int(attention_mask.sum(1).max())  # drop columns that are padding in every row
        input_ids, attention_mask = input_ids[:, :keep], attention_mask[:, :keep]
        f = self.fusion
        text_features = None
        if image_features is None and f.image_input is not None:
            if image is None:
                raise ValueError("pass an image (B, C, H, W) or its image_features (from encode_image)")
            image_features = self.encode_image(image)  # (B, N, E_img) tokens or (B, E_img) pooled
        if f.text_input is not None:
            # Template texts repeat within a batch: encode each distinct one once, then gather
            # (the same values and gradients, several times cheaper for VQA's 45 questions).
            unique, inverse = torch.unique(torch.cat([input_ids, attention_mask], 1), dim=0, return_inverse=True)
            ids, mask = unique.split(input_ids.shape[1], dim=1)
            encode = self.text.forward_tokens if f.text_input == "tokens" else self.text
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_towers):
                text_features = encode(ids, mask)[inverse]  # (B, L, E_txt) tokens or (B, E_txt) pooled
        return f(image_features, text_features, attention_mask)  # (B, D)

    def forward(self, image: torch.Tensor | None, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, image_features: torch.Tensor | None = None
                ) -> torch.Tensor:
        return self.head(self.features(image, input_ids, attention_mask, image_features))  # (B, num_classes)

    def num_parameters(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())


def classification_loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """`loss_fn` for `fit`: cross-entropy of `model(image, input_ids, attention_mask)` against
    `batch["label"]` (class indices, (B,) long). A batch holding "image_features" (computed in
    advance by a frozen `FusionModel.encode_image`) instead of "image" is passed as such."""
    missing = {"input_ids", "label"} - set(batch) | (set() if {"image", "image_features"} & set(batch) else {"image"})
    if missing:
        raise ValueError(f"the batch lacks {sorted(missing)}: a fusion classifier needs images, texts and labels")
    if "image_features" in batch:
        logits = model(None, batch["input_ids"], batch.get("attention_mask"), image_features=batch["image_features"])
    else:
        logits = model(batch["image"], batch["input_ids"], batch.get("attention_mask"))  # (B, C)
    return F.cross_entropy(logits, batch["label"])


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None = None, batch_size: int = 500) -> torch.Tensor:
    """Logits of a fusion model over a whole data set, in batches, in eval mode, on the model's
    device; returns (N, C) on the CPU. `images` (N, C, H, W), `input_ids` / `attention_mask` (N, L)."""
    if len(images) != len(input_ids):
        raise ValueError(f"{len(images)} images but {len(input_ids)} texts")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        mask = None if attention_mask is None else attention_mask[i:i + batch_size].to(device)
        out.append(model(images[i:i + batch_size].to(device), input_ids[i:i + batch_size].to(device), mask).cpu())
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def itm_scores(model: nn.Module, images: torch.Tensor, input_ids: torch.Tensor,
               attention_mask: torch.Tensor | None = None, batch_size: int = 500) -> torch.Tensor:
    """Match probability p(match | image_i, caption_i) of a 2-way matcher for N aligned pairs:
    `images` (N, C, H, W), `input_ids` (N, L) -> (N,) in [0, 1]."""
    return predict_logits(model, images, input_ids, attention_mask, batch_size).softmax(-1)[:, 1]
