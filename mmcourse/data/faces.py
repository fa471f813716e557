"""Multimodal sentiment: drawn faces paired with short messages, where the label needs both.

Think of a reply posted under a picture of a face. Faces are happy (smile, arched brows), sad
(frown, brows raised in the middle) or angry (frown, brows lowered in the middle): they differ
in the mouth's curve and in the eyebrows. Messages come in four kinds:

    cheer    "congratulations!"        fits a happy face
    comfort  "get well soon."          fits a sad face
    nice     "you are wonderful."      kind whatever the face
    rude     "nobody likes you."       unkind whatever the face

The label says whether the post is kind (1) or mean (0):

* **confounded part**: happy or sad face with a cheer or comfort message. Kind when message and
  face fit ("congratulations!" + happy, "get well soon." + sad), mean when they do not
  ("congratulations!" under a sad face mocks it). Each message and each face occurs equally often
  with both labels, so a model that sees only one modality is at chance *by construction* — the
  benign confounders of Hateful Memes (Kiela et al., 2020).
* **non-confounded part**: one modality decides. A nice or rude message under a happy or sad
  face (the text decides), or any message under an angry face (always mean: the image decides).

Items are dicts `{"image": (1, S, S) float in [0, 1], "caption": message, "label": 0/1,
"index": int, "confounded": bool}`, so `make_collate` batches them.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from mmcourse.data.loaders import _SPLIT_ID, _check_split

EXPRESSIONS = ("happy", "sad", "angry")
MESSAGE_KINDS = ("cheer", "comfort", "nice", "rude")
MESSAGES = {
    "cheer": ("congratulations!", "so proud of you.", "well done, you did it!", "what a great day for you!"),
    "comfort": ("get well soon.", "sending you hugs.", "so sorry to hear that.", "it will be okay, hang in there."),
    "nice": ("you are wonderful.", "thank you so much!", "have a lovely day.", "you are the best."),
    "rude": ("nobody likes you.", "you are useless.", "go away.", "what a loser."),
}
SENTIMENT_NAMES = ("mean", "kind")


def faces_corpus() -> list[str]:
    """Every message (for building a tokenizer)."""
    return [m for kind in MESSAGE_KINDS for m in MESSAGES[kind]]


def sentiment_label(expression: str, kind: str) -> int:
    """The rule behind the labels: 1 (kind) or 0 (mean) for a face expression and a message kind."""
    if expression not in EXPRESSIONS or kind not in MESSAGE_KINDS:
        raise ValueError(f"expression must be one of {EXPRESSIONS} and kind one of {MESSAGE_KINDS}, "
                         f"got {expression!r}, {kind!r}")
    if expression == "angry":
        return 0
    if kind in ("nice", "rude"):
        return int(kind == "nice")
    return int((kind == "cheer") == (expression == "happy"))


def _segment_distance(px, py, ax, ay, bx, by):
    """Distance of pixel centres (px, py) to the segments a-b; all (N, 1, 1) or (1, S, S)."""
    dx, dy = bx - ax, by - ay
    t = (((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy + 1e-9)).clamp(0, 1)
    return torch.sqrt((px - ax - t * dx) ** 2 + (py - ay - t * dy) ** 2)


def render_faces(expression: torch.Tensor, centre: torch.Tensor, radius: torch.Tensor, curve: torch.Tensor,
                 image_size: int = 32, stroke: float = 1.0) -> torch.Tensor:
    """Draw N line faces, anti-aliased from distances (white on black).

    Args:
        expression: (N,) indices into `EXPRESSIONS`.
        centre: (N, 2) face centres (x, y) in pixels; radius: (N,) in pixels.
        curve: (N,) mouth curvature as a fraction of the radius (> 0), its sign set by the expression.
        image_size: side S; stroke: half the line width in pixels.

    Returns:
        (N, 1, S, S) float images in [0, 1].
    """
    S = image_size
    coords = torch.arange(S, dtype=torch.float32) + 0.5
    px, py = coords.view(1, 1, S), coords.view(1, S, 1)
    cx, cy, r = centre[:, 0].view(-1, 1, 1), centre[:, 1].view(-1, 1, 1), radius.view(-1, 1, 1)
    happy = (expression == 0).float().view(-1, 1, 1)
    angry = (expression == 2).float().view(-1, 1, 1)
    ink = [(torch.sqrt((px - cx) ** 2 + (py - cy) ** 2) - r).abs()]  # the outline
    for side in (-1, 1):  # eyes: dots
        ink.append(torch.sqrt((px - cx - side * 0.35 * r) ** 2 + (py - cy + 0.15 * r) ** 2) - 0.6)
    # mouth: a parabola y = y0 + k (x - cx)^2 over |x - cx| <= 0.45 r; y points down, so a smile
    # (corners up) has k < 0 and a frown k > 0
    k = curve.view(-1, 1, 1) * (1 - 2 * happy) / r  # (N, 1, 1)
    mouth_y = cy + 0.4 * r - k * (0.45 * r) ** 2 / 2 + k * (px - cx) ** 2
    inside = ((px - cx).abs() <= 0.45 * r).float()
    ink.append((py - mouth_y).abs() / torch.sqrt(1 + (2 * k * (px - cx)) ** 2) * inside + 1e3 * (1 - inside))
    # eyebrows: happy level-arched, sad inner ends up, angry inner ends down
    tilt = 0.18 * r * (angry * 1.0 - (1 - angry) * (1 - happy) * 1.0)  # + inner end lower, - inner end higher
    for side in (-1, 1):
        outer_x, inner_x = cx + side * 0.55 * r, cx + side * 0.15 * r
        base = cy - 0.45 * r - 0.05 * r * happy
        ink.append(_segment_distance(px, py, outer_x, base - 0.5 * tilt, inner_x, base + 0.5 * tilt))
    dist = torch.stack([d.expand(len(expression), S, S) for d in ink]).amin(0)  # (N, S, S)
    return (stroke + 0.5 - dist).clamp(0, 1).unsqueeze(1)  # 1-pixel soft edge


class FacesSentiment(Dataset):
    """Face + message pairs labelled kind (1) or mean (0); see the module docstring for the rule.

    Args:
        split: "train", "val" or "test".
        n: number of items (default 4000 / 1000 / 2000).
        seed: seed of the items.
        confounded_fraction: share of items in the confounded part (happy/sad x cheer/comfort).
        image_size: side S of the grey images (>= 24).

    Attributes:
        images: (N, 1, S, S) float in [0, 1]; messages: list of N str; labels: (N,) long;
        expression: (N,) index into `EXPRESSIONS`; kind: (N,) index into `MESSAGE_KINDS`;
        confounded: (N,) bool.
    """

    classnames = SENTIMENT_NAMES
    default_sizes = {"train": 4000, "val": 1000, "test": 2000}

    def __init__(self, split: str = "train", n: int | None = None, seed: int = 0,
                 confounded_fraction: float = 0.5, image_size: int = 32):
        self.split = _check_split(split)
        self.n = self.default_sizes[split] if n is None else n
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if not isinstance(image_size, int) or image_size < 24:
            raise ValueError(f"image_size must be an int >= 24, got {image_size!r}")
        if not 0 <= confounded_fraction <= 1:
            raise ValueError(f"confounded_fraction must be in [0, 1], got {confounded_fraction}")
        self.seed, self.image_size, self.confounded_fraction = seed, image_size, confounded_fraction
        rng = np.random.default_rng([seed, _SPLIT_ID[split], 11])
        n = self.n
        conf = rng.random(n) < confounded_fraction
        # confounded: the four cells happy/sad x cheer/comfort equally often
        expr = np.where(conf, rng.integers(2, size=n), rng.integers(3, size=n))
        kind = np.where(conf, rng.integers(2, size=n), np.where(expr == 2, rng.integers(4, size=n),
                                                                 2 + rng.integers(2, size=n)))
        which = rng.integers(4, size=n)
        self.confounded = torch.from_numpy(conf)
        self.expression, self.kind = torch.from_numpy(expr), torch.from_numpy(kind)
        self.messages = [MESSAGES[MESSAGE_KINDS[k]][w] for k, w in zip(kind, which)]
        self.labels = torch.tensor([sentiment_label(EXPRESSIONS[e], MESSAGE_KINDS[k]) for e, k in zip(expr, kind)])
        S = image_size
        centre = torch.from_numpy(S / 2 + rng.uniform(-0.08, 0.08, size=(n, 2)) * S).float()
        radius = torch.from_numpy(rng.uniform(0.34, 0.42, size=n) * S).float()
        curve = torch.from_numpy(rng.uniform(0.8, 1.4, size=n)).float()
        brightness = torch.from_numpy(rng.uniform(0.6, 1.0, size=(n, 1, 1, 1))).float()
        self.images = render_faces(self.expression, centre, radius, curve, S) * brightness  # (N, 1, S, S)
        self._labels, self._conf = self.labels.tolist(), conf.tolist()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} items")
        i = int(i) % self.n
        return {"image": self.images[i], "caption": self.messages[i], "label": self._labels[i], "index": i,
                "confounded": self._conf[i]}

    def __repr__(self) -> str:
        return f"FacesSentiment(split={self.split!r}, n={self.n}, confounded_fraction={self.confounded_fraction})"
