"""The evaluation checks: a correct answer passes; typical wrong answers, written as a student
would write them, fail with a message that names the mistake."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmcourse.classroom.checks import evaluation as checks
from mmcourse.classroom.checks.core import CheckFailed


def _message(result) -> str:
    assert not result.passed, "the wrong answer passed the check"
    return result.message


# ------------------------------------------------------------------- zero-shot classifier
def zs_correct(model, tokenizer, classnames, templates):
    with torch.no_grad():
        columns = []
        for c in classnames:
            emb = model.encode_text(**tokenizer([t.format(c) for t in templates]))  # (T, D)
            emb = F.normalize(emb, dim=-1).mean(dim=0)
            columns.append(emb / emb.norm())
        return torch.stack(columns, dim=1)


def zs_rows(model, tokenizer, classnames, templates):
    return zs_correct(model, tokenizer, classnames, templates).T


def zs_raw_mean(model, tokenizer, classnames, templates):
    columns = []
    for c in classnames:
        emb = model.encode_text(**tokenizer([t.format(c) for t in templates])).mean(0)
        columns.append(emb / emb.norm())
    return torch.stack(columns, dim=1)


def zs_no_renorm(model, tokenizer, classnames, templates):
    columns = []
    for c in classnames:
        emb = model.encode_text(**tokenizer([t.format(c) for t in templates]))
        columns.append((emb / emb.norm(dim=-1, keepdim=True)).mean(0))
    return torch.stack(columns, dim=1)


def zs_first_template(model, tokenizer, classnames, templates):
    emb = model.encode_text(**tokenizer([templates[0].format(c) for c in classnames]))
    return F.normalize(emb, dim=-1).T


def zs_wrong_dim(model, tokenizer, classnames, templates):
    means = torch.stack([F.normalize(model.encode_text(**tokenizer([t.format(c) for t in templates])), dim=-1).mean(0)
                         for c in classnames])  # (C, D)
    return F.normalize(means, dim=0).T


def zs_crashes(model, tokenizer, classnames, templates):
    return model.encode_text(tokenizer(templates))  # passes the dict as input_ids


def test_zero_shot_classifier_correct_passes():
    result = checks.check_zero_shot_classifier(zs_correct, raise_on_fail=False)
    assert result.passed, result.text()
    assert "unit-norm columns" in result.message


@pytest.mark.parametrize("wrong,expected", [
    (zs_rows, "(C, D) matrix"),
    (zs_raw_mean, "averaged the raw text embeddings"),
    (zs_no_renorm, "normalise again AFTER averaging"),
    (zs_first_template, "only the first template"),
    (zs_wrong_dim, "wrong dimension"),
])
def test_zero_shot_classifier_wrong_answers_are_named(wrong, expected):
    assert expected in _message(checks.check_zero_shot_classifier(wrong, raise_on_fail=False))


def test_zero_shot_classifier_crash_and_blank():
    assert "raised" in _message(checks.check_zero_shot_classifier(zs_crashes, raise_on_fail=False))

    def blank(model, tokenizer, classnames, templates):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError):
        checks.check_zero_shot_classifier(blank)
    with pytest.raises(CheckFailed, match="only the first template"):
        checks.check_zero_shot_classifier(zs_first_template)


# ------------------------------------------------------------------------------ recall at k
def recall_correct(logits_per_image, k):
    order = torch.argsort(logits_per_image, dim=1, descending=True, stable=True)  # (N, N)
    ranks = (order == torch.arange(len(order))[:, None]).int().argmax(dim=1)  # 0-based
    return (ranks < k).float().mean().item()


def recall_loop(logits_per_image, k):  # a plain loop, ties to the lower index
    hits = 0
    n = logits_per_image.shape[0]
    for i in range(n):
        s = logits_per_image[i]
        rank = sum(1 for j in range(n) if s[j] > s[i] or (s[j] == s[i] and j < i))
        hits += rank < k
    return hits / n


def recall_columns(logits_per_image, k):
    return recall_correct(logits_per_image.T, k)


def recall_le_k(logits_per_image, k):
    order = torch.argsort(logits_per_image, dim=1, descending=True, stable=True)
    ranks = (order == torch.arange(len(order))[:, None]).int().argmax(dim=1)
    return (ranks <= k).float().mean().item()


def recall_one_based_lt(logits_per_image, k):
    order = torch.argsort(logits_per_image, dim=1, descending=True, stable=True)
    ranks = (order == torch.arange(len(order))[:, None]).int().argmax(dim=1) + 1
    return (ranks < k).float().mean().item()


def recall_strict(logits_per_image, k):
    pos = logits_per_image.diag()[:, None]
    return ((logits_per_image > pos).sum(1) < k).float().mean()


def recall_non_strict(logits_per_image, k):
    pos = logits_per_image.diag()[:, None]
    return ((logits_per_image >= pos).sum(1) <= k).float().mean()


def recall_topk(logits_per_image, k):
    top = logits_per_image.topk(k, dim=1).indices
    return (top == torch.arange(len(top))[:, None]).any(1).float().mean()


@pytest.mark.parametrize("fn", [recall_correct, recall_loop])
def test_recall_correct_passes(fn):
    result = checks.check_recall_at_k(fn, raise_on_fail=False)
    assert result.passed, result.text()


@pytest.mark.parametrize("wrong,expected", [
    (recall_columns, "text→image"),
    (recall_le_k, "top k+1"),
    (recall_one_based_lt, "top k-1"),
    (recall_strict, "strictly higher"),
    (recall_non_strict, "scoring >= the correct one"),
    (recall_topk, "torch.topk"),
])
def test_recall_wrong_answers_are_named(wrong, expected):
    assert expected in _message(checks.check_recall_at_k(wrong, raise_on_fail=False))


def test_recall_reference_equals_retrieval_metrics():
    from mmcourse.evaluation import retrieval_metrics

    for case in checks._recall_cases():
        s = case.args[0]
        m = retrieval_metrics(s, torch.eye(s.shape[0]))
        for k in (1, 5):
            assert checks.reference_recall_at_k(s, k) == pytest.approx(m[f"image_to_text_R@{k}"])


# ------------------------------------------------------------------------- template design
@pytest.fixture(scope="module")
def template_task():
    """Images sit at the embedding of the bare class word; the default's extra words with
    large norms blur the classes, so '{}' beats 'a photo of a {}.'."""
    model, tok = checks.StubTextModel(dim=16), checks.HashTokenizer()
    classnames = ["cat", "dog", "bird", "fish", "frog"]
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(5).repeat(20)
    with torch.no_grad():
        centres = F.normalize(model.encode_text(**tok(classnames)), dim=-1)
    image_emb = centres[labels] + 0.25 * torch.randn(100, 16, generator=g)
    return model, tok, image_emb, labels, classnames, ["a photo of a {}."]


def _templates(task, templates):
    return checks.check_templates_beat_default(templates, *task, raise_on_fail=False)


def test_templates_better_set_passes(template_task):
    result = _templates(template_task, ["{}", "the {}"])
    assert result.passed, result.text()
    assert "above the default's" in result.message


@pytest.mark.parametrize("templates,expected", [
    ([], "non-empty list"),
    ("a {}", "non-empty list"),
    (["a photo of a cat."], "exactly one '{}'"),
    (["a photo of a {}."], "these are the default templates"),
    (["a photo of a photo of a {}."], "not more than the default's"),
    ([3], "must be a string"),
])
def test_templates_wrong_answers_are_named(template_task, templates, expected):
    assert expected in _message(_templates(template_task, templates))


# -------------------------------------------------------------------------- modality gap
def gap_correct(image_emb, text_emb):
    i = image_emb / image_emb.norm(dim=-1, keepdim=True)
    t = text_emb / text_emb.norm(dim=-1, keepdim=True)
    return (i.mean(0) - t.mean(0)).norm().item()


def gap_vector(image_emb, text_emb):
    return F.normalize(image_emb, dim=-1).mean(0) - F.normalize(text_emb, dim=-1).mean(0)


def gap_unnormalised(image_emb, text_emb):
    return torch.dist(image_emb.mean(0), text_emb.mean(0))


def gap_squared(image_emb, text_emb):
    d = F.normalize(image_emb, dim=-1).mean(0) - F.normalize(text_emb, dim=-1).mean(0)
    return (d * d).sum()


def gap_pairs(image_emb, text_emb):
    return (F.normalize(image_emb, dim=-1) - F.normalize(text_emb, dim=-1)).norm(dim=-1).mean()


def gap_cosine(image_emb, text_emb):
    a, b = F.normalize(image_emb, dim=-1).mean(0), F.normalize(text_emb, dim=-1).mean(0)
    return 1 - a @ b / (a.norm() * b.norm())


def test_modality_gap_correct_passes():
    result = checks.check_modality_gap(gap_correct, raise_on_fail=False)
    assert result.passed, result.text()


@pytest.mark.parametrize("wrong,expected", [
    (gap_vector, "gap vector"),
    (gap_unnormalised, "did not L2-normalise"),
    (gap_squared, "SQUARED"),
    (gap_pairs, "matching pairs"),
    (gap_cosine, "cosine distance"),
    (lambda i, t: (F.normalize(F.normalize(i, dim=-1).mean(0), dim=0)
                   - F.normalize(F.normalize(t, dim=-1).mean(0), dim=0)).norm(), "normalised the two centroids"),
    (lambda i, t: (F.normalize(i, dim=0).mean(0) - F.normalize(t, dim=0).mean(0)).norm(), "wrong dimension"),
])
def test_modality_gap_wrong_answers_are_named(wrong, expected):
    assert expected in _message(checks.check_modality_gap(wrong, raise_on_fail=False))


def test_checks_are_importable_from_package():
    from mmcourse.classroom.checks import (check_modality_gap, check_recall_at_k, check_zero_shot_classifier)  # noqa: F401
