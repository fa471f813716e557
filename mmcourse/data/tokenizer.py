"""A word-level tokenizer for the course's captions, built with Hugging Face `tokenizers`.

Captions come from templates, so their vocabulary is small and closed: a word-level model
(one id per lower-cased word or punctuation mark) is exact and easy to read, and it is
"trained" offline in milliseconds by counting the words of the caption corpus.

Every caption is encoded CLIP style, padded to a fixed `context_length`::

    [SOT] a photo of the digit seven . [EOT] [PAD] [PAD] ...
    mask:  1  1  1  1  1  1  1  1  1    0     0   ...

Special tokens (their ids are fixed, in this order): `[PAD]`=0, `[UNK]`=1, `[SOT]`=2,
`[EOT]`=3, `[MASK]`=4. A caption longer than `context_length` is truncated and still ends
with `[EOT]`.

Finding the end-of-text token, where a CLIP text encoder pools (open_clip uses
`text.argmax(-1)` because its EOT has the largest id; here it does not)::

    eot_index = attention_mask.sum(-1) - 1                   # (B,) right padding: last real token
    eot_index = (input_ids == tok.eot_token_id).int().argmax(-1)   # (B,) same thing, by id
    pooled = x[torch.arange(B), eot_index]                   # (B, D) from x: (B, L, D)

The tokenizer is a `transformers.PreTrainedTokenizerFast` (`tok.hf`) wrapped in a callable that
returns torch tensors; it saves as `tokenizer.json` and loads with
`PreTrainedTokenizerFast(tokenizer_file=...)`.
"""
from __future__ import annotations

import functools
import itertools
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from mmcourse.data import zero_shot_metadata as meta

# Batches of short captions gain nothing from the Rust thread pool, and a DataLoader worker
# forked after it started would print a warning; users can still opt in.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PAD, UNK, SOT, EOT, MASK = "[PAD]", "[UNK]", "[SOT]", "[EOT]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, SOT, EOT, MASK)  # ids 0..4, in this order
DEFAULT_CONTEXT_LENGTH = 20  # the longest template caption is 17 tokens with [SOT] and [EOT]
_CACHE_SIZE = 1 << 16  # captions remembered per context length (template captions repeat)
_HF_SPECIALS = {"pad_token": PAD, "unk_token": UNK, "bos_token": SOT, "eos_token": EOT, "mask_token": MASK}


