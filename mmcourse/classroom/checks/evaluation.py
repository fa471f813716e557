"""Checks for the evaluation assignments (lessons 05 and 06).

- `check_zero_shot_classifier(fn)`: `fn(model, tokenizer, classnames, templates) -> (D, C)`.
- `check_recall_at_k(fn)`: `fn(logits_per_image, k) -> float`, image→text R@k.
- `check_templates_beat_default(templates, ...)`: a template set that beats the default.
- `check_modality_gap(fn)`: `fn(image_emb, text_emb) -> float`.

The zero-shot check runs the student's function on a tiny stub model (a bag of hashed words
whose embeddings have very different norms), so normalisation mistakes change the answer.
"""
from __future__ import annotations

import zlib
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from mmcourse.evaluation import analysis, retrieval, zero_shot
from mmcourse.evaluation import zero_shot as evaluate
from mmcourse.classroom.checks.core import Case, CheckResult, Property, Variant, finish, run_check


# --------------------------------------------------------------------- stub model for checks
class HashTokenizer:
    """Splits on spaces and hashes each word to an id in [1, vocab); pads with 0."""

    def __init__(self, vocab_size: int = 101):
        self.vocab_size = vocab_size

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        ids = [[1 + zlib.crc32(w.encode()) % (self.vocab_size - 1) for w in t.split()] or [1] for t in texts]
        length = max(len(i) for i in ids)
        input_ids = torch.zeros(len(ids), length, dtype=torch.long)
        mask = torch.zeros(len(ids), length, dtype=torch.long)
        for row, i in enumerate(ids):
            input_ids[row, :len(i)] = torch.tensor(i)
            mask[row, :len(i)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}


class StubTextModel(torch.nn.Module):
    """`encode_text` = mean of word vectors whose lengths vary from 0.1 to 5, so raw text
    embeddings have very different norms (as real, unnormalised ones do)."""

    def __init__(self, dim: int = 5, vocab_size: int = 101, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        scale = 0.1 + 4.9 * torch.rand(vocab_size, 1, generator=g)
        self.words = torch.nn.Parameter(F.normalize(torch.randn(vocab_size, dim, generator=g), dim=-1) * scale)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    normalize: bool = False) -> torch.Tensor:
        mask = (input_ids > 0).float() if attention_mask is None else attention_mask.float()
        x = (self.words[input_ids] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)  # (B, D)
        return F.normalize(x, dim=-1) if normalize else x


# ------------------------------------------------------------------- zero-shot classifier
def _class_template_embeddings(model, tokenizer, classnames, templates) -> torch.Tensor:
    """(C, T, D) raw text embeddings, for the wrong answers below."""
    with torch.no_grad():
        return torch.stack([model.encode_text(**tokenizer([t.format(c) for t in templates])) for c in classnames])


def _reference_classifier(model, tokenizer, classnames, templates):
    return evaluate.build_zero_shot_classifier(model, tokenizer, list(classnames), list(templates))


def _no_template_norm(model, tokenizer, classnames, templates):
    return F.normalize(_class_template_embeddings(model, tokenizer, classnames, templates).mean(1), dim=-1).T


def _no_renorm(model, tokenizer, classnames, templates):
    return F.normalize(_class_template_embeddings(model, tokenizer, classnames, templates), dim=-1).mean(1).T


def _no_norm_at_all(model, tokenizer, classnames, templates):
    return _class_template_embeddings(model, tokenizer, classnames, templates).mean(1).T


def _renorm_wrong_dim(model, tokenizer, classnames, templates):
    mean = F.normalize(_class_template_embeddings(model, tokenizer, classnames, templates), dim=-1).mean(1)  # (C, D)
    return F.normalize(mean, dim=0).T


def _first_template(model, tokenizer, classnames, templates):
    return _reference_classifier(model, tokenizer, classnames, templates[:1])


def _transposed(model, tokenizer, classnames, templates):
    return _reference_classifier(model, tokenizer, classnames, templates).T


def _columns_not_unit(fn) -> bool:
    model, tok = StubTextModel(), HashTokenizer()
    w = fn(model, tok, ["cat", "dog", "bird", "fish"], ["a photo of a {}.", "a {} again and again"])
    w = torch.as_tensor(w).detach().float()
    return w.shape == (5, 4) and not torch.allclose(w.norm(dim=0), torch.ones(4), atol=1e-4)


