"""Checks for assignment 14 (a tiny visual assistant).

* `check_assistant_labels`: the instruction-tuning labels, -100 everywhere but the assistant's tokens;
* `check_projector`: LLaVA-1.5's projector, Linear -> GELU -> Linear, on image tokens;
* `check_merge_image_features`: the projected image tokens written over the `<image>` positions;
* `check_where_turns`: the transfer task's new question type, "where is the {shape}?".

Each names the usual mistakes: loss on the user's turns or on everything, the `<|assistant|>` role token
scored, `<|end|>` not scored, only the first or last answer scored, padding found by its id; ReLU for GELU,
no activation, biases dropped; image tokens in reverse order, one image for every row, one token everywhere.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from mmcourse.classroom.checks.core import Case, CheckResult, Variant, check_value, run_check

__all__ = ["check_assistant_labels", "check_projector", "check_merge_image_features", "check_where_turns"]

PAD, SOT, EOT, IMG, USER, ASSISTANT, END = 0, 2, 3, 10, 11, 12, 13


# ----------------------------------------------------------------------------- exercise 1: the labels

def reference_assistant_labels(input_ids, attention_mask, assistant_token_id, end_token_id):
    from mmcourse.models.assistant import assistant_labels

    return assistant_labels(input_ids, attention_mask, assistant_token_id, end_token_id)


def _labels_variant(kind: str):
    def wrong(input_ids, attention_mask, assistant_token_id, end_token_id):
        real = attention_mask != 0
        if kind == "pad_by_id":
            real = input_ids != PAD
        opened = torch.cumsum(input_ids == assistant_token_id, 1)
        is_end = (input_ids == end_token_id).long()
        closed = torch.cumsum(is_end, 1) - is_end
        inside = (opened > closed) & (input_ids != assistant_token_id)
        if kind == "everything":
            keep = real.clone()
            keep[:, 0] = False
        elif kind == "user":
            keep = ~inside & real & (input_ids != assistant_token_id)
            keep[:, 0] = False
        elif kind == "role":
            keep = (opened > closed) & real
        elif kind == "no_end":
            keep = inside & (input_ids != end_token_id) & real
        elif kind in ("first", "last"):
            turn = opened.masked_fill(~inside, 0)
            which = torch.ones_like(turn) if kind == "first" else turn.max(1, keepdim=True).values
            keep = inside & real & (turn == which)
        else:  # pad_by_id
            keep = inside & real
        return input_ids.masked_fill(~keep, -100)
    return wrong


def _labels_cases() -> list[Case]:
    def row(*turns, pad=0, real_zero=False):
        ids = [SOT, IMG, IMG, IMG]
        for q, a in turns:
            ids += [USER, *q, ASSISTANT, *a, END]
        ids += [EOT] + [PAD] * pad
        return ids
    a = row(([20, 21, 22], [30]), ([23, 21], [31, 32]), pad=3)
    b = row(([24, 25, 26, 27], [33]), ([20], [30]), ([22, 23], [34]))
    c = row(([21, 22], [0]), pad=5)  # an answer whose id is 0 (a real token, attention_mask 1)
    out = []
    for rows, label in [([a, b], "2 conversations of 2 and 3 turns, one padded"),
                        ([c, a], "an answer token with id 0, and padding")]:
        L = max(len(r) for r in rows)
        ids = torch.tensor([r + [PAD] * (L - len(r)) for r in rows])
        mask = torch.tensor([[1] * (len(r) - r[::-1].index(EOT)) + [0] * (L - len(r) + r[::-1].index(EOT))
                             for r in rows])
        out.append(Case((ids, mask), {"assistant_token_id": ASSISTANT, "end_token_id": END}, label))
    return out


def check_assistant_labels(assistant_labels: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 14.1: `assistant_labels(input_ids (B, L), attention_mask (B, L), assistant_token_id,
    end_token_id) -> (B, L)` long: the id on the assistant's tokens (answer and `<|end|>`), -100 elsewhere."""
    diagnoses = [
        Variant(_labels_variant("everything"), "every token is scored (plain language modelling): the model is "
                "trained to write the user's questions and the image placeholders too",
                "keep only the tokens between an <|assistant|> token and its <|end|>"),
        Variant(_labels_variant("user"), "the mask is the wrong way round: the user's tokens are scored and the "
                "assistant's answers are not", "score what comes after <|assistant|>, not after <|user|>"),
        Variant(_labels_variant("role"), "the <|assistant|> token itself is scored: it is part of the prompt the "
                "model is given, never something it writes", "start scoring at the token after <|assistant|>"),
        Variant(_labels_variant("no_end"), "<|end|> is not scored: then the model never learns to stop, and "
                "decoding runs on past the answer", "include each turn's <|end|> in the labels"),
        Variant(_labels_variant("first"), "only the first assistant turn is scored: every turn of a conversation "
                "is an answer to learn from", "mark every <|assistant|> ... <|end|> span, not just one"),
        Variant(_labels_variant("last"), "only the last assistant turn is scored: every turn of a conversation "
                "is an answer to learn from", "mark every <|assistant|> ... <|end|> span, not just one"),
        Variant(_labels_variant("pad_by_id"), "padding was found by its id: an answer token whose id is 0 was "
                "dropped too", "find padding with attention_mask == 0"),
    ]
    return run_check("assistant_labels", assistant_labels, reference_assistant_labels, _labels_cases(), diagnoses,
                     success="the assistant's tokens (each answer and its <|end|>) and -100 elsewhere, on {n} cases",
                     raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- exercise 2: the projector

def reference_projector(image_tokens, w1, b1, w2, b2):
    return F.linear(F.gelu(F.linear(image_tokens, w1, b1)), w2, b2)


def _projector_cases() -> list[Case]:
    g = torch.Generator().manual_seed(14)
    out = []
    for B, N, C, E in [(2, 4, 6, 5), (3, 9, 8, 12)]:
        x = torch.randn(B, N, C, generator=g, dtype=torch.float64) * 2
        w1, b1 = torch.randn(E, C, generator=g, dtype=torch.float64), torch.randn(E, generator=g, dtype=torch.float64)
        w2, b2 = torch.randn(E, E, generator=g, dtype=torch.float64), torch.randn(E, generator=g, dtype=torch.float64)
        out.append(Case((x, w1, b1, w2, b2), {}, f"B={B}, N={N} image tokens of C={C} channels -> E={E}"))
    return out


def check_projector(projector: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 14.2: `projector(image_tokens (B, N, C), w1 (E, C), b1 (E,), w2 (E, E), b2 (E,)) -> (B, N, E)`."""
    diagnoses = [
        Variant(lambda x, w1, b1, w2, b2: F.linear(F.relu(F.linear(x, w1, b1)), w2, b2), "ReLU instead of GELU: "
                "LLaVA-1.5's projector (and transformers' LlavaMultiModalProjector) uses GELU",
                "use the Gaussian error linear unit, F.gelu"),
        Variant(lambda x, w1, b1, w2, b2: F.linear(F.linear(x, w1, b1), w2, b2), "no activation between the two "
                "layers: two linear maps in a row are one linear map (LLaVA's first, linear projector)",
                "apply GELU between the layers"),
        Variant(lambda x, w1, b1, w2, b2: F.linear(F.gelu(F.linear(x, w1)), w2), "the biases are missing",
                "an nn.Linear layer is affine: its weight product, then its bias added"),
        Variant(lambda x, w1, b1, w2, b2: F.gelu(F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)), "GELU after the "
                "second layer too: the output must be free to take any sign and size, like a token embedding",
                "the second layer is linear"),
    ]
    return run_check("projector", projector, reference_projector, _projector_cases(), diagnoses,
                     success="Linear -> GELU -> Linear on every image token, on {n} cases", rtol=1e-6, atol=1e-8,
                     raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- exercise 3: splicing

def reference_merge_image_features(inputs_embeds, input_ids, image_features, image_token_id):
    from mmcourse.models.assistant import merge_image_features

    return merge_image_features(inputs_embeds, input_ids, image_features, image_token_id)


def _merge_variant(kind: str):
    def wrong(inputs_embeds, input_ids, image_features, image_token_id):
        out = inputs_embeds.clone()
        for b in range(len(input_ids)):
            pos = (input_ids[b] == image_token_id).nonzero()[:, 0]
            feats = {"reverse": image_features[b].flip(0), "first_image": image_features[0],
                     "first_token": image_features[b, :1].expand(len(pos), -1)}[kind]
            out[b, pos] = feats
        return out
    return wrong


def _merge_cases() -> list[Case]:
    g = torch.Generator().manual_seed(5)
    out = []
    for B, N, E, start in [(2, 3, 4, 1), (3, 4, 5, 2)]:
        L = start + N + 5
        ids = torch.randint(20, 30, (B, L), generator=g)
        ids[:, start : start + N] = IMG
        embeds = torch.randn(B, L, E, generator=g, dtype=torch.float64)
        feats = torch.randn(B, N, E, generator=g, dtype=torch.float64)
        out.append(Case((embeds, ids, feats), {"image_token_id": IMG},
                        f"B={B}, {N} <image> tokens from position {start}, E={E}"))
    return out


def check_merge_image_features(merge: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 14.3: `merge(inputs_embeds (B, L, E), input_ids (B, L), image_features (B, N, E),
    image_token_id) -> (B, L, E)`: row b's N image tokens, in order, at its N `<image>` positions."""
    diagnoses = [
        Variant(_merge_variant("reverse"), "the image tokens are written in reverse order: token n of the image "
                "goes to the n-th <image> position", "keep the order of image_features[b]"),
        Variant(_merge_variant("first_image"), "every row received the first image's tokens", "row b takes "
                "image_features[b]"),
        Variant(_merge_variant("first_token"), "one image token was copied to every <image> position: the other "
                "N - 1 are lost", "write all N tokens of the image, one per position"),
    ]
    return run_check("merge_image_features", merge, reference_merge_image_features, _merge_cases(), diagnoses,
                     success="each row's image tokens, in order, at its <image> positions, the rest unchanged, on {n} cases",
                     raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- exercise 4: a new question type

def reference_where_turns(objects) -> list[tuple[str, str]]:
    from mmcourse.data.conversations import where_turns

    return where_turns(objects)


def _where_cases() -> list[Case]:
    return [Case(([("red", "square", "top left", "small"), ("blue", "cross", "bottom right", "large")],), {},
                 "two objects"),
            Case(([("cyan", "circle", "bottom left", "large"), ("yellow", "triangle", "top right", "small"),
                   ("magenta", "cross", "top left", "large")],), {}, "three objects"),
            Case(([("green", "square", "bottom right", "small")],), {}, "one object")]


def check_where_turns(where_turns: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 14.4: `where_turns(objects) -> [(question, answer), ...]`, one per object, in the scene's order:
    ("where is the {shape}?", "{corner}")."""
    diagnoses = [
        Variant(lambda objs: [(f"where is the {s}?", f"in the {k}") for c, s, k, z in objs], "the answer is a "
                "phrase: exact match needs the corner name alone ('top left')", "answer with the corner only"),
        Variant(lambda objs: [(f"where is the {c} {s}?", k) for c, s, k, z in objs], "the question names the colour "
                "too: the new type asks by shape alone, as 'what colour is the circle?' does",
                "ask by the shape word only, as the lesson's other shape questions do"),
    ]
    return run_check("where_turns", where_turns, reference_where_turns, _where_cases(), diagnoses,
                     success="one 'where is the ...?' turn per object, answered with its corner, on {n} scenes",
                     raise_on_fail=raise_on_fail)
