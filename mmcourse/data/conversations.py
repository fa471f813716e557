"""Conversations about Shapes scenes for a visual assistant (LLaVA-style instruction data).

Scenes are `ShapesVQA` scenes (one to three objects in distinct corners, all colours and shapes
different). Each item is one image and a conversation of `turns` question-answer pairs drawn
from the scene's ground truth, and a caption of the whole scene for stage-1 alignment::

    caption: "a small red circle in the top left and a large blue square in the bottom right."
    turns:   [("what colour is the circle?", "red"), ("how many shapes are there?", "two"), ...]

Question types: "colour", "count", "relation" (as `ShapesVQA`), "exists" split into
"exists_yes" (a present object) and "exists_no" (an absent one: half the time its colour and its
shape are both in the scene, on different objects, POPE's "adversarial" kind). LLaVA-style data
asks mostly about what is in the image: `negatives=False` leaves "exists_no" out, and the model
learns that "is there ...?" is answered "yes" — the hallucination POPE measures.

The chat template (the course's own, `chat_text`)::

    [SOT] <image> <|user|> what colour is the circle ? <|assistant|> red <|end|> <|user|> ... [EOT]

`<image>` is one placeholder in the text; the model's processor expands it to one id per image
token (as Hugging Face's LLaVA processor does) and the model writes the projected image tokens
at those positions.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import Dataset

from mmcourse.data import zero_shot_metadata as meta
from mmcourse.data.vqa import _CORNERS, _NEIGHBOUR, COUNT_NAMES, QUESTION_TEMPLATES, ShapesVQA, vqa_corpus

IMAGE_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, END_TOKEN = "<image>", "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TOKENS = (IMAGE_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, END_TOKEN)
TURN_TYPES = ("colour", "count", "relation", "exists_yes", "exists_no")
CONTEXT_LENGTH = 48  # tokens of a 3-turn conversation with one <image> placeholder, [SOT] and [EOT]


def object_phrase(colour: str, shape: str, corner: str, size: str) -> str:
    return f"a {size} {colour} {shape} in the {corner}"


def scene_caption(objects) -> str:
    """A caption naming every object, left to right then top to bottom: "a small red circle in the
    top left and a large blue square in the bottom right." Objects are (colour, shape, corner, size)."""
    order = sorted(objects, key=lambda o: _CORNERS.index(o[2]))
    return " and ".join(object_phrase(*o) for o in order) + "."


def relation_answers(objects) -> list[tuple[str, str]]:
    """Every (question, answer) "what is {relation} the {shape}?" that the scene answers."""
    at = {_CORNERS.index(o[2]): o for o in objects}
    out = []
    for (relation, ref), ans in _NEIGHBOUR.items():
        if ref in at and ans in at:
            out.append((QUESTION_TEMPLATES["relation"].format(relation=relation, shape=at[ref][1]), at[ans][1]))
    return out


def scene_turn(objects, kind: str, rng: np.random.Generator, banned=()) -> tuple[str, str] | None:
    """One (question, answer) of type `kind` about the scene, or None when the scene has none."""
    if kind == "colour":
        c, s = objects[rng.integers(len(objects))][:2]
        return QUESTION_TEMPLATES["colour"].format(shape=s), c
    if kind == "count":
        return QUESTION_TEMPLATES["count"], COUNT_NAMES[len(objects) - 1]
    if kind == "relation":
        options = relation_answers(objects)
        return options[rng.integers(len(options))] if options else None
    if kind == "exists_yes":
        c, s = objects[rng.integers(len(objects))][:2]
        return QUESTION_TEMPLATES["exists"].format(colour=c, shape=s), "yes"
    if kind == "exists_no":
        return absent_question(objects, rng, adversarial=bool(rng.random() < 0.5), banned=banned)
    raise ValueError(f"unknown turn type {kind!r}; types are {TURN_TYPES}")


