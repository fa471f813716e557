"""Shapes: procedurally rendered 32×32 RGB scenes of one object (colour × shape × position ×
size) or two objects and their relation ("a red circle to the left of a blue square."), with
whole colour–shape combinations optionally held out of training to probe compositional
generalisation. Items are dicts
`{"image": (3, S, S) float in [0, 1], "caption": str, "label": int, "index": int}`.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mmcourse.data import zero_shot_metadata as meta
from mmcourse.data.loaders import _SPLIT_ID, SPLITS, _check_split, _loaders, _resolve_templates

def _sdf(shape: str, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance (pixels, negative inside) of a shape of radius `r` centred at the origin."""
    if shape == "circle":
        return torch.sqrt(dx**2 + dy**2) - r
    if shape == "square":
        return torch.maximum(dx.abs(), dy.abs()) - 0.8 * r  # same area as the circle, roughly
    if shape == "triangle":  # apex up at (0, -R), base corners (±R, 0.7R): inside all three half-planes
        R = 1.2 * r
        base = dy - 0.7 * R
        sides = (1.7 * dx.abs() - (dy + R)) / 1.972  # distance to the slanted edges (unit normal)
        return torch.maximum(base, sides)
    if shape == "cross":
        t = 0.33 * r
        bar_h = torch.maximum(dx.abs() - r, dy.abs() - t)
        bar_v = torch.maximum(dx.abs() - t, dy.abs() - r)
        return torch.minimum(bar_h, bar_v)
    raise ValueError(f"unknown shape {shape!r}")


def render_objects(shape_idx: torch.Tensor, colour_idx: torch.Tensor, centre: torch.Tensor, radius: torch.Tensor,
                   image_size: int = 32, canvas: torch.Tensor | None = None) -> torch.Tensor:
    """Paint one object on each of N images, anti-aliased from signed distances.

    Args:
        shape_idx, colour_idx: (N,) indices into `SHAPE_NAMES` / `COLOUR_NAMES`.
        centre: (N, 2) centres (x, y) in pixels; radius: (N,) radii in pixels.
        image_size: side S of the images.
        canvas: (N, 3, S, S) images to paint on (black if None).

    Returns:
        (N, 3, S, S) float images in [0, 1].
    """
    n = len(shape_idx)
    coords = torch.arange(image_size, dtype=torch.float32) + 0.5  # pixel centres
    alpha = torch.empty(n, image_size, image_size)
    for k, name in enumerate(meta.SHAPE_NAMES):
        sel = torch.nonzero(shape_idx == k).flatten()
        if len(sel):
            dx = coords.view(1, 1, -1) - centre[sel, 0].view(-1, 1, 1)  # (n_k, 1, S)
            dy = coords.view(1, -1, 1) - centre[sel, 1].view(-1, 1, 1)  # (n_k, S, 1)
            alpha[sel] = (0.5 - _sdf(name, dx, dy, radius[sel].view(-1, 1, 1))).clamp_(0, 1)  # 1-pixel soft edge
    rgb = torch.tensor([meta.COLOUR_RGB[c] for c in meta.COLOUR_NAMES])[colour_idx]  # (N, 3)
    alpha = alpha.unsqueeze(1)  # (N, 1, S, S)
    painted = rgb.view(n, 3, 1, 1) * alpha  # (N, 3, S, S)
    return painted if canvas is None else canvas * (1 - alpha) + painted


def _parse_holdout(holdout) -> tuple[tuple[str, str], ...]:
    out = []
    for item in holdout or ():
        pair = tuple(item.split()) if isinstance(item, str) else tuple(item)
        if len(pair) != 2:
            raise ValueError(f"holdout items are (colour, shape) pairs or strings like 'red circle', got {item!r}")
        colour, shape = pair
        if colour not in meta.COLOUR_NAMES:
            raise ValueError(f"holdout {item!r}: unknown colour {colour!r}; colours are {meta.COLOUR_NAMES}")
        if shape not in meta.SHAPE_NAMES:
            raise ValueError(f"holdout {item!r}: unknown shape {shape!r}; shapes are {meta.SHAPE_NAMES}")
        out.append((colour, shape))
    if len(set(out)) == len(meta.COLOUR_NAMES) * len(meta.SHAPE_NAMES):
        raise ValueError("holdout removes every colour–shape combination: nothing left to train on")
    return tuple(dict.fromkeys(out))


SHAPES_CLASSNAMES = tuple(f"{c} {s}" for c, s in itertools.product(meta.COLOUR_NAMES, meta.SHAPE_NAMES))
_CORNERS = ("top left", "top right", "bottom left", "bottom right")