def check_zero_shot_classifier(student: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Check `student(model, tokenizer, classnames, templates) -> (D, C)` against
    `mmcourse.evaluation.zero_shot.build_zero_shot_classifier` on a stub model (D = 5)."""
    model, tok = StubTextModel(), HashTokenizer()
    three = ("a photo of the digit {}.", "a blurry {}", "someone wrote {} on a very long strip of paper")
    cases = [
        Case(args=(model, tok, ["zero", "one", "two"], ["a photo of the digit {}."]),
             label="3 classes, 1 template"),
        Case(args=(model, tok, ["zero", "one", "two", "three"], list(three)), label="4 classes, 3 templates"),
        Case(args=(model, tok, [str(i) for i in range(12)], list(three[:2])), label="12 classes, 2 templates"),
    ]
    diagnoses = [
        Variant(_transposed, "you returned a (C, D) matrix: the classifier is (D, C), one column per class",
                ('the classifier is (D, C), one COLUMN per class, so that image_emb @ classifier is (N, C)', 'check the shape you return')),
        Variant(_first_template, "only the first template is used: the classifier must average over all templates",
                ('prompt ensembling averages over ALL templates', 'look at how many templates your loop uses')),
        Variant(_no_template_norm, "you averaged the raw text embeddings: normalise each template's embedding "
                "BEFORE taking the mean", ('long or unusual templates have larger norms and would dominate the average', "normalise each template's embedding before the mean")),
        Variant(_no_renorm, "the columns are not unit length: normalise again AFTER averaging over templates",
                ('the mean of unit vectors is shorter than 1', 'a class vector must have length 1 again after the average')),
        Variant(_no_norm_at_all, "no normalisation at all: normalise each template embedding, average, normalise again",
                ('cosine similarity needs unit vectors: before the average AND after it', 'two normalisations, one on each side of the mean')),
        Variant(_renorm_wrong_dim, "you normalised along the wrong dimension: each CLASS embedding (column) "
                "must have length 1", ('each class embedding must have length 1', "which axis of the (C, D) tensor holds one class's vector?")),
        Property(_columns_not_unit, "the columns of your classifier do not have length 1",
                 "normalise every class embedding after the average"),
    ]
    return run_check("zero_shot_classifier", student, _reference_classifier, cases, diagnoses,
                     success="equals build_zero_shot_classifier on {n} cases: shape (D, C), unit-norm columns, "
                             "templates ensembled", raise_on_fail=raise_on_fail)


# ------------------------------------------------------------------------------ recall at k
RECALL_KS = (1, 2, 3, 5)


def reference_recall_at_k(logits_per_image: torch.Tensor, k: int) -> float:
    """Image→text R@k with caption i the match of image i; ties ranked by caption index."""
    n = logits_per_image.shape[0]
    ranks, _ = retrieval.retrieval_ranks(logits_per_image.float(), torch.eye(n))  # sims @ I = sims
    return (ranks < k).float().mean().item()


def _rank_strict(sims: torch.Tensor) -> torch.Tensor:  # ties in the image's favour
    pos = sims.diagonal().unsqueeze(1)
    return (sims > pos).sum(1)


def _rank_non_strict(sims: torch.Tensor) -> torch.Tensor:  # ties against the image
    pos = sims.diagonal().unsqueeze(1)
    return (sims >= pos).sum(1) - 1


def _over_ks(fn: Callable[[torch.Tensor, int], Any]) -> Callable[[torch.Tensor], list]:
    def run(logits_per_image):
        return [fn(logits_per_image, k) for k in RECALL_KS]
    return run


_RECALL_VARIANTS = [
    (lambda s, k: reference_recall_at_k(s.T, k),
     "you ranked images for each caption (text→image): rank the captions in each ROW for its image",
     "row i of logits_per_image holds image i's scores for every caption"),
    (lambda s, k: reference_recall_at_k(s, k + 1),
     "off by one: you counted the top k+1 (0-based rank <= k); R@k means 0-based rank < k",
     "with 0-based ranks, R@1 counts only rank 0"),
    (lambda s, k: reference_recall_at_k(s, k - 1) if k > 1 else 0.0,
     "off by one: you counted only the top k-1 (1-based rank < k); R@k means 1-based rank <= k",
     "with 1-based ranks, R@1 counts rank 1"),
    (lambda s, k: (_rank_strict(s) < k).float().mean().item(),
     "ties: you counted only captions scoring strictly higher, so a tie always goes to the correct caption",
     ('tied captions with a LOWER index come first', 'a stable sort keeps tied items in their original order')),
    (lambda s, k: (_rank_non_strict(s) < k).float().mean().item(),
     "ties: you counted every caption scoring >= the correct one, so a tie always goes against it",
     ('tied captions with a LOWER index come first', 'a stable sort keeps tied items in their original order')),
    (lambda s, k: torch.tensor([i in s[i].topk(k).indices.tolist() for i in range(s.shape[0])]).float().mean().item(),
     "ties: torch.topk picks among tied scores in no fixed order",
     ('torch.topk picks among equal scores in no fixed order', 'a STABLE sort keeps tied captions in index order')),
]


def _recall_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(8, 8, generator=g) + 1.2 * torch.eye(8)  # no ties, a mix of hits and misses
    # Small integer scores: many exact ties, the correct caption sitting inside tie groups.
    tied = torch.tensor([
        [2., 2., 2., 1., 0., 2., 0., 1.],
        [2., 2., 2., 0., 1., 1., 2., 0.],
        [1., 2., 1., 1., 2., 0., 1., 2.],
        [2., 1., 0., 1., 1., 1., 0., 1.],
        [0., 2., 2., 1., 2., 2., 1., 2.],
        [1., 0., 1., 1., 1., 1., 2., 1.],
        [2., 1., 2., 2., 0., 1., 2., 2.],
        [1., 1., 1., 2., 1., 0., 1., 1.],
    ])
    return [Case(args=(noisy,), label="8 images x 8 captions, no ties"),
            Case(args=(tied,), label="8 x 8 with tied scores")]


def check_recall_at_k(student: Callable[[torch.Tensor, int], Any], raise_on_fail: bool = True) -> CheckResult:
    """Check `student(logits_per_image, k) -> float` (image→text R@k, caption i matches image i)
    for k in 1, 2, 3, 5, against `mmcourse.evaluation.retrieval.retrieval_metrics`' ranking."""
    if not callable(student):
        return run_check("recall_at_k", student, _over_ks(reference_recall_at_k), [], raise_on_fail=raise_on_fail)
    diagnoses = [Variant(_over_ks(wrong), message, hint) for wrong, message, hint in _RECALL_VARIANTS]
    return run_check("recall_at_k", _over_ks(student), _over_ks(reference_recall_at_k), _recall_cases(), diagnoses,
                     success="equals open_clip's image_to_text_R@k for k = 1, 2, 3, 5 on {n} cases, ties included",
                     raise_on_fail=raise_on_fail)


# ------------------------------------------------------------------------- template design
def check_templates_beat_default(templates: Any, model: torch.nn.Module, tokenizer: Callable,
                                 image_emb: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str],
                                 default_templates: Sequence[str], raise_on_fail: bool = True) -> CheckResult:
    """Pass if zero-shot accuracy with `templates` is strictly above that with `default_templates`.

    Args:
        templates: the student's template set (format strings with one `{}`).
        model, tokenizer: the trained CLIP and its tokenizer.
        image_emb: (N, D) image embeddings of the evaluation images.
        labels: (N,) their classes.
        classnames: C class names.
        default_templates: the set to beat.
    """
    name = "templates_beat_default"

    def fail(message: str, hint: str = "") -> CheckResult:
        return finish(CheckResult(name, False, message, hint), raise_on_fail)

    if isinstance(templates, str) or not isinstance(templates, (list, tuple)) or len(templates) == 0:
        return fail("expected a non-empty list of template strings, e.g. ['a drawing of the digit {}.']",
                    "put each template in quotes inside a list")
    if not all(isinstance(t, str) for t in templates):
        return fail("every template must be a string such as 'a photo of the digit {}.'")
    missing = [t for t in templates if t.count("{}") != 1]
    if missing:
        return fail(f"template {missing[0]!r} must contain exactly one '{{}}' where the class name goes",
                    "without it every class gets the same text and the classifier cannot tell them apart")
    if sorted(templates) == sorted(default_templates):
        return fail("these are the default templates: design your own set", "change or add phrasings")

    def acc(ts):
        w = evaluate.build_zero_shot_classifier(model, tokenizer, list(classnames), list(ts))
        return evaluate.accuracy(evaluate.zero_shot_logits(image_emb, w), labels, topk=(1,))["top1"]

    try:
        ours, base = acc(templates), acc(default_templates)
    except ValueError as err:
        return fail(f"your templates could not be used: {err}")
    if ours <= base:
        return fail(f"your {len(templates)} templates reach {ours:.1%} zero-shot accuracy, not more than the "
                    f"default's {base:.1%}", "phrase captions the way the training captions are phrased, "
                    "and use several templates so that ensembling averages out the quirks of each")
    return finish(CheckResult(name, True, f"your {len(templates)} templates reach {ours:.1%} zero-shot accuracy, "
                                          f"above the default's {base:.1%}"), raise_on_fail)