def absent_objects(objects, adversarial: bool, banned=()) -> list[tuple[str, str]]:
    """Colour-shape pairs not in the scene: with `adversarial`, those whose colour and shape are
    both in the scene (on different objects), else any other pair; `banned` pairs left out."""
    present = {(o[0], o[1]) for o in objects}
    colours, shapes = {o[0] for o in objects}, {o[1] for o in objects}
    pairs = [(c, s) for c in meta.COLOUR_NAMES for s in meta.SHAPE_NAMES
             if (c, s) not in present and (c, s) not in banned]
    if adversarial:
        pairs = [(c, s) for c, s in pairs if c in colours and s in shapes]
    return pairs


def absent_question(objects, rng, adversarial: bool, banned=()) -> tuple[str, str] | None:
    pairs = absent_objects(objects, adversarial, banned) or absent_objects(objects, False, banned)
    c, s = pairs[rng.integers(len(pairs))]
    return QUESTION_TEMPLATES["exists"].format(colour=c, shape=s), "no"


class ShapesConversations(Dataset):
    """Images of `ShapesVQA` scenes, each with a caption and a conversation of `turns` turns.

    Args:
        split, n, seed, holdout, image_size: as `ShapesVQA` (held-out colour-shape pairs appear in
            no train/val scene nor question).
        turns: question-answer pairs per conversation (distinct questions, types drawn uniformly
            from `types` among those the scene answers).
        types: turn types to draw from (default all of `TURN_TYPES`).
        negatives: False leaves "exists_no" out of `types`.

    Items: {"image": (3, S, S), "caption": str, "turns": list of (question, answer), "index": int}.
    """

    def __init__(self, split: str = "train", n: int = 2000, seed: int = 0, holdout=(), turns: int = 3,
                 types=TURN_TYPES, negatives: bool = True, image_size: int = 32):
        if not isinstance(turns, int) or turns < 1:
            raise ValueError(f"turns must be an int >= 1, got {turns!r}")
        unknown = [t for t in types if t not in TURN_TYPES]
        if unknown:
            raise ValueError(f"unknown turn types {unknown}; types are {TURN_TYPES}")
        self.types = tuple(t for t in types if negatives or t != "exists_no")
        if not self.types:
            raise ValueError("no turn types left to draw from")
        self.scenes = ShapesVQA(split, n=n, seed=seed, holdout=holdout, image_size=image_size)
        self.images, self.objects = self.scenes.images, self.scenes.objects
        banned = set() if split == "test" else set(self.scenes.holdout)
        rng = np.random.default_rng([seed, 17, int(negatives)])
        self.captions = [scene_caption(o) for o in self.objects]
        self.conversations = []
        for objs in self.objects:
            chosen: dict[str, str] = {}
            for _ in range(4 * turns):
                turn = scene_turn(objs, self.types[rng.integers(len(self.types))], rng, banned)
                if turn is not None:
                    chosen.setdefault(*turn)
                if len(chosen) == turns:
                    break
            self.conversations.append(list(chosen.items()))

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "caption": self.captions[i], "turns": self.conversations[i], "index": i}


def chat_text(turns, image: bool = True) -> str:
    """The course's chat template as text (without [SOT]/[EOT], which the tokenizer adds)."""
    parts = [IMAGE_TOKEN] if image else []
    for question, answer in turns:
        parts += [USER_TOKEN, question, ASSISTANT_TOKEN]
        if answer is not None:
            parts += [answer, END_TOKEN]
    return " ".join(parts)


def conversation_corpus() -> list[str]:
    """Every question, answer and caption phrase the data can produce (for the tokenizer)."""
    phrases = [object_phrase(c, s, p, z) + " and" for c in meta.COLOUR_NAMES for s in meta.SHAPE_NAMES
               for p in _CORNERS for z in meta.SIZE_NAMES]
    return vqa_corpus() + phrases + list(COUNT_NAMES) + ["yes", "no"]


