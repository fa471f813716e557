"""A tiny visual assistant, the LLaVA recipe: a frozen CLIP image tower, a projector into the
language model's embedding space, and a small decoder-only language model (Liu et al. 2023,
"Visual Instruction Tuning"; LLaVA-1.5's two-layer MLP projector, Liu et al. 2024).

    image --vision_tower (frozen CLIP CNN, forward_tokens)--> (B, N, C) image tokens
          --multi_modal_projector--> (B, N, E), written over the N `<image>` positions of the text
    [SOT] <image>*N <|user|> what colour is the circle ? <|assistant|> red <|end|> [EOT]
          --language_model (the course's `Block`s, causal)--> (B, L, V) next-token logits

Module names are those of `transformers`' `LlavaForConditionalGeneration` (`vision_tower`,
`multi_modal_projector`, `language_model`). Reads top to bottom:

1. `AssistantConfig`; 2. `DecoderLM` (token + position embeddings, causal `Block`s, a head tied to
the token embedding) and `lm_loss`; 3. `Projector` (linear or LLaVA-1.5's MLP); 4. `VisualAssistant`
(`merge_image_features` splices the image tokens in; `generate_answers` decodes with
`mmcourse.decoding`); 5. `assistant_labels` (-100 everywhere but the assistant's tokens),
`assistant_loss`, `caption_loss` (stage 1), and `set_trainable` (what each stage trains).

Shape letters: B batch, L tokens, N image tokens, C image-token channels, E LM width, V vocabulary.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcourse.models.decoding import greedy_search
from mmcourse.models.clip import CLIP, Block, text_attention_mask

IGNORE_INDEX = -100
PROJECTORS = ("linear", "mlp")
STAGES = ("pretrain", "align", "instruct")


@dataclass
class AssistantConfig:
    """The language model and the projector (the vision tower is the CLIP it is built on).

    Attributes:
        vocab_size, max_positions: the tokenizer's vocabulary and the longest sequence (L, image
            tokens expanded).
        width, layers, heads, mlp_ratio: the language model's Transformer (E = width).
        projector: "linear" (LLaVA) or "mlp" (LLaVA-1.5: Linear, GELU, Linear).
        vision_width: C, the channels of the vision tower's tokens.
        num_image_tokens: N, how many tokens one image becomes.
        pad_token_id, sot_token_id, eot_token_id, image_token_id, user_token_id,
        assistant_token_id, end_token_id: the tokenizer's ids.
    """

    vocab_size: int = 90
    max_positions: int = 52
    width: int = 64
    layers: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    projector: str = "mlp"
    vision_width: int = 64
    num_image_tokens: int = 4
    pad_token_id: int = 0
    sot_token_id: int = 2
    eot_token_id: int = 3
    image_token_id: int = 86
    user_token_id: int = 87
    assistant_token_id: int = 88
    end_token_id: int = 89

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_positions", "width", "layers", "heads", "vision_width", "num_image_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"AssistantConfig.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.projector not in PROJECTORS:
            raise ValueError(f"projector must be one of {PROJECTORS}, got {self.projector!r}")
        for name in ("pad_token_id", "sot_token_id", "eot_token_id", "image_token_id", "user_token_id",
                     "assistant_token_id", "end_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name}={getattr(self, name)} is outside the vocabulary [0, {self.vocab_size})")

    @classmethod
    def for_tokenizer(cls, tokenizer, clip: CLIP | None = None, **changes) -> "AssistantConfig":
        """A config with a chat tokenizer's vocabulary and ids (and a CLIP CNN's token width)."""
        from mmcourse.data.conversations import ASSISTANT_TOKEN, END_TOKEN, IMAGE_TOKEN, USER_TOKEN  # noqa

        vocab = tokenizer.get_vocab()
        ids = dict(image_token_id=vocab[IMAGE_TOKEN], user_token_id=vocab[USER_TOKEN],
                   assistant_token_id=vocab[ASSISTANT_TOKEN], end_token_id=vocab[END_TOKEN])
        if clip is not None:
            changes.setdefault("vision_width", clip.config.cnn_channels[-1])
        n = changes.get("num_image_tokens", cls.num_image_tokens)
        return cls(vocab_size=tokenizer.vocab_size, max_positions=tokenizer.context_length + n - 1,
                   pad_token_id=tokenizer.pad_token_id, sot_token_id=tokenizer.sot_token_id,
                   eot_token_id=tokenizer.eot_token_id, **ids, **changes)


# ------------------------------------------------------------------------------------ 2. the language model

class DecoderLM(nn.Module):
    """A decoder-only language model: token + learned position embeddings, causal `Block`s, a final
    LayerNorm and a head tied to the token embedding (GPT-2's design, the course's `Block`)."""

    def __init__(self, vocab_size: int, max_positions: int, width: int, layers: int, heads: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.max_positions = max_positions
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.zeros(max_positions, width))
        self.blocks = nn.ModuleList([Block(width, heads, mlp_ratio) for _ in range(layers)])
        self.ln_final = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        self.apply(_init_weights)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.lm_head.weight = self.token_embedding.weight  # tied (GPT-2, BERT)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.token_embedding

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits (B, L, V) from `input_ids` (B, L) or `inputs_embeds` (B, L, E)
        (exactly one), right-padded; attention is causal and never reads padding (mask 0)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (B, L) and inputs_embeds (B, L, E)")
        x = self.token_embedding(input_ids) if inputs_embeds is None else inputs_embeds  # (B, L, E)
        B, L, _ = x.shape
        if L > self.max_positions:
            raise ValueError(f"{L} tokens is more than max_positions={self.max_positions}")
        if attention_mask is None:
            attention_mask = torch.ones(B, L, dtype=torch.long, device=x.device)
        x = x + self.positional_embedding[:L]
        mask = text_attention_mask(attention_mask, causal=True)  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, mask)
        return self.lm_head(self.ln_final(x))  # (B, L, V)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def shifted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats per labelled token): logits (B, L, V) at position t score labels
    (B, L) at t + 1; labels -100 are skipped (Hugging Face's causal-LM loss)."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX)


def text_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Language-model labels: every real token but the given [SOT] (position 0); -100 on padding."""
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    labels[:, 0] = IGNORE_INDEX
    return labels


