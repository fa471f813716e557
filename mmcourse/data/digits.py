"""Captioned handwritten digits: scikit-learn's bundled 8×8 digits (1,797 images, shipped inside
scikit-learn, no download) with captions from templates ("a handwritten 7.").

A fixed-seed stratified split gives train / val / test images; training captions use
`DIGIT_TEMPLATES_TRAIN`, val and test use `DIGIT_TEMPLATES_HELDOUT` by default, so evaluation
uses phrasings the model never saw. Items are dicts
`{"image": (1, H, W) float in [0, 1], "caption": str, "label": int, "index": int}`.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mmcourse.data import zero_shot_metadata as meta
from mmcourse.data.loaders import _SPLIT_ID, SPLITS, _check_split, _loaders, _resolve_templates

@functools.lru_cache(maxsize=1)
def load_digit_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: images (1797, 8, 8) uint8 in 0..16 and labels (1797,).

    Reads the CSV that ships inside scikit-learn (what `load_digits` reads) directly, which
    skips importing `sklearn.datasets` (about a second); falls back to `load_digits`.
    """
    try:  # locate the file without importing sklearn.datasets
        spec = importlib.util.find_spec("sklearn")
        path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float64)
        images, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    except (OSError, ValueError, TypeError, AttributeError):  # pragma: no cover - unusual installs
        from sklearn.datasets import load_digits

        digits = load_digits()
        images, labels = digits.images, digits.target
    return images.astype(np.uint8), labels.astype(np.int64)


def make_digits_splits(seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> dict[str, np.ndarray]:
    """Stratified split of the 1,797 digit images into train / val / test indices.

    Each class is shuffled with `seed` and cut by `fractions`, so every split has (nearly)
    the same class balance; the splits are disjoint and cover all images.

    Args:
        seed: the split's seed (the same seed always gives the same split).
        fractions: (train, val, test) fractions, positive, summing to 1.

    Returns:
        `{"train": (N_train,), "val": (N_val,), "test": (N_test,)}` sorted int64 index arrays
        (1259 / 179 / 359 images for the default fractions).
    """
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    _, labels = load_digit_arrays()
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(fractions[1] * len(idx)))
        n_test = int(round(fractions[2] * len(idx)))
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val:n_val + n_test])
        parts["train"].append(idx[n_val + n_test:])
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}


def digit_augmentation() -> Callable[[torch.Tensor], torch.Tensor]:
    """A mild `torchvision.transforms.v2` augmentation for digits: ±8° rotation, ±1/16 of the
    side shift, ±5% scale. Off by default: it makes every epoch's task harder, which pays off
    only in longer runs (one run: 16×16 images, 40 epochs, 99% zero-shot accuracy with it)."""
    from torchvision.transforms import v2

    # Bilinear: at 8x8, nearest-neighbour resampling rounds most small moves back to identity.
    return v2.RandomAffine(degrees=8, translate=(0.0625, 0.0625), scale=(0.95, 1.05),
                           interpolation=v2.InterpolationMode.BILINEAR)


class CaptionedDigits(Dataset):
    """Handwritten digits with template captions.

    Args:
        split: "train", "val" or "test".
        seed: seed of the image split (and of the fixed captions of val/test).
        templates: "train", "heldout", a list of `{}` format strings, or None: training
            templates for the train split, held-out templates for val and test.
        image_size: side of the square images; 8 keeps the original pixels (fastest),
            larger sizes upsample bilinearly (e.g. 16 for a ViT with 4×4 patches).
        numerals: if True, half the captions use the numeral ("a handwritten 7.") instead of
            the word ("a handwritten seven.").
        random_captions: draw a new caption on every read (default: True for train only).
        augment: apply `digit_augmentation` to training reads.
        fractions: train / val / test fractions of the split.

    Attributes:
        images: (N, 1, H, W) float in [0, 1]; labels: (N,) long; indices: (N,) positions in
        `load_digits`; classnames: `DIGIT_CLASSNAMES`; templates: the templates in use.
    """

    classnames = meta.DIGIT_CLASSNAMES

    def __init__(self, split: str = "train", seed: int = 0, templates=None, image_size: int = 8,
                 numerals: bool = True, random_captions: bool | None = None, augment: bool = False,
                 fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)):
        self.split = _check_split(split)
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
        self.templates = _resolve_templates(templates, split, meta.DIGIT_TEMPLATES_TRAIN,
                                            meta.DIGIT_TEMPLATES_HELDOUT, fields=("{}",))
        self.seed, self.image_size, self.numerals = seed, image_size, numerals
        self.random_captions = split == "train" if random_captions is None else random_captions
        images, labels = load_digit_arrays()
        self.indices = torch.from_numpy(make_digits_splits(seed, fractions)[split])
        x = torch.from_numpy(images[self.indices.numpy()]).float().div(16.0).unsqueeze(1)  # (N, 1, 8, 8)
        if image_size != 8:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(0, 1)
        self.images = x  # (N, 1, H, W)
        self.labels = torch.from_numpy(labels[self.indices.numpy()])  # (N,)
        self._labels = self.labels.tolist()  # plain ints: reading items stays cheap
        self.augment = digit_augmentation() if augment else None
        # Fixed (template, form) choice per item, used when captions are not random.
        rng = np.random.default_rng([seed, _SPLIT_ID[split], 1])
        self._fixed_template = rng.integers(len(self.templates), size=len(self))
        self._fixed_numeral = rng.random(len(self)) < 0.5 if numerals else np.zeros(len(self), bool)

    def __len__(self) -> int:
        return len(self._labels)

    def caption(self, i: int, template: int, numeral: bool) -> str:
        """The caption of item `i` with template number `template`."""
        label = self._labels[i]
        name = meta.DIGIT_NUMERALS[label] if numeral else meta.DIGIT_CLASSNAMES[label]
        return self.templates[template].format(name)

    def __getitem__(self, i: int) -> dict:
        n = len(self._labels)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} items")
        i = int(i) % n
        if self.random_captions:  # one draw picks the template and the form
            forms = 2 if self.numerals else 1
            draw = int(torch.randint(len(self.templates) * forms, ()))
            template, numeral = draw // forms, bool(draw % forms)
        else:
            template, numeral = int(self._fixed_template[i]), bool(self._fixed_numeral[i])
        image = self.images[i]
        if self.augment is not None and self.split == "train":
            image = self.augment(image)
        return {"image": image, "caption": self.caption(i, template, numeral), "label": self._labels[i], "index": i}

    def __repr__(self) -> str:
        return (f"CaptionedDigits(split={self.split!r}, n={len(self)}, image_size={self.image_size}, "
                f"templates={len(self.templates)}, random_captions={self.random_captions})")


def digits_dataloaders(tokenizer=None, batch_size: int = 256, seed: int = 0, num_workers: int = 0,
                       **dataset_kwargs) -> tuple[DataLoader, DataLoader, DataLoader]:
    """(train, val, test) loaders over `CaptionedDigits`; train is shuffled with `seed`.

    Args:
        tokenizer: defaults to `default_tokenizer()`.
        batch_size: B.
        seed: seed of the split and of the shuffling.
        num_workers: `DataLoader` workers (0 is fastest for these small in-memory sets).
        **dataset_kwargs: passed to every `CaptionedDigits` (e.g. `image_size=16`, `augment=True`).
    """
    sets = {s: CaptionedDigits(s, seed=seed, **dataset_kwargs) for s in SPLITS}
    return _loaders(sets, tokenizer, batch_size, seed, num_workers)
