"""FacesSentiment: the labelling rule, unimodal baselines at chance on the confounded part by
construction, and faces whose expressions differ where they should."""
from collections import Counter

import pytest
import torch

from mmcourse.data import (EXPRESSIONS, MESSAGE_KINDS, MESSAGES, FacesSentiment, faces_corpus, make_collate,
                           render_faces, sentiment_label)
from mmcourse.data.tokenizer import default_tokenizer


@pytest.fixture(scope="module")
def train():
    return FacesSentiment("train", n=4000)


@pytest.fixture(scope="module")
def test_split():
    return FacesSentiment("test", n=2000)


@pytest.mark.parametrize("expression, kind, label", [
    ("happy", "cheer", 1), ("sad", "comfort", 1), ("happy", "comfort", 0), ("sad", "cheer", 0),  # confounded
    ("happy", "nice", 1), ("sad", "nice", 1), ("happy", "rude", 0), ("sad", "rude", 0),  # text decides
    ("angry", "cheer", 0), ("angry", "comfort", 0), ("angry", "nice", 0), ("angry", "rude", 0),  # image decides
])
def test_sentiment_rule(expression, kind, label):
    assert sentiment_label(expression, kind) == label


def test_labels_follow_the_rule_and_parts_are_as_documented(train):
    for i in range(len(train)):
        e, k = EXPRESSIONS[train.expression[i]], MESSAGE_KINDS[train.kind[i]]
        assert train.labels[i] == sentiment_label(e, k)
        assert train.messages[i] in MESSAGES[k]
        assert bool(train.confounded[i]) == (e != "angry" and k in ("cheer", "comfort"))
    assert 0.45 < train.confounded.float().mean() < 0.55


def majority_accuracy(train, test, key, rows):
    """Accuracy on test[rows] of the best predictor that sees only `key` (a unimodal Bayes rule
    estimated on train): the most frequent training label for each value of the key."""
    votes: dict = {}
    for k, y in zip(key(train), train.labels.tolist()):
        votes.setdefault(k, Counter())[y] += 1
    pred = [votes[k].most_common(1)[0][0] for k in key(test)]
    correct = [p == y for p, y, r in zip(pred, test.labels.tolist(), rows.tolist()) if r]
    return sum(correct) / len(correct)


def test_unimodal_rules_are_at_chance_on_the_confounded_part_only(train, test_split):
    text = lambda ds: ds.messages  # noqa: E731
    face = lambda ds: ds.expression.tolist()  # noqa: E731
    conf = test_split.confounded
    for key in (text, face):
        assert abs(majority_accuracy(train, test_split, key, conf) - 0.5) < 0.05
        assert majority_accuracy(train, test_split, key, ~conf) > 0.65
    both = lambda ds: list(zip(ds.messages, ds.expression.tolist()))  # noqa: E731
    assert majority_accuracy(train, test_split, both, conf) == 1.0


def test_each_message_and_face_has_both_labels_equally_often_when_confounded(train):
    conf = train.confounded
    for values in (train.expression, train.kind):
        for v in values[conf].unique():
            labels = train.labels[conf & (values == v)].float()
            assert abs(labels.mean().item() - 0.5) < 0.06


def test_expressions_differ_in_mouth_and_brows():
    centre, radius, curve = torch.tensor([[16.0, 16.0]] * 3), torch.full((3,), 12.0), torch.ones(3)
    happy, sad, angry = render_faces(torch.arange(3), centre, radius, curve)[:, 0]
    mouth, brows = (slice(19, 26), slice(6, 26)), (slice(8, 13), slice(6, 26))
    assert (happy[mouth] - sad[mouth]).abs().sum() > 5 and torch.equal(sad[mouth], angry[mouth])
    assert (sad[brows] - angry[brows]).abs().sum() > 3
    for face in (happy, sad, angry):  # faces are mirror-symmetric and lie in [0, 1]
        torch.testing.assert_close(face, face.flip(-1), atol=0.05, rtol=0)
        assert 0 <= face.min() and face.max() <= 1
    # a smile's corners are higher (smaller y) than its middle; a frown's lower
    def corner_minus_middle(face):
        rows = torch.arange(32.0)[:, None]
        ink = face[mouth[0], :]
        y = (ink * rows[mouth[0]]).sum(0) / ink.sum(0).clamp(min=1e-6)
        return (y[12] - y[16]).item()
    assert corner_minus_middle(happy) < -0.5 < 0.5 < corner_minus_middle(sad)


def test_items_collate_and_are_deterministic():
    a, b = FacesSentiment("val", n=16), FacesSentiment("val", n=16)
    assert a.messages == b.messages and torch.equal(a.images, b.images)
    item = a[3]
    assert item["image"].shape == (1, 32, 32) and item["caption"] == a.messages[3] and item["label"] == a.labels[3]
    assert item["confounded"] == bool(a.confounded[3])
    batch = make_collate(default_tokenizer())([a[i] for i in range(16)])
    assert batch["image"].shape == (16, 1, 32, 32) and torch.equal(batch["label"], a.labels)
    assert set(faces_corpus()) >= set(a.messages)


@pytest.mark.parametrize("kwargs, match", [({"n": 0}, "n must"), ({"confounded_fraction": 2}, "confounded_fraction"),
                                            ({"image_size": 16}, "image_size"), ({"split": "x"}, "unknown split")])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FacesSentiment(**kwargs)
    with pytest.raises(ValueError, match="expression must be"):
        sentiment_label("bored", "nice")