class Shapes(Dataset):
    """Procedurally rendered scenes with compositional captions.

    One object: "a small red circle in the top left." Two objects (`two_objects=True`), placed
    in two different corners: "a red circle to the left of a large blue square." (the caption's
    relation is always true of the image).

    Args:
        split: "train", "val" or "test" (each split draws its own scenes from `seed`).
        n: number of scenes (default 5000 / 1000 / 2000 for train / val / test).
        seed: seed of the scenes and of the fixed captions.
        holdout: colour–shape combinations never shown in train or val, as pairs
            `("red", "circle")` or strings `"red circle"`; the test split contains every
            combination (in two-object scenes, in either object), so accuracy on held-out
            combinations measures compositional generalisation.
        two_objects: two objects and their spatial relation instead of one object.
        templates: "train", "heldout", a list of format strings, or None (training templates
            for train, held-out ones for val and test).
        random_captions: draw a new caption on every read (default: True for train only).
        image_size: side of the square RGB images (32 by default; >= 16).

    Attributes:
        images: (N, 3, S, S) float in [0, 1].
        labels: (N,) index of the (first) object's "colour shape" in `classnames`.
        colour, shape, position, size: (N,) indices into `COLOUR_NAMES`, `SHAPE_NAMES`,
            `POSITION_NAMES`, `SIZE_NAMES` (first object); with two objects also `colour2`,
            `shape2`, `position2`, `size2` and `relation` (index into `RELATION_NAMES`).
        centre, radius: (N, 2) object centres (x, y) and (N,) radii in pixels (and `centre2`,
            `radius2`).
        classnames: `SHAPES_CLASSNAMES` ("red circle", ... colour-major); `attributes(i)` gives
        the names of item i's attributes. Treat these tensors as read-only.
        holdout_labels, is_heldout: the held-out classes, and which scenes show one.
    """

    classnames = SHAPES_CLASSNAMES
    default_sizes = {"train": 5000, "val": 1000, "test": 2000}
    _ATTRIBUTES = ("colour", "shape", "position", "size", "colour2", "shape2", "position2", "size2", "relation")
    _NAMES = {"colour": meta.COLOUR_NAMES, "shape": meta.SHAPE_NAMES, "position": meta.POSITION_NAMES,
              "size": meta.SIZE_NAMES, "colour2": meta.COLOUR_NAMES, "shape2": meta.SHAPE_NAMES,
              "position2": meta.POSITION_NAMES, "size2": meta.SIZE_NAMES, "relation": meta.RELATION_NAMES}

    def __init__(self, split: str = "train", n: int | None = None, seed: int = 0, holdout=(),
                 two_objects: bool = False, templates=None, random_captions: bool | None = None,
                 image_size: int = 32):
        self.split = _check_split(split)
        self.n = self.default_sizes[split] if n is None else n
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"image_size must be an int >= 16, got {image_size!r}")
        self.holdout = _parse_holdout(holdout)
        self.seed, self.two_objects, self.image_size = seed, two_objects, image_size
        if two_objects:
            self.templates = _resolve_templates(templates, split, meta.SHAPES_PAIR_TEMPLATES_TRAIN,
                                                meta.SHAPES_PAIR_TEMPLATES_HELDOUT, ("{first}", "{second}"))
        else:
            self.templates = _resolve_templates(templates, split, meta.SHAPES_TEMPLATES_TRAIN,
                                                meta.SHAPES_TEMPLATES_HELDOUT, ("{colour}", "{shape}"))
        self.random_captions = split == "train" if random_captions is None else random_captions
        rng = np.random.default_rng([seed, _SPLIT_ID[split], 2 + int(two_objects)])
        self._sample(rng)
        self._fixed_template = rng.integers(len(self.templates), size=self.n)
        self._fixed_mention = rng.random((self.n, 2)) < 0.5  # two objects: say the size or not

    # -- sampling and rendering
    def _allowed_combos(self) -> np.ndarray:
        combos = [(ci, si) for ci, c in enumerate(meta.COLOUR_NAMES) for si, s in enumerate(meta.SHAPE_NAMES)
                  if self.split == "test" or (c, s) not in self.holdout]
        return np.array(combos)  # (K, 2) colour, shape

    def _sample(self, rng: np.random.Generator) -> None:
        n, S = self.n, self.image_size
        combos = self._allowed_combos()
        if self.two_objects and len(combos) < 2:
            raise ValueError("two_objects needs at least two colour–shape combinations left after the holdout")
        pick = rng.integers(len(combos), size=n)
        self.colour, self.shape = torch.from_numpy(combos[pick, 0]), torch.from_numpy(combos[pick, 1])
        self.size = torch.from_numpy(rng.integers(len(meta.SIZE_NAMES), size=n))
        if not self.two_objects:
            self.position = torch.from_numpy(rng.integers(len(meta.POSITION_NAMES), size=n))
        else:
            # Second object: a different colour–shape combination, in a different corner.
            shift = rng.integers(1, len(combos), size=n)
            pick2 = (pick + shift) % len(combos)
            self.colour2, self.shape2 = torch.from_numpy(combos[pick2, 0]), torch.from_numpy(combos[pick2, 1])
            self.size2 = torch.from_numpy(rng.integers(len(meta.SIZE_NAMES), size=n))
            corner = rng.integers(4, size=n)
            corner2 = (corner + rng.integers(1, 4, size=n)) % 4
            pos_index = {p: i for i, p in enumerate(meta.POSITION_NAMES)}
            self.position = torch.tensor([pos_index[_CORNERS[c]] for c in corner])
            self.position2 = torch.tensor([pos_index[_CORNERS[c]] for c in corner2])
            self.relation = torch.from_numpy(self._relations(corner, corner2, rng))
        self.labels = self.colour * len(meta.SHAPE_NAMES) + self.shape  # (N,)
        self.images = self._render(rng, S)
        # Plain-int copies of the attribute indices: reading items stays cheap.
        keys = self._ATTRIBUTES if self.two_objects else self._ATTRIBUTES[:4]
        self._rows = torch.stack([getattr(self, k) for k in keys] + [self.labels], 1).tolist()

    @staticmethod
    def _relations(corner: np.ndarray, corner2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # corners: 0 top left, 1 top right, 2 bottom left, 3 bottom right -> column, row
        col, row, col2, row2 = corner % 2, corner // 2, corner2 % 2, corner2 // 2
        horizontal = np.where(col < col2, 0, 1)  # "to the left of" / "to the right of"
        vertical = np.where(row < row2, 2, 3)  # "above" / "below"
        diagonal = (col != col2) & (row != row2)
        use_h = np.where(diagonal, rng.random(len(corner)) < 0.5, col != col2)
        return np.where(use_h, horizontal, vertical).astype(np.int64)

    def _render(self, rng: np.random.Generator, S: int) -> torch.Tensor:
        centres = torch.tensor(list(meta.POSITION_CENTRES.values()))  # (P, 2) fractions
        radii = torch.tensor(list(meta.SIZE_RADII.values()))  # (sizes,)

        def place(position, size):
            jitter = torch.from_numpy(rng.uniform(-0.04, 0.04, size=(self.n, 2))).float()
            return (centres[position] + jitter) * S, radii[size] * S

        self.centre, self.radius = place(self.position, self.size)  # (N, 2) pixels (x, y), (N,) pixels
        images = render_objects(self.shape, self.colour, self.centre, self.radius, S)
        if self.two_objects:
            self.centre2, self.radius2 = place(self.position2, self.size2)
            images = render_objects(self.shape2, self.colour2, self.centre2, self.radius2, S, canvas=images)
        return images.clamp(0, 1)

    @property
    def holdout_labels(self) -> torch.Tensor:
        """(K,) indices in `classnames` of the held-out colour–shape combinations."""
        return torch.tensor([SHAPES_CLASSNAMES.index(f"{c} {s}") for c, s in self.holdout], dtype=torch.long)

    @property
    def is_heldout(self) -> torch.Tensor:
        """(N,) bool: the scene shows a held-out combination (in either object). Always False
        in train and val; in test it selects the scenes that probe compositional generalisation."""
        held = torch.isin(self.labels, self.holdout_labels)
        if self.two_objects:
            held |= torch.isin(self.colour2 * len(meta.SHAPE_NAMES) + self.shape2, self.holdout_labels)
        return held

    # -- captions
    def attributes(self, i: int) -> dict[str, str]:
        """Names of item i's attributes: colour, shape, position, size (+ colour2, shape2,
        position2, size2, relation for two objects)."""
        row = self._rows[i]
        return {k: self._NAMES[k][j] for k, j in zip(self._ATTRIBUTES, row[:-1])}

    def caption(self, i: int, template: int, mention_size: tuple[bool, bool] = (True, True)) -> str:
        """Item i's caption with template number `template`; for two objects, `mention_size`
        says whether each object's phrase includes its size."""
        a = self.attributes(i)
        if not self.two_objects:
            return self.templates[template].format(**a)

        def phrase(colour, shape, size, say_size):
            return f"{size} {colour} {shape}" if say_size else f"{colour} {shape}"

        return self.templates[template].format(
            first=phrase(a["colour"], a["shape"], a["size"], mention_size[0]), relation=a["relation"],
            second=phrase(a["colour2"], a["shape2"], a["size2"], mention_size[1]))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} items")
        i = int(i) % self.n
        if self.random_captions:  # one draw picks the template and whether each size is said
            draw = int(torch.randint(len(self.templates) * 4, ()))
            template, mention = draw // 4, (bool(draw & 1), bool(draw & 2))
        else:
            template, mention = int(self._fixed_template[i]), tuple(bool(b) for b in self._fixed_mention[i])
        return {"image": self.images[i], "caption": self.caption(i, template, mention),
                "label": self._rows[i][-1], "index": i}

    def __repr__(self) -> str:
        return (f"Shapes(split={self.split!r}, n={self.n}, two_objects={self.two_objects}, "
                f"holdout={list(self.holdout)}, image_size={self.image_size})")


def shapes_dataloaders(tokenizer=None, batch_size: int = 256, seed: int = 0, num_workers: int = 0,
                       **dataset_kwargs) -> tuple[DataLoader, DataLoader, DataLoader]:
    """(train, val, test) loaders over `Shapes` (e.g. `holdout=["red circle"]`, `two_objects=True`)."""
    sets = {s: Shapes(s, seed=seed, **dataset_kwargs) for s in SPLITS}
    return _loaders(sets, tokenizer, batch_size, seed, num_workers)