# -------------------------------------------------------------------------- modality gap
def _reference_gap(image_emb, text_emb):
    return analysis.modality_gap(image_emb, text_emb)


def _gap_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    shift = torch.tensor([2.0, 0.0, 0.0, 0.0])
    img = (torch.randn(6, 4, generator=g) + shift) * torch.rand(6, 1, generator=g) * 3
    txt = (torch.randn(6, 4, generator=g) - shift) * torch.rand(6, 1, generator=g) * 3
    img2 = torch.randn(5, 3, generator=g) * 4 + 1
    txt2 = torch.randn(9, 3, generator=g) - 1
    return [Case(args=(img, txt), label="6 image and 6 text embeddings, D=4"),
            Case(args=(img2, txt2), label="5 image and 9 text embeddings, D=3")]


def check_modality_gap(student: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Check `student(image_emb, text_emb) -> float` against `mmcourse.evaluation.analysis.modality_gap`."""
    n = lambda x: F.normalize(x, dim=-1)  # noqa: E731
    diagnoses = [
        Variant(lambda i, t: n(i).mean(0) - n(t).mean(0),
                "you returned the gap vector: the modality gap is its length (a single number)",
                ('the modality gap is a length, a single number', 'the length of the difference of the two centroids')),
        Variant(lambda i, t: (i.mean(0) - t.mean(0)).norm(),
                "you did not L2-normalise the embeddings first: CLIP compares them on the unit sphere",
                ('CLIP compares embeddings on the unit sphere', 'normalise each embedding before the centroids')),
        Variant(lambda i, t: (n(i).mean(0) - n(t).mean(0)).pow(2).sum(),
                "you returned the SQUARED distance between the centroids", ('a distance is the square root of the squared distance', 'the Euclidean norm')),
        Variant(lambda i, t: (n(i) - n(t)).norm(dim=-1).mean(),
                "you averaged the distances of matching pairs: the gap is the distance between the two centroids",
                "first average each modality's embeddings, then take the distance"),
        Variant(lambda i, t: (n(n(i).mean(0)) - n(n(t).mean(0))).norm(),
                "you normalised the two centroids: the gap is measured between the means of unit vectors, which are "
                "shorter than 1 (how much shorter says how spread out each modality is)",
                "normalise each embedding, not the averages"),
        Variant(lambda i, t: (F.normalize(i, dim=0).mean(0) - F.normalize(t, dim=0).mean(0)).norm(),
                "you normalised along the wrong dimension: each EMBEDDING (a row) must have length 1, not each "
                "coordinate (a column)", "which axis of an (N, D) tensor holds one embedding?"),
        Variant(lambda i, t: 1 - F.cosine_similarity(n(i).mean(0), n(t).mean(0), dim=0),
                "you returned a cosine distance between the centroids: the gap is their Euclidean distance",
                ('the gap is a Euclidean distance', 'the length of the difference of the two centroids')),
    ]
    return run_check("modality_gap", student, _reference_gap, _gap_cases(), diagnoses,
                     fallback_hint=("work it out on paper for two images and two texts in 2-D, then print your "
                                    "function's intermediate results on the same input",
                                    "three steps: unit vectors, one centroid per modality, the length of their "
                                    "difference"),
                     success="equals mmcourse.evaluation.analysis.modality_gap on {n} cases, including unequal counts",
                     raise_on_fail=raise_on_fail)
