"""Evaluating a CLIP model the way the field does: zero-shot classification, retrieval, probes.

Reads top to bottom:

1. `build_zero_shot_classifier` turns class names into a (D, C) weight matrix by prompt
   ensembling (open_clip's `build_zero_shot_classifier`); `zero_shot_logits` and `accuracy`
   score images with it (open_clip's `zero_shot.run` / `accuracy`).
2. `retrieval_metrics` ranks captions for every image and images for every caption and reports
   open_clip's `get_clip_metrics` numbers (`image_to_text_R@1`, `text_to_image_mean_rank`, ...),
   also when an image has several captions (COCO / Flickr30k style).
3. `encode_dataset` embeds a whole data loader; `linear_probe` fits scikit-learn's logistic
   regression on the frozen image embeddings (CLIP paper, section 3.2); `ImageClassifier` with
   `classification_loss` is the image tower + linear head that `mmcourse.training.loop.fit` trains from
   scratch (supervised baseline) or fine-tunes from the zero-shot head.

Embeddings are (N, D) tensors. Every function whose result assumes unit vectors
(`zero_shot_logits`, `retrieval_ranks`, `retrieval_metrics`, `linear_probe`) L2-normalises its
inputs itself with `mmcourse.norms.unit_vectors`, in float32: raw `encode_image` output gives the
same numbers as normalised output (ranks are cosine-similarity ranks), and an all-zero embedding
stays zero (cosine 0 with everything) instead of becoming NaN in float16.
Bad input raises `ValueError` naming the problem.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from mmcourse.norms import compute_dtype, l2_normalize, unit_vectors

Template = str | Callable[[str], str]

RECALL_KS = (1, 5, 10)  # open_clip reports R@1, R@5 and R@10


# ---------------------------------------------------------------------------- input checks
def _check_embeddings(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf: check the model and its inputs")


def _unit(x: torch.Tensor, name: str, dim: int = -1, dtype: torch.dtype | None = None) -> torch.Tensor:
    # unit_vectors for embeddings that may arrive as integers or in float16: at least float32 out
    x = x if x.is_floating_point() else x.float()
    return unit_vectors(x, name, dim=dim, dtype=dtype or compute_dtype(x.dtype))


def _fill(template: Template, classname: str) -> str:
    return template.format(classname) if isinstance(template, str) else template(classname)


def _check_names_and_templates(classnames: Sequence[str], templates: Sequence[Template]) -> None:
    if isinstance(classnames, str) or len(classnames) == 0:
        raise ValueError("classnames must be a non-empty sequence of strings, e.g. ('zero', 'one', ...)")
    if isinstance(templates, str) or len(templates) == 0:
        raise ValueError("templates must be a non-empty sequence, e.g. ('a photo of the digit {}.',)")
    duplicates = sorted({c for c in classnames if list(classnames).count(c) > 1})
    if duplicates:
        raise ValueError(f"duplicate class names {duplicates}: each class needs its own name")
    for t in templates:
        if not (isinstance(t, str) or callable(t)):
            raise ValueError(f"a template must be a format string or a callable, got {t!r}")
        try:
            a, b = _fill(t, "\x00a"), _fill(t, "\x00b")
        except (IndexError, KeyError) as err:
            raise ValueError(f"template {t!r} must take exactly one positional '{{}}' field") from err
        if a == b:
            raise ValueError(f"template {t!r} ignores the class name (no '{{}}' placeholder), "
                             "so it would give every class the same text")


def _tokenize(tokenizer: Callable, texts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    tokens = tokenizer(texts)
    if isinstance(tokens, torch.Tensor):  # open_clip-style tokenizers return the ids only
        return {"input_ids": tokens.to(device)}
    out = {"input_ids": tokens["input_ids"].to(device)}
    if tokens.get("attention_mask") is not None:
        out["attention_mask"] = tokens["attention_mask"].to(device)
    return out


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


# ------------------------------------------------------------------- zero-shot classification
@torch.no_grad()
def encode_texts(model: torch.nn.Module, tokenizer: Callable, texts: Sequence[str],
                 device: torch.device | str | None = None, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings of `texts`.

    Args:
        model: has `encode_text(input_ids, attention_mask=None, normalize=False) -> (B, D)`.
        tokenizer: `tok(list[str]) -> {"input_ids": (B, L), "attention_mask": (B, L)}`.
        texts: T strings.
        device: where to run; default the model's device.
        batch_size: texts per forward pass.

    Returns:
        (T, D) unit-norm embeddings, on the CPU. Texts the tokenizer turns into the same tokens (two
        prompts whose only differing words are both `[UNK]`) get bit-identical embeddings: they are
        embedded once. Embedded at two places of a batch, they could differ in the last bits with more
        than one thread, and a zero-shot argmax between such exactly-tied classes would then depend
        on the thread count.
    """
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError("texts must be a non-empty list of strings")
    device = torch.device(device) if device is not None else _model_device(model)
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = _tokenize(tokenizer, list(texts[start:start + batch_size]), device)
        unique = inverse = None
        if tokens["input_ids"].ndim == 2:  # (B, L); other shapes go to the model as given
            rows = torch.cat(list(tokens.values()), dim=1)  # (B, L * fields): what the text tower reads
            unique, inverse = torch.unique(rows, dim=0, return_inverse=True)  # (U, ...), (B,) row -> its unique row
        if unique is not None and len(unique) < len(rows):
            first = torch.zeros(len(unique), dtype=torch.long, device=rows.device)
            first.scatter_reduce_(0, inverse, torch.arange(len(rows), device=rows.device), "amin", include_self=False)
            emb = model.encode_text(**{k: v[first] for k, v in tokens.items()}).float()[inverse]  # (B, D)
        else:
            emb = model.encode_text(**tokens).float()  # (B, D)
        out.append(l2_normalize(emb).cpu())
    emb = torch.cat(out)
    _check_embeddings("text embeddings", emb)
    return emb


