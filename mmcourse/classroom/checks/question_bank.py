"""Data only: the checkable part and the model answer of every written question in assignments
01–06 (logic in `questions.py`). A written answer is still collected for the teacher; the learner
working alone answers the checkable part, gets an explanation for the option they chose, and can
then reveal the model answer.

Each entry: `prompt`, then either `options` (letter -> (text, explanation)) with the `correct`
letter, or a `number` with its `tolerance` and `wrong_numbers` (value -> explanation); and the
`model_answer` shown by `reveal`.
"""
from __future__ import annotations

import math

QUESTIONS: dict[str, dict] = {
    "01.4": {
        "prompt": "What are the row sums of ∂L/∂S, and what do they say?",
        "options": {
            "a": ("0 in every row",
                  "yes: the softmax row sums to 1 and the positive contributes −1, so the pull on the positive "
                  "exactly balances the total push on the negatives"),
            "b": ("1/(Nτ) in every row",
                  "that would be the softmax alone; the positive's −[i = j] term cancels it"),
            "c": ("−1/(Nτ) in every row", "that is the positive's term alone; the negatives' pushes add up to +1/(Nτ)"),
            "d": ("they depend on the similarities in the row",
                  "each entry does, but their sum does not: Σ_j (p_ij − [i = j]) = 1 − 1"),
        },
        "correct": "a",
        "model_answer": "Every row of (softmax(S/τ) − I)/(Nτ) sums to zero: the softmax row sums to 1 and the "
                        "identity removes 1 at the positive. The gradient pulls the positive with exactly the "
                        "strength it pushes all negatives together, so the loss redistributes similarity "
                        "within a row rather than inflating it.",
    },
    "02.1": {
        "prompt": "On the lesson's row (0.80 positive, 0.70 and 0.55 hard negatives), τ goes from 0.07 down "
                  "to 0.01. What happens to the push on the negatives?",
        "options": {
            "a": ("it spreads evenly over the six negatives",
                  "that is what happens at LARGE τ, where s/τ → 0 and the softmax is uniform"),
            "b": ("it concentrates on the hardest negative (0.70), and the total push shrinks",
                  "yes: p_j is a softmax of s/τ, so the 0.15 lead of 0.70 over 0.55 becomes 15 logits; and "
                  "since p_positive → 1 the row is solved and the whole gradient shrinks"),
            "c": ("it concentrates on the easiest negative (−0.40)",
                  "the push on negative j is p_j/τ: the most similar negative has the largest p_j"),
            "d": ("nothing changes: τ only rescales the loss",
                  "τ changes the softmax itself, not only its scale; the shares move with τ"),
        },
        "correct": "b",
        "model_answer": "Dividing by a small τ magnifies differences between similarities, so the softmax becomes "
                        "sharp: p_0 → 1 and the loss → 0, and the push on the negatives (∝ p_j) goes almost "
                        "entirely to the hardest negative while the total push shrinks. As τ grows, s/τ → 0, the "
                        "softmax is uniform (1/7 each), the loss → log 7 ≈ 1.95 and every negative gets 1/6 of "
                        "the push whatever its similarity.",
    },
    "03.4": {
        "prompt": "You multiply the text tower's features by a random rotation R (an orthogonal matrix). Which "
                  "head design can undo it exactly, without touching the image side?",
        "options": {
            "a": ("one head per tower: the text head W becomes W Rᵀ",
                  "yes: W Rᵀ (R x) = W x, so the embeddings do not change; a tower's basis is its own business"),
            "b": ("a shared head: the shared W becomes W Rᵀ",
                  "that also changes what the shared head does to the IMAGE features, which were not rotated"),
            "c": ("both designs equally", "a shared head must serve both towers, so it cannot absorb a rotation of one"),
            "d": ("neither: a rotation changes the cosine similarities",
                  "a rotation keeps lengths and angles, and a linear head can absorb it"),
        },
        "correct": "a",
        "model_answer": "The towers produce features in unrelated spaces (ReLU outputs vs LayerNorm outputs, "
                        "different scales and meanings of coordinates). A tower's basis is arbitrary: a rotation "
                        "is absorbed by its own head (W Rᵀ), but a shared head ties both towers to one coordinate "
                        "system, so training must first align the features themselves. A shared head also needs "
                        "equal widths, and saves only one D × E matrix.",
    },
    "04.4": {
        "prompt": "In which situation can ONE shared projection head not be used at all?",
        "options": {
            "a": ("an image tower of width 768 and a text tower of width 512",
                  "yes: one D × E matrix cannot take inputs of two different widths (most released CLIPs, "
                  "e.g. ViT-B/32 with 768 and 512)"),
            "b": ("both towers trained from scratch, together",
                  "that is lesson 04's setting, where a shared head worked as well as two"),
            "c": ("a batch of 128 pairs", "the batch size has nothing to do with the head's shape"),
            "d": ("a learned temperature", "the temperature scales the logits after the heads"),
        },
        "correct": "a",
        "model_answer": "Trained from scratch and together, the towers can put their features into the same "
                        "coordinates before a shared head, so sharing did not hurt on digits. It hurts, or is "
                        "impossible, when the towers cannot adapt: different widths (768 vs 512), towers "
                        "pre-trained separately and frozen or lightly tuned (LiT), or a tower that must also "
                        "serve other tasks. Separate heads cost one small matrix and remove these constraints.",
    },
    "05.1": {
        "prompt": "Two templates give a class unit-length embeddings at 90° to each other. How long is their "
                  "mean (before renormalising)?",
        "number": math.sqrt(2) / 2,
        "tolerance": 0.01,
        "wrong_numbers": {
            1.0: "the mean of unit vectors is only of length 1 when they all point the same way",
            0.5: "that is half the length of ONE vector; the two add up to a vector of length √2 (Pythagoras)",
            0.0: "they would cancel only if they pointed in opposite directions (180°)",
            math.sqrt(2): "√2 is the length of the SUM of the two vectors; the mean divides it by 2",
        },
        "model_answer": "Before averaging: raw text embeddings have different lengths, so without normalising, "
                        "templates with long embeddings would dominate. After: the mean of unit vectors is "
                        "shorter than 1 (here √2/2 ≈ 0.71; the more the templates disagree, the shorter), so "
                        "without renormalising, classes with consistent templates would get larger scores — the "
                        "scores would no longer be cosine similarities on one scale.",
    },
    "04.5": {
        "prompt": "The smallest value of the soft-target CLIP loss on a batch with labels [0, 0, 0, 1, 2, 2].",
        "number": (3 * math.log(3) + 2 * math.log(2)) / 6,
        "tolerance": 0.005,
        "wrong_numbers": {
            0.0: "a cross-entropy reaches 0 only against a one-hot target; its minimum is the entropy of the target",
            math.log(6): "ln 6 is the loss at chance, when every caption gets the same probability",
            (math.log(3) + math.log(2)) / 3: "you averaged ln n_c over the classes; the loss averages over the pairs",
        },
        "model_answer": "The minimum of a cross-entropy H(target, p) over p is the entropy of the target, reached at "
                        "p = target. Row i's target is uniform over the n_{y_i} same-class captions, with entropy "
                        "ln n_{y_i}; averaged over the pairs and both directions that is exactly exercise 3's floor: "
                        "(3 ln 3 + ln 1 + 2 ln 2) / 6 ≈ 0.780 nats. The soft targets do not remove the floor; they "
                        "stop the loss from pushing same-class captions apart on the way to it.",
    },
    "06.1": {
        "prompt": "At inference you double `logit_scale` (halve the temperature). What changes?",
        "options": {
            "a": ("zero-shot accuracy", "every score of an image is multiplied by the same positive number: the "
                  "argmax cannot move"),
            "b": ("R@5", "the order of the captions is kept, so every rank, and every R@K, is unchanged"),
            "c": ("the softmax probabilities, and so the calibration",
                  "yes: the order is kept but the softmax gets more peaked, so the confidence (and e.g. the "
                  "expected calibration error) changes"),
            "d": ("the ranking of the captions", "multiplying by a positive number keeps every order"),
        },
        "correct": "c",
        "model_answer": "For one image every class or caption score is multiplied by the same positive number, "
                        "which keeps their order: argmax and ranks stay, so accuracy and R@K cannot change. What "
                        "changes is how peaked the softmax is — the confidence — and therefore calibration. "
                        "During training the temperature does matter: it sets how strongly the loss focuses on "
                        "the hardest negatives.",
    },
}