@functools.lru_cache(maxsize=2)
def assistant_tokenizer(context_length: int = CONTEXT_LENGTH):
    """The course's word-level tokenizer (`build_tokenizer`) over captions, questions and answers,
    with the four chat tokens added as special tokens (never split, skipped when decoding)."""
    from tokenizers import AddedToken, Tokenizer

    from mmcourse.data.tokenizer import _wrap, build_tokenizer, caption_corpus

    base = build_tokenizer(caption_corpus() + conversation_corpus(), context_length=context_length)
    backend = Tokenizer.from_str(base.hf.backend_tokenizer.to_str())
    backend.add_special_tokens([AddedToken(t, normalized=False) for t in CHAT_TOKENS])
    return _wrap(backend, context_length)


def scene_texts(dataset: ShapesConversations) -> list[str]:
    """The language model's text (stage 0): each scene's caption followed by its first question and
    the answer ("a large red circle in the top left. what colour is the circle? red."), so the model
    learns to answer from a description earlier in its context."""
    return [f"{caption} {turns[0][0]} {turns[0][1]}." for caption, turns in zip(dataset.captions, dataset.conversations)]


class TextDataset(Dataset):
    """Plain texts as items {"text": str} (for `chat_collate`)."""

    def __init__(self, texts):
        self.texts = list(texts)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict:
        return {"text": self.texts[i]}


def chat_collate(tokenizer, kind: str = "chat"):
    """A collate function for the three stages: "text" (items {"text"}), "caption"
    (`<image>` then the caption) or "chat" (`chat_text(turns)`); returns {"image" (B, 3, S, S) when
    items have one, "input_ids" (B, L), "attention_mask" (B, L), "text": list of str}."""
    if kind not in ("text", "caption", "chat"):
        raise ValueError(f"kind must be 'text', 'caption' or 'chat', got {kind!r}")

    def collate(items: list[dict]) -> dict:
        if kind == "text":
            texts = [it["text"] for it in items]
        elif kind == "caption":
            texts = [f"{IMAGE_TOKEN} {it['caption']}" for it in items]
        else:
            texts = [chat_text(it["turns"]) for it in items]
        enc = tokenizer(texts)
        if (enc["attention_mask"][:, -1] == 1).any():
            raise ValueError(f"a text is longer than the tokenizer's context_length={tokenizer.context_length}")
        longest = int(enc["attention_mask"].sum(1).max())  # drop columns that are padding in every row
        batch = {"input_ids": enc["input_ids"][:, :longest], "attention_mask": enc["attention_mask"][:, :longest],
                 "text": texts}
        if kind != "text":
            batch["image"] = torch.stack([it["image"] for it in items])
        return batch

    return collate


def where_turns(objects) -> list[tuple[str, str]]:
    """The assignment's new question type: one ("where is the {shape}?", corner) per object, in order."""
    return [(f"where is the {shape}?", corner) for colour, shape, corner, size in objects]


# The course's template as a Jinja chat template for `transformers`' `apply_chat_template`: messages
# [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}, {"role": "assistant", ...}],
# the assistant's text inside {% generation %} (so `return_assistant_tokens_mask=True` marks it).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}" + IMAGE_TOKEN + " {% endif %}{% endfor %}"
    + USER_TOKEN + " {% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }} "
    "{% endif %}{% endfor %}"
    "{% else %}" + ASSISTANT_TOKEN + " {% generation %}{{ message['content'][0]['text'] }} " + END_TOKEN
    + "{% endgeneration %} {% endif %}"
    "{% endfor %}{% if add_generation_prompt %}" + ASSISTANT_TOKEN + "{% else %}{{ eos_token }}{% endif %}")


def chat_template_messages(turns) -> list[dict]:
    """A conversation as `transformers` chat messages, the image in the first user message."""
    messages = []
    for i, (question, answer) in enumerate(turns):
        content = ([{"type": "image"}] if i == 0 else []) + [{"type": "text", "text": question}]
        messages.append({"role": "user", "content": content})
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages
