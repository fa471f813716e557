"""Web-like noisy image–caption pairs: a clean set of captioned digits, corrupted the ways crawled
data is wrong (lesson 12).

A `Pairs` holds N fixed pairs and, for every pair, what was done to it (`noise`, "clean" or a
kind) and the class of its image (`labels`). The kinds (`NOISE_KINDS`):

- "misaligned": the caption of another, randomly chosen image (alt-text that belongs elsewhere);
- "boilerplate": a caption that says nothing about the image ("image", "click here", a file name);
- "duplicates": near-copies of a few images (a little pixel noise), each copy with the SAME caption
  (a banner or stock photo posted thousands of times);
- "wrong_vocabulary": a caption from another domain's vocabulary (a Shapes scene description
  under a digit);
- "truncated": the caption cut after a few words (the digit's name is usually the last word).

    clean = clean_pairs("train")                       # 1,259 pairs, every caption right
    noisy = corrupt(clean, "misaligned", 0.4, seed=0)   # 40 % of them replaced
    mixed = mix_noise(clean, {"misaligned": 0.2, "boilerplate": 0.1}, seed=0)

Everything is deterministic given `seed` (a NumPy generator; torch's global one is untouched).
The captions of a `Pairs` are fixed, unlike `CaptionedDigits("train")` whose captions are drawn
anew at every read: a crawled pair comes with one caption.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from . import zero_shot_metadata as meta
from mmcourse.data.digits import CaptionedDigits

NOISE_KINDS = ("misaligned", "boilerplate", "duplicates", "wrong_vocabulary", "truncated")
# What crawled alt-text says when it says nothing. Some words are in the course's vocabulary
# ("image", "picture", "photo"), the rest become [UNK] tokens, as unseen words do.
BOILERPLATE = ("image", "click here", "img_0423.jpg", "a photo.", "download now", "stock picture",
               "untitled", "picture", "see more", "dsc00981.png")
DUPLICATES_PER_SOURCE = 25  # copies of each repeated image: few sources, many copies
DUPLICATE_PIXEL_NOISE = 0.03  # std of the Gaussian noise on each copy (pixels in [0, 1])
# Lesson 12's crawled pool: 70 % of the pairs corrupted, misaligned captions the most common kind.
WEB_MIX = {"misaligned": 0.3, "boilerplate": 0.1, "duplicates": 0.1, "wrong_vocabulary": 0.1, "truncated": 0.1}


@dataclass
class Pairs(Dataset):
    """N fixed image–caption pairs with the truth about each.

    Attributes:
        images: (N, 1, H, W) float in [0, 1].
        captions: N strings.
        labels: (N,) long, the class of each IMAGE (what a zero-shot classifier should say).
        noise: N strings, "clean" or the kind of corruption (one of `NOISE_KINDS`).
        source: (N,) long, the clean pair each pair was made from (near-duplicates share their source).

    Items are `{"image", "caption", "label", "index"}` dicts, as `mmcourse.data.make_collate` expects.
    """

    images: torch.Tensor
    captions: list[str]
    labels: torch.Tensor
    noise: list[str]
    source: torch.Tensor

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if isinstance(self.captions, str) or not all(isinstance(c, str) for c in self.captions):
            raise TypeError("captions must be a list of strings")
        sizes = {"captions": len(self.captions), "labels": len(self.labels), "noise": len(self.noise),
                 "source": len(self.source)}
        wrong = {k: v for k, v in sizes.items() if v != n}
        if wrong:
            raise ValueError(f"{n} images but {wrong}: every pair needs one of each")
        bad = set(self.noise) - {"clean", *NOISE_KINDS}
        if bad:
            raise ValueError(f"unknown noise kinds {sorted(bad)}: use 'clean' or one of {NOISE_KINDS}")

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "caption": self.captions[i], "label": int(self.labels[i]), "index": int(i)}

    def subset(self, keep) -> "Pairs":
        """The pairs at `keep` (a (N,) bool mask or a sequence of indices), in that order."""
        keep = torch.as_tensor(keep)
        if keep.dtype == torch.bool:
            if keep.shape != (len(self),):
                raise ValueError(f"a boolean mask must have shape ({len(self)},), got {tuple(keep.shape)}")
            keep = keep.nonzero().flatten()
        keep = keep.long()
        if keep.numel() and (keep.min() < 0 or keep.max() >= len(self)):
            raise ValueError(f"indices must be in [0, {len(self)}), got {keep.min().item()}..{keep.max().item()}")
        idx = keep.tolist()
        return Pairs(self.images[keep], [self.captions[i] for i in idx], self.labels[keep],
                     [self.noise[i] for i in idx], self.source[keep])

    @property
    def is_noisy(self) -> torch.Tensor:
        """(N,) bool: True where the pair was corrupted."""
        return torch.tensor([k != "clean" for k in self.noise])

    def noise_rate(self) -> float:
        """The fraction of corrupted pairs."""
        return float(self.is_noisy.float().mean()) if len(self) else 0.0

    def fingerprint(self) -> str:
        """A short hash of the content (images, captions), for cache keys."""
        h = hashlib.sha256(self.images.numpy().tobytes())
        h.update("\n".join(self.captions).encode())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        kinds = {k: self.noise.count(k) for k in ("clean", *NOISE_KINDS) if self.noise.count(k)}
        return f"Pairs(n={len(self)}, {kinds})"


def clean_pairs(split: str = "train", seed: int = 0, templates=None) -> Pairs:
    """One fixed caption per digit image of a split, every caption right.

    Args:
        split: "train", "val" or "test" (`CaptionedDigits`' split; same `seed`, same images).
        seed: the split's seed and the seed of each image's (template, word or numeral) choice.
        templates: as `CaptionedDigits` (default: training templates for "train", held-out otherwise).

    Returns:
        A `Pairs` with `noise` all "clean" and `source` = 0..N-1.
    """
    data = CaptionedDigits(split, seed=seed, templates=templates, random_captions=False)
    captions = [data[i]["caption"] for i in range(len(data))]
    n = len(data)
    return Pairs(data.images.clone(), captions, data.labels.clone(), ["clean"] * n, torch.arange(n))


def _check_rate(kind: str, rate: float) -> None:
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}: choose one of {NOISE_KINDS}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise ValueError(f"the rate of {kind!r} must be a number in [0, 1], got {rate!r}")


def _truncate(caption: str, rng: np.random.Generator) -> str:
    words = caption.rstrip(".").split()
    return " ".join(words[:int(rng.integers(1, max(len(words) - 1, 1) + 1))])


def _apply(pairs: Pairs, kind: str, chosen: np.ndarray, rng: np.random.Generator) -> None:
    """Corrupt `pairs` (already copied) in place at the positions `chosen`."""
    n = len(pairs)
    if kind == "misaligned":  # another image's caption: a permutation without fixed points
        shift = rng.integers(1, n, size=len(chosen))
        donors = (chosen + shift) % n
        new = [pairs.captions[d] for d in donors]
        for i, c in zip(chosen, new):
            pairs.captions[i] = c
    elif kind == "boilerplate":
        for i in chosen:
            pairs.captions[i] = BOILERPLATE[int(rng.integers(len(BOILERPLATE)))]
    elif kind == "wrong_vocabulary":
        shapes = [t.format(n) for t in meta.SHAPES_CLASS_TEMPLATES_TRAIN for n in _shape_classnames()]
        for i in chosen:
            pairs.captions[i] = shapes[int(rng.integers(len(shapes)))]
    elif kind == "truncated":
        for i in chosen:
            pairs.captions[i] = _truncate(pairs.captions[i], rng)
    elif kind == "duplicates":  # a few source images, each copied many times with one caption
        n_sources = max(1, int(round(len(chosen) / DUPLICATES_PER_SOURCE)))
        sources = rng.choice(np.setdiff1d(np.arange(n), chosen), size=n_sources, replace=False) \
            if n - len(chosen) >= n_sources else rng.choice(n, size=n_sources, replace=False)
        which = sources[np.arange(len(chosen)) % n_sources]
        noise = torch.from_numpy(rng.normal(0, DUPLICATE_PIXEL_NOISE, size=(len(chosen), *pairs.images.shape[1:])))
        copies = (pairs.images[torch.from_numpy(which)] + noise.float()).clamp(0, 1)
        for j, (i, s) in enumerate(zip(chosen.tolist(), which.tolist())):
            pairs.images[i] = copies[j]
            pairs.captions[i] = pairs.captions[s]
            pairs.labels[i] = pairs.labels[s]
            pairs.source[i] = pairs.source[s]
    for i in chosen:
        pairs.noise[i] = kind


def _shape_classnames() -> list[str]:
    return [f"{c} {s}" for c in meta.COLOUR_NAMES for s in meta.SHAPE_NAMES]


def mix_noise(pairs: Pairs, rates: Mapping[str, float], seed: int = 0) -> Pairs:
    """Corrupt disjoint random parts of `pairs`, one part per kind.

    Args:
        pairs: clean (or already noisy) pairs; not modified.
        rates: {kind: fraction of ALL pairs to corrupt that way}, kinds from `NOISE_KINDS`;
            the fractions must sum to at most 1.
        seed: the NumPy seed of every choice (which pairs, which donor caption, which copy).

    Returns:
        A new `Pairs` of the same size; `noise[i]` names what was done to pair i.

    Raises:
        ValueError: an unknown kind, a rate outside [0, 1], or rates summing to more than 1.
    """
    if not isinstance(rates, Mapping):
        raise TypeError(f"rates must be a mapping {{kind: rate}}, got {type(rates).__name__}")
    for kind, rate in rates.items():
        _check_rate(kind, rate)
    if sum(rates.values()) > 1 + 1e-9:
        raise ValueError(f"the rates sum to {sum(rates.values()):.3f} > 1: each pair can be corrupted once")
    n = len(pairs)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    out = Pairs(pairs.images.clone(), list(pairs.captions), pairs.labels.clone(), list(pairs.noise),
                pairs.source.clone())
    start = 0
    for kind in NOISE_KINDS:  # a fixed order, so {a: .1, b: .2} and {b: .2, a: .1} agree
        if kind not in rates:
            continue
        count = int(round(rates[kind] * n))
        _apply(out, kind, np.sort(order[start:start + count]), rng)
        start += count
    return out


def corrupt(pairs: Pairs, kind: str, rate: float, seed: int = 0) -> Pairs:
    """`mix_noise(pairs, {kind: rate}, seed)`: one kind of noise on a fraction `rate` of the pairs."""
    return mix_noise(pairs, {kind: rate}, seed=seed)


def trusted_and_pool(n_trusted: int = 200, rates: Mapping[str, float] | None = None, seed: int = 0,
                     noise_seed: int = 1) -> tuple[Pairs, Pairs]:
    """Lesson 12's setting: the clean training pairs split at random into a small trusted set and a
    crawled pool corrupted with `rates` (default `WEB_MIX`).

    Args:
        n_trusted: pairs in the trusted set (0 < n_trusted < 1259).
        rates: as `mix_noise`.
        seed: of the split; noise_seed: of the corruption.

    Returns:
        (trusted, pool), both in the original order of the training split.
    """
    clean = clean_pairs("train")
    if isinstance(n_trusted, bool) or not isinstance(n_trusted, int) or not 0 < n_trusted < len(clean):
        raise ValueError(f"n_trusted must be an int in (0, {len(clean)}), got {n_trusted!r}")
    order = torch.randperm(len(clean), generator=torch.Generator().manual_seed(seed))
    trusted = clean.subset(order[:n_trusted].sort().values)
    pool = mix_noise(clean.subset(order[n_trusted:].sort().values), WEB_MIX if rates is None else rates, seed=noise_seed)
    return trusted, pool


# ------------------------------------------------------------------------------ rules
def rule_filter(captions, vocabulary, min_words: int = 3, boilerplate=BOILERPLATE,
                min_known: float = 1.0) -> torch.Tensor:
    """Keep a caption only if it passes three rules that need no model (LAION's and DataComp's
    "basic filtering" kind: caption length, a blocklist, and the language, here "known words").

    Args:
        captions: N strings.
        vocabulary: the set of words a caption's words should come from (e.g. a tokenizer's
            vocabulary): a stand-in for language identification.
        min_words: drop captions with fewer words (after removing the final ".").
        boilerplate: drop captions equal to one of these (case-insensitive).
        min_known: drop captions whose fraction of words in `vocabulary` is below this.

    Returns:
        (N,) bool, True = keep.

    Raises:
        TypeError: captions not a list of strings. ValueError: min_words < 0 or min_known outside [0, 1].
    """
    if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
        raise TypeError("captions must be a list of strings")
    if min_words < 0 or not 0 <= min_known <= 1:
        raise ValueError(f"need min_words >= 0 and 0 <= min_known <= 1, got {min_words}, {min_known}")
    vocabulary = {w.lower() for w in vocabulary}
    blocked = {b.lower().strip() for b in boilerplate}
    keep = []
    for caption in captions:
        words = caption.lower().replace(".", " ").replace(",", " ").split()
        known = sum(w in vocabulary for w in words) / max(len(words), 1)
        keep.append(len(words) >= min_words and caption.lower().strip() not in blocked and known >= min_known)
    return torch.tensor(keep, dtype=torch.bool)
