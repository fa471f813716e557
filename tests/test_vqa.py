"""ShapesVQA: answers true of their scenes, balanced so the question alone gives nothing away,
held-out combinations kept out of training; the question-prior baseline and per-type accuracy."""
from collections import Counter

import pytest
import torch

from mmcourse.data import zero_shot_metadata as meta
from mmcourse.data import (ANSWERS, QUESTION_TYPES, ShapesVQA, make_collate, per_type_accuracy,
                           question_prior_predictions, vqa_corpus)
from mmcourse.data.tokenizer import default_tokenizer

HOLDOUT = ("red circle", "blue square")
CHANCE = {"colour": 1 / 6, "exists": 1 / 2, "count": 1 / 3, "relation": 1 / 3}
ROW, COL = {"top left": 0, "top right": 0, "bottom left": 1, "bottom right": 1}, \
    {"top left": 0, "top right": 1, "bottom left": 0, "bottom right": 1}


@pytest.fixture(scope="module")
def train():
    return ShapesVQA("train", n=3000, holdout=HOLDOUT)


@pytest.fixture(scope="module")
def test_split():
    return ShapesVQA("test", n=2000, holdout=HOLDOUT)


def true_answer(question: str, objects) -> str:
    """The answer, computed from the scene's objects by reading the question (a second,
    independent implementation of the generator's semantics)."""
    words = question.rstrip("?").split()
    if question.startswith("how many"):
        return ("one", "two", "three")[len(objects) - 1]
    if question.startswith("what colour"):
        return next(c for c, s, _, _ in objects if s == words[-1])
    if question.startswith("is there"):
        return "yes" if (words[-2], words[-1]) in {(c, s) for c, s, _, _ in objects} else "no"
    ref = next(o for o in objects if o[1] == words[-1])
    rel = " ".join(words[2:-2])
    for c, s, pos, _ in objects:
        same_col, same_row = COL[pos] == COL[ref[2]], ROW[pos] == ROW[ref[2]]
        if (rel == "above" and same_col and ROW[pos] < ROW[ref[2]]) or (rel == "below" and same_col and ROW[pos] > ROW[ref[2]]) \
                or (rel == "to the left of" and same_row and COL[pos] < COL[ref[2]]) \
                or (rel == "to the right of" and same_row and COL[pos] > COL[ref[2]]):
            return s
    raise AssertionError(f"no answer for {question!r} in {objects}")


def test_every_answer_is_true_of_its_scene(train, test_split):
    for ds in (train, test_split):
        for i in range(len(ds)):
            assert ANSWERS[ds.answers[i]] == true_answer(ds.questions[i], ds.objects[i]), (ds.questions[i], ds.objects[i])


def test_scenes_have_distinct_colours_shapes_and_corners(train):
    for objects in train.objects:
        assert 1 <= len(objects) <= 3
        for k in range(3):
            assert len({o[k] for o in objects}) == len(objects)


def test_images_show_the_objects_in_their_corners(train):
    for i in range(50):
        for colour, _, corner, _ in train.objects[i]:
            x, y = (int(v * 32) for v in meta.POSITION_CENTRES[corner])
            patch = train.images[i, :, y - 2:y + 3, x - 2:x + 3].flatten(1).T  # (25, 3) pixels near the centre
            distance = (patch - torch.tensor(meta.COLOUR_RGB[colour])).abs().amax(1).min()
            assert distance < 0.05, (i, colour, corner)  # some pixel there is the object's colour


def test_holdout_never_in_training_scenes_or_questions(train, test_split):
    held = {tuple(h.split()) for h in HOLDOUT}
    for q, objects in zip(train.questions, train.objects):
        assert not held & {(c, s) for c, s, _, _ in objects}
        assert not any(f"{c} {s}" in q for c, s in held)
    assert not train.has_heldout.any()
    assert 0.1 < test_split.has_heldout.float().mean() < 0.5


def test_balanced_question_prior_is_at_chance(train, test_split):
    pred = question_prior_predictions(train.questions, train.answers, test_split.questions)
    acc = per_type_accuracy(pred, test_split.answers, test_split.qtype)
    for name, chance in CHANCE.items():
        assert abs(acc[name] - chance) < 0.06, (name, acc[name], chance)


def test_balanced_answers_are_uniform_given_each_question():
    ds = ShapesVQA("train", n=6000, seed=3)
    by_question: dict[str, Counter] = {}
    for q, a in zip(ds.questions, ds.answers.tolist()):
        by_question.setdefault(q, Counter())[a] += 1
    counts = by_question["how many shapes are there?"]
    assert len(counts) == 3 and max(counts.values()) / sum(counts.values()) < 0.4
    yes_share = [c[ANSWERS.index("yes")] / sum(c.values()) for q, c in by_question.items() if q.startswith("is there")]
    assert 0.45 < sum(yes_share) / len(yes_share) < 0.55


def test_imbalanced_questions_let_the_prior_win():
    train, test = ShapesVQA("train", n=3000, balanced=False), ShapesVQA("test", n=1000, balanced=False)
    acc = per_type_accuracy(question_prior_predictions(train.questions, train.answers, test.questions),
                            test.answers, test.qtype)
    assert acc["all"] > 0.65 and all(acc[t] > CHANCE[t] + 0.2 for t in CHANCE), acc


def test_deterministic_and_splits_differ():
    a, b, c = ShapesVQA("val", n=50), ShapesVQA("val", n=50), ShapesVQA("test", n=50)
    assert a.questions == b.questions and torch.equal(a.images, b.images)
    assert a.questions != c.questions


def test_items_collate_with_the_course_tokenizer():
    ds = ShapesVQA("val", n=8)
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["caption"] == ds.questions[0]
    assert item["qtype"] == ds.qtype[0] and item["label"] == ds.answers[0]
    batch = make_collate(default_tokenizer())([ds[i] for i in range(8)])
    assert batch["image"].shape == (8, 3, 32, 32) and torch.equal(batch["label"], ds.answers)
    assert set(vqa_corpus()) >= set(ds.questions)
    with pytest.raises(IndexError):
        ds[8]


@pytest.mark.parametrize("kwargs, match", [({"n": 0}, "n must"), ({"bias": 1.5}, "bias"), ({"image_size": 8}, "image_size"),
                                            ({"holdout": ["purple circle"]}, "unknown colour"), ({"split": "dev"}, "unknown split")])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShapesVQA(**kwargs)


def test_question_prior_predictions_against_counting_by_hand():
    qs = ["a?", "a?", "a?", "b?", "b?"]
    answers = torch.tensor([3, 3, 1, 2, 0])
    # "a?": 3 twice; "b?": tie between 0 and 2 -> the smaller; unseen "c?": most frequent overall (3)
    assert question_prior_predictions(qs, answers, ["a?", "b?", "c?"]).tolist() == [3, 0, 3]
    with pytest.raises(ValueError, match="as many"):
        question_prior_predictions(qs, answers[:2], ["a?"])


def test_per_type_accuracy_against_a_loop():
    g = torch.Generator().manual_seed(0)
    pred, answers, qtype = (torch.randint(0, 3, (200,), generator=g) for _ in range(3))
    acc = per_type_accuracy(pred, answers, qtype)
    for t, name in enumerate(QUESTION_TYPES[:3]):
        rows = [i for i in range(200) if qtype[i] == t]
        assert acc[name] == pytest.approx(sum(int(pred[i] == answers[i]) for i in rows) / len(rows))
    assert "relation" not in acc and acc["all"] == pytest.approx((pred == answers).float().mean().item())
    with pytest.raises(ValueError, match="one shape"):
        per_type_accuracy(pred, answers[:5], qtype)