@torch.no_grad()
def build_zero_shot_classifier(
    model: torch.nn.Module,
    tokenizer: Callable,
    classnames: Sequence[str],
    templates: Sequence[Template],
    num_classes_per_batch: int | None = 10,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Zero-shot classifier weights from class names alone (prompt ensembling).

    For every class, each template is filled with the class name and embedded; the embeddings
    are L2-normalised, averaged over templates and normalised again — so every template counts
    equally and every class scores on the same cosine scale. Same algorithm and layout as
    open_clip's `build_zero_shot_classifier`.

    Args:
        model: has `encode_text(input_ids, attention_mask=None, normalize=False) -> (B, D)`.
        tokenizer: `tok(list[str]) -> {"input_ids", "attention_mask"}` (or a tensor of ids).
        classnames: C distinct class names, e.g. `DIGIT_CLASSNAMES`.
        templates: format strings with one `{}` ("a photo of the digit {}.") or callables
            `f(classname) -> str`, like open_clip's `OPENAI_IMAGENET_TEMPLATES`.
        num_classes_per_batch: classes embedded per forward pass (all at once if None).
        device: where to run; default the model's device.

    Returns:
        (D, C) weights with unit-norm columns, on the CPU; column c belongs to `classnames[c]`.
        Score images with `zero_shot_logits(image_emb, weights)`.
    """
    _check_names_and_templates(classnames, templates)
    step = num_classes_per_batch or len(classnames)
    columns = []
    for start in range(0, len(classnames), step):
        names = classnames[start:start + step]
        texts = [_fill(t, c) for c in names for t in templates]  # class-major: (c0 t0, c0 t1, ...)
        emb = encode_texts(model, tokenizer, texts, device=device, batch_size=len(texts))  # (c*T, D)
        emb = emb.reshape(len(names), len(templates), -1).mean(dim=1)  # (c, D) ensemble
        columns.append(l2_normalize(emb).T)  # (D, c)
    return torch.cat(columns, dim=1)  # (D, C)


def class_embedding(classifier: torch.Tensor, classnames: Sequence[str], name: str) -> torch.Tensor:
    """The (D,) column of `classifier` that belongs to class `name` (unknown names raise)."""
    names = list(classnames)
    if classifier.ndim != 2 or classifier.shape[1] != len(names):
        raise ValueError(f"classifier must have shape (D, {len(names)}) for {len(names)} class names, "
                         f"got {tuple(classifier.shape)}")
    if name not in names:
        raise ValueError(f"unknown class name {name!r}; known classes: {names}")
    return classifier[:, names.index(name)]


def zero_shot_logits(image_emb: torch.Tensor, classifier: torch.Tensor,
                     logit_scale: float | torch.Tensor = 100.0) -> torch.Tensor:
    """Class logits `logit_scale * cos(image, class)` (open_clip's `zero_shot.run`).

    Args:
        image_emb: (N, D) image embeddings, raw or normalised: rows are L2-normalised here, in
            float32 (cosine similarity).
        classifier: (D, C) from `build_zero_shot_classifier`; its columns are L2-normalised
            here too, so class embeddings of any length score on the same cosine scale.
        logit_scale: the multiplier (not its log). open_clip uses 100; ranks and argmax do not
            depend on it, softmax probabilities do.

    Returns:
        (N, C) float32 logits; classes with identical weights get identical logits (a tie never depends
        on the thread count).

    Raises:
        ValueError: shapes that do not match (a (C, D) classifier needs .T), NaN or inf.
    """
    _check_embeddings("image_emb", image_emb)
    if classifier.ndim != 2 or classifier.shape[0] != image_emb.shape[1]:
        raise ValueError(f"classifier must have shape (D, C) with D = {image_emb.shape[1]} "
                         f"(the image embedding size), got {tuple(classifier.shape)}; "
                         "a (C, D) matrix needs .T")
    if not torch.isfinite(classifier).all():
        raise ValueError("classifier contains NaN or inf")
    image = _unit(image_emb, "image_emb", dtype=torch.float32)  # (N, D)
    classes = _unit(classifier.to(image_emb.device), "classifier", dim=0, dtype=torch.float32)  # (D, C)
    unique, inverse = torch.unique(classes, dim=1, return_inverse=True)  # (D, U), (C,)
    if unique.shape[1] < classes.shape[1]:
        # Classes with the same weights (prompts that all tokenize to [UNK]) get bit-identical logits: a
        # multi-threaded matmul may sum two equal columns in different orders, and a tie would then go to
        # either class depending on the thread count.
        return (logit_scale * image @ unique)[:, inverse]
    return logit_scale * image @ classes


def accuracy(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy: the fraction of rows whose target is among the k largest logits.

    Same rule as open_clip's `zero_shot.accuracy`, which returns counts; this returns fractions.

    Args:
        logits: (N, C) scores.
        target: (N,) class indices in [0, C).
        topk: the k values.

    Returns:
        `{"top1": ..., "top5": ...}`, fractions in [0, 1].
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
    target = torch.as_tensor(target, device=logits.device)
    if target.ndim != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"target must have shape ({logits.shape[0]},) to match logits "
                         f"{tuple(logits.shape)}, got {tuple(target.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("no predictions: logits is empty")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf")
    n, c = logits.shape
    if target.min() < 0 or target.max() >= c:
        raise ValueError(f"target has class indices outside [0, {c})")
    if any(k < 1 or k > c for k in topk):
        raise ValueError(f"every k in topk must be in [1, {c}] for {c} classes, got {tuple(topk)}")
    pred = logits.topk(max(topk), dim=1, largest=True, sorted=True).indices.T  # (k, N)
    correct = pred.eq(target.view(1, -1))  # (k, N)
    return {f"top{k}": correct[:k].any(dim=0).float().mean().item() for k in topk}
