"""Visual question answering on Shapes scenes, generated with their ground-truth answers.

A scene holds one to three objects in distinct corners, all of different colours and different
shapes (so "the circle" names one object). Four question types, one phrasing each:

    colour    "what colour is the circle?"            -> a colour
    exists    "is there a red circle?"                -> yes / no
    count     "how many shapes are there?"            -> one / two / three
    relation  "what is above the circle?"             -> a shape (strictly above: same column)

`ANSWERS` is the fixed answer vocabulary (15 answers); a model is a 15-way classifier.

**Balanced by construction.** Real VQA data sets have strong language priors ("is there ...?" is
usually "yes"; Goyal et al., 2017, balanced VQA v2 against them). Here each item draws its question
and its answer first, then builds a scene that makes the answer true, so with `balanced=True`
the answer is uniform given the exact question string: a model that reads only the question
cannot beat chance. `balanced=False` draws answers with the skew real data sets have (a favourite
answer per question with probability `bias`), which a question-only model exploits.

**Held-out combinations** (as lesson 06): colour-shape pairs in `holdout` never appear in train
or val scenes nor questions; test scenes may contain them (`has_heldout`).

Items are dicts `{"image": (3, S, S) float in [0, 1], "caption": question str, "label": answer
index, "index": int, "qtype": question-type index}`, so `make_collate` batches them.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mmcourse.data import zero_shot_metadata as meta
from mmcourse.data.loaders import _SPLIT_ID, _check_split
from mmcourse.data.shapes import _parse_holdout, render_objects

QUESTION_TYPES = ("colour", "exists", "count", "relation")
COUNT_NAMES = ("one", "two", "three")
ANSWERS = meta.COLOUR_NAMES + meta.SHAPE_NAMES + ("yes", "no") + COUNT_NAMES
VQA_RELATIONS = ("above", "below", "to the left of", "to the right of")
QUESTION_TEMPLATES = {
    "colour": "what colour is the {shape}?",
    "exists": "is there a {colour} {shape}?",
    "count": "how many shapes are there?",
    "relation": "what is {relation} the {shape}?",
}
_CORNERS = ("top left", "top right", "bottom left", "bottom right")  # corner k: column k % 2, row k // 2
# The corner holding the answer object for (relation, corner of the reference object), if any.
_NEIGHBOUR = {("above", 2): 0, ("above", 3): 1, ("below", 0): 2, ("below", 1): 3,
              ("to the left of", 1): 0, ("to the left of", 3): 2, ("to the right of", 0): 1,
              ("to the right of", 2): 3}


def vqa_corpus() -> list[str]:
    """Every question the generator can ask (for building a tokenizer)."""
    out = [QUESTION_TEMPLATES["count"]]
    for s in meta.SHAPE_NAMES:
        out.append(QUESTION_TEMPLATES["colour"].format(shape=s))
        out += [QUESTION_TEMPLATES["exists"].format(colour=c, shape=s) for c in meta.COLOUR_NAMES]
        out += [QUESTION_TEMPLATES["relation"].format(relation=r, shape=s) for r in VQA_RELATIONS]
    return out


class ShapesVQA(Dataset):
    """Questions about rendered Shapes scenes, with ground-truth answers.

    Args:
        split: "train", "val" or "test" (each split draws its own items from `seed`).
        n: number of items (default 6000 / 1000 / 2000).
        seed: seed of the items.
        balanced: answers uniform given each question (True), or skewed towards a favourite
            answer per question with probability `bias` (False).
        bias: for `balanced=False`, the probability of the favourite answer.
        holdout: colour-shape combinations kept out of train and val (pairs or "red circle").
        image_size: side S of the RGB images (>= 16).

    Attributes:
        images: (N, 3, S, S) float in [0, 1]; questions: list of N str; answers: (N,) long
        indices into `ANSWERS`; qtype: (N,) long indices into `QUESTION_TYPES`; n_objects: (N,)
        long; objects: per item a list of (colour, shape, corner, size) names; has_heldout: (N,)
        bool, the scene shows a held-out combination.
    """

    answer_names = ANSWERS
    question_types = QUESTION_TYPES
    default_sizes = {"train": 6000, "val": 1000, "test": 2000}

    def __init__(self, split: str = "train", n: int | None = None, seed: int = 0, balanced: bool = True,
                 bias: float = 0.7, holdout=(), image_size: int = 32):
        self.split = _check_split(split)
        self.n = self.default_sizes[split] if n is None else n
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"image_size must be an int >= 16, got {image_size!r}")
        if not 0 <= bias <= 1:
            raise ValueError(f"bias must be a probability in [0, 1], got {bias}")
        self.balanced, self.bias, self.seed, self.image_size = balanced, bias, seed, image_size
        self.holdout = _parse_holdout(holdout)
        self._banned = set() if split == "test" else set(self.holdout)
        rng = np.random.default_rng([seed, _SPLIT_ID[split], 7 + int(balanced)])
        # A fixed favourite answer per question (used only when balanced=False).
        fav = np.random.default_rng([seed, 99])
        self._fav_colour = {s: meta.COLOUR_NAMES[fav.integers(6)] for s in meta.SHAPE_NAMES}
        self._fav_shape = {s: meta.SHAPE_NAMES[(meta.SHAPE_NAMES.index(s) + 1 + fav.integers(3)) % 4]
                           for s in meta.SHAPE_NAMES}
        rows = [self._item(rng) for _ in range(self.n)]
        self.questions = [r[0] for r in rows]
        self.answers = torch.tensor([ANSWERS.index(r[1]) for r in rows])  # (N,)
        self.qtype = torch.tensor([QUESTION_TYPES.index(r[2]) for r in rows])  # (N,)
        self.objects = [[tuple(str(v) for v in o) for o in r[3]] for r in rows]
        self.n_objects = torch.tensor([len(o) for o in self.objects])  # (N,)
        self.has_heldout = torch.tensor([any((c, s) in self.holdout for c, s, _, _ in o) for o in self.objects])
        self.images = self._render(rng)  # (N, 3, S, S)
        self._qtype = self.qtype.tolist()
        self._answers = self.answers.tolist()

    # -- sampling: question and answer first, then a scene that makes the answer true
    def _skewed(self, rng, favourite, options):
        if not self.balanced and rng.random() < self.bias:
            return favourite
        return options[rng.integers(len(options))]

    def _others(self, rng, k, colours_used, shapes_used, avoid=()):
        """k more objects with new colours and new shapes, none a banned or avoided combination."""
        for _ in range(200):
            colours = [c for c in rng.permutation(meta.COLOUR_NAMES) if c not in colours_used][:k]
            shapes = [s for s in rng.permutation(meta.SHAPE_NAMES) if s not in shapes_used][:k]
            pairs = list(zip(colours, shapes))
            if not any(p in self._banned or p in avoid for p in pairs):
                return pairs
        raise ValueError("could not place the objects: the holdout removes too many colour-shape combinations")

    def _allowed_colours(self, shape):
        return [c for c in meta.COLOUR_NAMES if (c, shape) not in self._banned]

    def _item(self, rng):
        qtype = QUESTION_TYPES[rng.integers(4)]
        extra = int(rng.integers(3))  # objects besides the ones the question needs
        if qtype == "colour":
            shape = meta.SHAPE_NAMES[rng.integers(4)]
            colour = self._skewed(rng, self._fav_colour[shape], self._allowed_colours(shape))
            if (colour, shape) in self._banned:
                colour = self._allowed_colours(shape)[rng.integers(len(self._allowed_colours(shape)))]
            objs = [(colour, shape)] + self._others(rng, extra, {colour}, {shape})
            question, answer = QUESTION_TEMPLATES["colour"].format(shape=shape), colour
        elif qtype == "exists":
            combos = [(c, s) for c in meta.COLOUR_NAMES for s in meta.SHAPE_NAMES if (c, s) not in self._banned]
            colour, shape = combos[rng.integers(len(combos))]
            answer = self._skewed(rng, "yes", ("yes", "no"))
            if answer == "yes":
                objs = [(colour, shape)] + self._others(rng, extra, {colour}, {shape})
            elif rng.random() < 0.5:  # both words present, on different objects: needs binding
                c2 = self._others(rng, 1, {colour}, {shape}, avoid={(colour, shape)})[0]
                objs = [(colour, c2[1]), (c2[0], shape)]
                if any(o in self._banned for o in objs):
                    objs = self._others(rng, 2, set(), set(), avoid={(colour, shape)})
            else:
                objs = self._others(rng, extra + 1, set(), set(), avoid={(colour, shape)})
            question = QUESTION_TEMPLATES["exists"].format(colour=colour, shape=shape)
        elif qtype == "count":
            answer = self._skewed(rng, "two", COUNT_NAMES)
            objs = self._others(rng, COUNT_NAMES.index(answer) + 1, set(), set())
            question = QUESTION_TEMPLATES["count"]
        else:
            shape = meta.SHAPE_NAMES[rng.integers(4)]
            relation = VQA_RELATIONS[rng.integers(4)]
            others = [s for s in meta.SHAPE_NAMES if s != shape]
            answer = self._skewed(rng, self._fav_shape[shape], others)
            ref_corner = [k for (r, k) in _NEIGHBOUR if r == relation][rng.integers(2)]
            ans_corner = _NEIGHBOUR[(relation, ref_corner)]
            pair = self._others(rng, 2, set(), set(meta.SHAPE_NAMES) - {shape, answer})  # colours for both
            ref, ans = (pair[0] if pair[0][1] == shape else pair[1]), (pair[0] if pair[0][1] == answer else pair[1])
            third = self._others(rng, min(extra, 1), {ref[0], ans[0]}, {shape, answer})
            free = [k for k in range(4) if k not in (ref_corner, ans_corner)]
            corners = [ref_corner, ans_corner] + [free[rng.integers(2)]] * len(third)
            sizes = rng.integers(2, size=len(corners))
            objs = [(c, s, _CORNERS[k], meta.SIZE_NAMES[z]) for (c, s), k, z in zip([ref, ans] + third, corners, sizes)]
            return QUESTION_TEMPLATES["relation"].format(relation=relation, shape=shape), answer, qtype, objs
        corners = rng.permutation(4)[:len(objs)]
        sizes = rng.integers(2, size=len(objs))
        objs = [(c, s, _CORNERS[k], meta.SIZE_NAMES[z]) for (c, s), k, z in zip(objs, corners, sizes)]
        return question, answer, qtype, objs

    def _render(self, rng) -> torch.Tensor:
        S = self.image_size
        images = torch.zeros(self.n, 3, S, S)
        for slot in range(3):
            idx = [i for i, o in enumerate(self.objects) if len(o) > slot]
            if not idx:
                continue
            objs = [self.objects[i][slot] for i in idx]
            shape = torch.tensor([meta.SHAPE_NAMES.index(o[1]) for o in objs])
            colour = torch.tensor([meta.COLOUR_NAMES.index(o[0]) for o in objs])
            centre = torch.tensor([meta.POSITION_CENTRES[o[2]] for o in objs])
            jitter = torch.from_numpy(rng.uniform(-0.04, 0.04, size=(len(idx), 2))).float()
            radius = torch.tensor([meta.SIZE_RADII[o[3]] for o in objs]) * S
            rows = torch.tensor(idx)
            images[rows] = render_objects(shape, colour, (centre + jitter) * S, radius, S, canvas=images[rows])
        return images.clamp(0, 1)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} items")
        i = int(i) % self.n
        return {"image": self.images[i], "caption": self.questions[i], "label": self._answers[i], "index": i,
                "qtype": self._qtype[i]}

    def __repr__(self) -> str:
        return (f"ShapesVQA(split={self.split!r}, n={self.n}, balanced={self.balanced}, "
                f"holdout={list(self.holdout)})")


def question_prior_predictions(train_questions: Sequence[str], train_answers: torch.Tensor,
                               test_questions: Sequence[str]) -> torch.Tensor:
    """The best a model that reads only the question can do: for each test question, the answer
    most often given to exactly that question in training (ties: the smallest answer index;
    unseen questions: the most frequent training answer overall).

    Args:
        train_questions: N_train question strings; train_answers: (N_train,) long answer indices.
        test_questions: N_test question strings.

    Returns:
        (N_test,) long predicted answer indices.
    """
    if len(train_questions) != len(train_answers) or not len(train_questions):
        raise ValueError(f"need as many training answers as questions (>0), got {len(train_questions)} "
                         f"questions and {len(train_answers)} answers")
    counts: dict[str, Counter] = {}
    for q, a in zip(train_questions, train_answers.tolist()):
        counts.setdefault(q, Counter())[a] += 1
    overall = Counter(train_answers.tolist())

    def best(counter: Counter) -> int:
        top = max(counter.values())
        return min(a for a, c in counter.items() if c == top)

    return torch.tensor([best(counts.get(q, overall)) for q in test_questions], dtype=torch.long)


def per_type_accuracy(pred: torch.Tensor, answers: torch.Tensor, qtype: torch.Tensor,
                      names: Sequence[str] = QUESTION_TYPES) -> dict[str, float]:
    """Accuracy (fraction in [0, 1]) for each question type and "all".

    Args:
        pred, answers, qtype: (N,) long tensors (predicted answers, true answers, question types).
        names: the question-type names, indexed by `qtype`.

    Returns:
        `{name: accuracy for the items of that type, ..., "all": overall accuracy}`; types with
        no items are left out.
    """
    if not (pred.shape == answers.shape == qtype.shape) or pred.dim() != 1:
        raise ValueError(f"pred, answers and qtype must be (N,) tensors of one shape, got "
                         f"{tuple(pred.shape)}, {tuple(answers.shape)}, {tuple(qtype.shape)}")
    correct = (pred == answers).float()
    out = {name: correct[qtype == t].mean().item() for t, name in enumerate(names) if (qtype == t).any()}
    out["all"] = correct.mean().item()
    return out