class CaptionTokenizer:
    """Callable tokenizer: `tok(texts) -> {"input_ids": (B, L), "attention_mask": (B, L)}`.

    Attributes:
        hf: the underlying `transformers.PreTrainedTokenizerFast`.
        context_length: L, the length every caption is padded or truncated to.
        pad_token_id, unk_token_id, sot_token_id, eot_token_id, mask_token_id: special ids.
        vocab_size: number of tokens, special tokens included.
    """

    def __init__(self, hf: PreTrainedTokenizerFast, context_length: int = DEFAULT_CONTEXT_LENGTH):
        if not isinstance(context_length, int) or context_length < 2:
            raise ValueError(f"context_length must be an int >= 2 (room for [SOT] and [EOT]), got {context_length!r}")
        vocab = hf.get_vocab()
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing}")
        self.hf = hf
        self.context_length = context_length
        self.pad_token_id = vocab[PAD]
        self.unk_token_id = vocab[UNK]
        self.sot_token_id = vocab[SOT]
        self.eot_token_id = vocab[EOT]
        self.mask_token_id = vocab[MASK]
        self.vocab_size = len(vocab)
        self._backends: dict[int, Tokenizer] = {}
        self._cache: dict[tuple[int, str], tuple[list[int], list[int]]] = {}

    def _backend(self, length: int) -> Tokenizer:
        # A copy of the Rust tokenizer that pads and truncates to `length` by itself: ~10x
        # faster than going through the `transformers` wrapper on every batch.
        if length not in self._backends:
            backend = Tokenizer.from_str(self.hf.backend_tokenizer.to_str())
            backend.enable_truncation(length)
            backend.enable_padding(length=length, pad_id=self.pad_token_id, pad_token=PAD)
            self._backends[length] = backend
        return self._backends[length]

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> dict[str, torch.Tensor]:
        """Encode captions CLIP style: `[SOT] words [EOT]`, then `[PAD]` up to the context length.

        Args:
            texts: one caption or a list of B captions.
            context_length: override `self.context_length` (L).

        Returns:
            `{"input_ids": LongTensor (B, L), "attention_mask": LongTensor (B, L)}`; the mask is
            1 on real tokens (including [SOT] and [EOT]) and 0 on padding.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("texts is empty: pass at least one caption")
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise ValueError(f"every caption must be a str, got {type(bad[0]).__name__}: {bad[0]!r:.60}")
        length = self.context_length if context_length is None else context_length
        if length < 2:
            raise ValueError(f"context_length must be >= 2, got {length}")
        # Same result as self.hf(texts, padding="max_length", truncation=True, max_length=length),
        # which the tests check; template captions repeat, so encoded rows are cached.
        new = list(dict.fromkeys(t for t in texts if (length, t) not in self._cache))
        if new:
            if len(self._cache) + len(new) > _CACHE_SIZE:
                self._cache.clear()
            for text, enc in zip(new, self._backend(length).encode_batch(new)):
                self._cache[(length, text)] = (enc.ids, enc.attention_mask)
        rows = [self._cache[(length, t)] for t in texts]
        return {"input_ids": torch.tensor([r[0] for r in rows], dtype=torch.long),   # (B, L)
                "attention_mask": torch.tensor([r[1] for r in rows], dtype=torch.long)}  # (B, L)

    def tokenize(self, text: str) -> list[str]:
        """The tokens of one caption, with [SOT] and [EOT], without padding."""
        return self.hf.convert_ids_to_tokens(self.encode(text))

    def encode(self, text: str) -> list[int]:
        """The ids of one caption, with [SOT] and [EOT], without padding or truncation."""
        return self.hf(text)["input_ids"]

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Ids back to text (lower-cased, punctuation separated by spaces)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, ids: torch.Tensor, skip_special_tokens: bool = True) -> list[str]:
        """(B, L) ids back to B strings."""
        return [self.decode(row, skip_special_tokens) for row in ids]

    def get_vocab(self) -> dict[str, int]:
        return self.hf.get_vocab()

    def save(self, path: str | os.PathLike) -> Path:
        """Save to a directory (`tokenizer.json` + `tokenizer_config.json`) or, if `path` ends in
        `.json`, to that single file. Returns the path of `tokenizer.json`."""
        path = Path(path)
        self.hf.model_max_length = self.context_length
        if path.suffix == ".json":
            path.parent.mkdir(parents=True, exist_ok=True)
            self.hf.backend_tokenizer.save(str(path))
            return path
        self.hf.save_pretrained(str(path))
        return path / "tokenizer.json"

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"CaptionTokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"


def _wrap(backend: Tokenizer, context_length: int) -> CaptionTokenizer:
    hf = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=context_length, **_HF_SPECIALS)
    return CaptionTokenizer(hf, context_length)


def build_tokenizer(corpus: Iterable[str], context_length: int = DEFAULT_CONTEXT_LENGTH,
                    min_frequency: int = 1) -> CaptionTokenizer:
    """Train a word-level tokenizer on `corpus` (offline, deterministic).

    Text is NFKC-normalised and lower-cased, then split on whitespace and punctuation
    ("seven." -> "seven", "."). Ids: special tokens first, then words by decreasing frequency,
    ties in alphabetical order, so the same corpus always gives the same ids.

    Args:
        corpus: captions to learn the vocabulary from.
        context_length: length L every encoded caption is padded or truncated to.
        min_frequency: words seen fewer times become [UNK].

    Returns:
        A `CaptionTokenizer`.
    """
    corpus = list(corpus)
    if not corpus:
        raise ValueError("corpus is empty: pass at least one caption")
    backend = Tokenizer(models.WordLevel(unk_token=UNK))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Whitespace()  # words \w+ and punctuation runs
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=min_frequency,
                                        show_progress=False)
    backend.train_from_iterator(corpus, trainer)
    vocab = backend.get_vocab()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}", pair=f"{SOT} $A {EOT} $B {EOT}",
        special_tokens=[(SOT, vocab[SOT]), (EOT, vocab[EOT])],
    )
    backend.decoder = None
    return _wrap(backend, context_length)


def load_tokenizer(path: str | os.PathLike, context_length: int | None = None) -> CaptionTokenizer:
    """Load a tokenizer saved by `CaptionTokenizer.save` (a directory or a tokenizer.json)."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.exists():
        raise ValueError(f"no tokenizer.json at {path}")
    if context_length is None:
        config = file.parent / "tokenizer_config.json"
        context_length = DEFAULT_CONTEXT_LENGTH
        if path.is_dir() and config.exists():
            context_length = int(json.loads(config.read_text()).get("model_max_length", context_length))
    return _wrap(Tokenizer.from_file(str(file)), context_length)


def caption_corpus() -> list[str]:
    """Every template of both datasets filled with every value of each of its fields:
    the corpus `default_tokenizer` learns from (a few thousand captions)."""
    corpus = []
    for template in meta.DIGIT_TEMPLATES_TRAIN + meta.DIGIT_TEMPLATES_HELDOUT:
        corpus += [template.format(c) for c in meta.DIGIT_CLASSNAMES + meta.DIGIT_NUMERALS]
    for template in meta.SHAPES_TEMPLATES_TRAIN + meta.SHAPES_TEMPLATES_HELDOUT:
        for size, colour, shape, position in itertools.product(
                meta.SIZE_NAMES, meta.COLOUR_NAMES, meta.SHAPE_NAMES, meta.POSITION_NAMES):
            corpus.append(template.format(size=size, colour=colour, shape=shape, position=position))
    objects = [f"{s} {c} {h}" for s, c, h in itertools.product(meta.SIZE_NAMES, meta.COLOUR_NAMES, meta.SHAPE_NAMES)]
    objects += [f"{c} {h}" for c, h in itertools.product(meta.COLOUR_NAMES, meta.SHAPE_NAMES)]
    for template in meta.SHAPES_PAIR_TEMPLATES_TRAIN + meta.SHAPES_PAIR_TEMPLATES_HELDOUT:
        for relation, first in itertools.product(meta.RELATION_NAMES, objects):
            corpus.append(template.format(first=first, relation=relation, second=objects[-1]))
    for template in meta.SHAPES_CLASS_TEMPLATES_TRAIN + meta.SHAPES_CLASS_TEMPLATES_HELDOUT:
        corpus += [template.format(f"{c} {h}") for c, h in itertools.product(meta.COLOUR_NAMES, meta.SHAPE_NAMES)]
    return corpus


@functools.lru_cache(maxsize=4)
def default_tokenizer(context_length: int = DEFAULT_CONTEXT_LENGTH) -> CaptionTokenizer:
    """The tokenizer every lesson shares: built from `caption_corpus()`, so its vocabulary covers
    all templates and class names of both datasets, and its ids never change between runs."""
    return build_tokenizer(caption_corpus(), context_length=context_length)