def lm_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Stage 0, a `loss_fn` for `fit`: next-token cross-entropy of a `DecoderLM` on text."""
    lm = model.language_model if hasattr(model, "language_model") else model
    return shifted_cross_entropy(lm(batch["input_ids"], batch["attention_mask"]),
                                 text_labels(batch["input_ids"], batch["attention_mask"]))


# ------------------------------------------------------------------------------------ 3. the projector

class Projector(nn.Module):
    """Image tokens (B, N, C) -> language-model embeddings (B, N, E): one linear map (LLaVA) or
    Linear, GELU, Linear (LLaVA-1.5's `mlp2x_gelu`); names as `transformers`' projector."""

    def __init__(self, vision_width: int, width: int, kind: str = "mlp"):
        super().__init__()
        if kind not in PROJECTORS:
            raise ValueError(f"kind must be one of {PROJECTORS}, got {kind!r}")
        self.linear_1 = nn.Linear(vision_width, width)
        self.act = nn.GELU() if kind == "mlp" else nn.Identity()
        self.linear_2 = nn.Linear(width, width) if kind == "mlp" else nn.Identity()

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(image_features)))  # (B, N, E)


# ------------------------------------------------------------------------------------ 4. the assistant

def expand_image_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int,
                        num_image_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeat the one `<image>` placeholder of each row N times, as `transformers`' LLaVA processor
    does: (B, L) -> (B, L + N - 1). Every row must hold exactly one placeholder.

    Raises:
        ValueError: a row without, or with more than one, placeholder.
    """
    count = (input_ids == image_token_id).sum(1)
    if (count != 1).any():
        raise ValueError(f"every row needs exactly one <image> token (id {image_token_id}); found "
                         f"{count.tolist()}")
    repeats = torch.where(input_ids == image_token_id, num_image_tokens, 1)  # (B, L)
    ids = torch.stack([row.repeat_interleave(r) for row, r in zip(input_ids, repeats)])
    mask = torch.stack([row.repeat_interleave(r) for row, r in zip(attention_mask, repeats)])
    return ids, mask


def merge_image_features(inputs_embeds: torch.Tensor, input_ids: torch.Tensor, image_features: torch.Tensor,
                         image_token_id: int) -> torch.Tensor:
    """Write the projected image tokens (B, N, E) over the N `<image>` positions of each row of
    `inputs_embeds` (B, L, E), in order (`transformers`' `masked_scatter` of LLaVA).

    Raises:
        ValueError: the number of `<image>` tokens in a row is not N.
    """
    is_image = input_ids == image_token_id  # (B, L)
    per_row = is_image.sum(1)
    if (per_row != image_features.shape[1]).any():
        raise ValueError(f"image tokens in the text {per_row.tolist()} do not match the {image_features.shape[1]} "
                         "image features per image: expand the <image> placeholder first")
    return inputs_embeds.masked_scatter(is_image[..., None], image_features.to(inputs_embeds.dtype))


class VisionTower(nn.Module):
    """A trained CLIP's CNN, frozen and always in eval mode: images (B, 3, H, W) -> its last feature
    map as tokens (B, N, C) (`SmallCNN.forward_tokens`)."""

    def __init__(self, clip: CLIP):
        super().__init__()
        self.cnn = copy.deepcopy(clip.visual)
        self.cnn.requires_grad_(False)
        self.cnn.eval()

    def train(self, mode: bool = True) -> "VisionTower":
        return super().train(False)  # BatchNorm statistics stay those of CLIP training

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.cnn.forward_tokens(image)  # (B, N, C)


class VisualAssistant(nn.Module):
    """`vision_tower` (frozen CLIP CNN) -> `multi_modal_projector` -> `language_model` (`DecoderLM`).

    Args:
        clip: a trained `CLIP` with a CNN image tower (copied; never changed).
        config: an `AssistantConfig` (e.g. `AssistantConfig.for_tokenizer(tokenizer, clip)`).
    """

    def __init__(self, clip: CLIP, config: AssistantConfig):
        super().__init__()
        self.config = c = config
        self.vision_tower = VisionTower(clip)
        self.multi_modal_projector = Projector(c.vision_width, c.width, c.projector)
        self.multi_modal_projector.apply(_init_weights)
        self.language_model = DecoderLM(c.vocab_size, c.max_positions, c.width, c.layers, c.heads, c.mlp_ratio)

    def image_embeddings(self, image: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> projected image tokens (B, N, E)."""
        features = self.vision_tower(image)  # (B, N, C)
        if features.shape[1] != self.config.num_image_tokens:
            raise ValueError(f"the vision tower gives {features.shape[1]} tokens, the config expects "
                             f"num_image_tokens={self.config.num_image_tokens}")
        return self.multi_modal_projector(features)

    def embed(self, image: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """The language model's input (B, L, E): token embeddings with the image spliced in."""
        embeds = self.language_model.get_input_embeddings()(input_ids)  # (B, L, E)
        return merge_image_features(embeds, input_ids, self.image_embeddings(image), self.config.image_token_id)

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits (B, L, V) for images (B, 3, H, W) and expanded ids (B, L)."""
        return self.language_model(attention_mask=attention_mask, inputs_embeds=self.embed(image, input_ids))

    @torch.no_grad()
    def generate_answers(self, image: torch.Tensor, prompt_ids: torch.Tensor, max_new_tokens: int = 4):
        """Greedy answers to prompts that end just before `<|assistant|>`, all of one length (B, P),
        with one expanded image each: decoding starts at `<|assistant|>` and stops at `<|end|>`.

        Returns:
            A `mmcourse.decoding.Generation` whose sequences start with `<|assistant|>`.
        """
        was_training = self.training
        self.eval()
        c = self.config
        try:
            context = self.embed(image, prompt_ids)  # (B, P, E) the prompt, given

            def step(ctx: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
                x = torch.cat([ctx, self.language_model.get_input_embeddings()(ids)], 1)  # (B, P + t, E)
                return self.language_model(inputs_embeds=x)[:, -1]  # (B, V)

            return greedy_search(step, context, sot_token_id=c.assistant_token_id, eot_token_id=c.end_token_id,
                                 pad_token_id=c.pad_token_id, max_new_tokens=max_new_tokens,
                                 suppress_tokens=[c.pad_token_id, c.sot_token_id, c.image_token_id, c.user_token_id,
                                                  c.assistant_token_id])
        finally:
            self.train(was_training)


def answer_questions(model: VisualAssistant, tokenizer, images: torch.Tensor, questions: Sequence[str],
                     batch_size: int = 512, max_new_tokens: int = 4) -> list[str]:
    """Greedy answers (str, special tokens removed) to one question per image, one turn each.

    Prompts are grouped by length so that no row needs padding inside the prompt.
    """
    from mmcourse.data.conversations import chat_text

    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images but {len(questions)} questions")
    c = model.config
    enc = tokenizer([chat_text([(q, None)]) for q in questions])
    ids, mask = enc["input_ids"], enc["attention_mask"]  # [SOT] <image> <|user|> question <|assistant|> [EOT]
    if (ids[torch.arange(len(ids)), mask.sum(1) - 2] != c.assistant_token_id).any():
        raise ValueError("a prompt was cut by the tokenizer's context_length: questions must be shorter")
    lengths = mask.sum(1) - 2  # the prompt without <|assistant|> and [EOT]: decoding starts from <|assistant|>
    out = [""] * len(questions)
    for length in lengths.unique().tolist():
        rows = torch.nonzero(lengths == length).flatten()
        for chunk in rows.split(batch_size):
            prompt, pmask = expand_image_tokens(ids[chunk, :length], mask[chunk, :length], c.image_token_id,
                                                c.num_image_tokens)
            gen = model.generate_answers(images[chunk], prompt, max_new_tokens)
            for i, seq in zip(chunk.tolist(), gen.sequences):
                out[i] = tokenizer.decode(seq, skip_special_tokens=True).strip()
    return out


# ------------------------------------------------------------------------------------ 5. labels and losses

def assistant_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, assistant_token_id: int,
                     end_token_id: int) -> torch.Tensor:
    """Labels for instruction tuning: the token id on the assistant's tokens — from the token after
    each `<|assistant|>` up to and including its `<|end|>` — and -100 everywhere else (image
    tokens, [SOT], the user's turns, the role tokens, [EOT], padding). (B, L) -> (B, L).

    A token is the assistant's when more `<|assistant|>` tokens come before it than `<|end|>`
    tokens strictly before it. Padding is read from `attention_mask`.

    Raises:
        ValueError: shapes differ or are not (B, L).
    """
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
                         "must be the same (B, L) shape")
    opened = torch.cumsum(input_ids == assistant_token_id, dim=1)  # assistant turns begun at or before t
    is_end = (input_ids == end_token_id).long()
    closed = torch.cumsum(is_end, dim=1) - is_end  # turns ended strictly before t
    inside = (opened > closed) & (input_ids != assistant_token_id) & (attention_mask != 0)
    return input_ids.masked_fill(~inside, IGNORE_INDEX)


def chat_batch_labels(model: VisualAssistant, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    c = model.config
    ids, mask = expand_image_tokens(batch["input_ids"], batch["attention_mask"], c.image_token_id,
                                    c.num_image_tokens)
    return ids, mask, assistant_labels(ids, mask, c.assistant_token_id, c.end_token_id)


def assistant_loss(model: VisualAssistant, batch: dict) -> torch.Tensor:
    """Stage 2, a `loss_fn` for `fit`: cross-entropy on the assistant's tokens only."""
    ids, mask, labels = chat_batch_labels(model, batch)
    return shifted_cross_entropy(model(batch["image"], ids, mask), labels)


def caption_loss(model: VisualAssistant, batch: dict) -> torch.Tensor:
    """Stage 1, a `loss_fn` for `fit`: `[SOT] <image>*N caption [EOT]`, loss on the caption and [EOT]."""
    c = model.config
    ids, mask = expand_image_tokens(batch["input_ids"], batch["attention_mask"], c.image_token_id,
                                    c.num_image_tokens)
    labels = ids.masked_fill((mask == 0) | (ids == c.image_token_id), IGNORE_INDEX)
    labels[:, 0] = IGNORE_INDEX
    return shifted_cross_entropy(model(batch["image"], ids, mask), labels)


def set_trainable(model: VisualAssistant, stage: str) -> dict[str, int]:
    """Freeze and unfreeze for a stage (LLaVA): "pretrain" the language model alone on text,
    "align" the projector alone, "instruct" projector and language model; the vision tower never.

    Returns:
        Trainable parameters per module: {"vision_tower": n, "multi_modal_projector": n, "language_model": n}.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    model.vision_tower.requires_grad_(False)
    model.multi_modal_projector.requires_grad_(stage in ("align", "instruct"))
    model.language_model.requires_grad_(stage in ("pretrain", "instruct"))
    return trainable_parameters(model)


def trainable_parameters(model: VisualAssistant) -> dict[str, int]:
    return {name: sum(p.numel() for p in getattr(model, name).parameters() if p.requires_grad)
            for name in ("vision_tower", "multi_modal_projector", "language_model")}
