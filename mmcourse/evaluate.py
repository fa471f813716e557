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
   `classification_loss` is the image tower + linear head that `mmcourse.train.fit` trains from
   scratch (supervised baseline) or fine-tunes from the zero-shot head.

Embeddings are (N, D) tensors. Every function whose result assumes unit vectors
(`zero_shot_logits`, `retrieval_ranks`, `retrieval_metrics`, `linear_probe`) L2-normalises its
inputs itself with `mmcourse.norms.unit_vectors`, in float32: raw `encode_image` output gives the
same numbers as normalised output (ranks are cosine-similarity ranks), and an all-zero embedding
stays zero (cosine 0 with everything) instead of becoming NaN in float16.
Bad input raises `ValueError` naming the problem.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .norms import compute_dtype, l2_normalize, unit_vectors

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
        (T, D) unit-norm embeddings, on the CPU.
    """
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError("texts must be a non-empty list of strings")
    device = torch.device(device) if device is not None else _model_device(model)
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = _tokenize(tokenizer, list(texts[start:start + batch_size]), device)
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
        (N, C) float32 logits.

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


# --------------------------------------------------------------------------------- retrieval
def retrieval_ranks(image_emb: torch.Tensor, text_emb: torch.Tensor,
                    logit_scale: float | torch.Tensor | None = None,
                    text_to_image_index: torch.Tensor | Sequence[int] | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based rank of the correct match for every image and every caption.

    The rank is the position of the correct item when all candidates are sorted by similarity,
    best first (0 = retrieved first). Ties are broken by candidate index, the lower index first
    (a stable sort). An image with several captions takes the rank of its best-ranked caption.

    Args:
        image_emb: (N, D) image embeddings, raw or normalised: rows are L2-normalised here (in
            float32 for float16/bfloat16), so candidates are ranked by cosine similarity.
        text_emb: (T, D) caption embeddings, same convention.
        logit_scale: optional positive multiplier applied as open_clip does; ranks do not
            depend on it.
        text_to_image_index: (T,) index of the image each caption describes. Default:
            caption i describes image i (then T must equal N).

    Returns:
        `(image_to_text, text_to_image)`: (N,) and (T,) LongTensors of 0-based ranks.
    """
    _check_embeddings("image_emb", image_emb)
    _check_embeddings("text_emb", text_emb)
    n, t = image_emb.shape[0], text_emb.shape[0]
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"image_emb and text_emb must have the same embedding size, got "
                         f"{image_emb.shape[1]} and {text_emb.shape[1]}")
    if text_to_image_index is None:
        if n != t:
            raise ValueError(f"got {n} images and {t} captions: pass text_to_image_index to say which "
                             "image each caption describes")
        index = torch.arange(n)
    else:
        index = torch.as_tensor(text_to_image_index, dtype=torch.long).cpu()
        if index.shape != (t,):
            raise ValueError(f"text_to_image_index must have shape ({t},), one image per caption, "
                             f"got {tuple(index.shape)}")
        if index.min() < 0 or index.max() >= n:
            raise ValueError(f"text_to_image_index has image indices outside [0, {n})")
        missing = torch.ones(n, dtype=torch.bool)
        missing[index] = False
        if missing.any():
            raise ValueError(f"images {missing.nonzero().flatten().tolist()[:10]} have no caption")
    scale = 1.0 if logit_scale is None else logit_scale
    if float(scale) <= 0:
        raise ValueError(f"logit_scale must be positive, got {float(scale)}")
    dtype = compute_dtype(torch.promote_types(image_emb.dtype, text_emb.dtype))
    if not dtype.is_floating_point:
        dtype = torch.float32
    image, text = _unit(image_emb.detach(), "image_emb", dtype=dtype), _unit(text_emb.detach(), "text_emb", dtype=dtype)
    logits_per_image = (scale * image @ text.t()).cpu()  # (N, T), as open_clip on normalised features

    # Position of every candidate in its row's ranking: rank_of[i, j] = where j lands for query i.
    order = torch.argsort(logits_per_image, dim=1, descending=True, stable=True)  # (N, T)
    rank_of = torch.empty_like(order).scatter_(1, order, torch.arange(t).expand(n, t))
    positive = index.view(1, t) == torch.arange(n).view(n, 1)  # (N, T): caption j describes image i
    image_to_text = rank_of.masked_fill(~positive, t).min(dim=1).values  # best caption, (N,)

    order_t = torch.argsort(logits_per_image.t(), dim=1, descending=True, stable=True)  # (T, N)
    text_to_image = (order_t == index.view(t, 1)).int().argmax(dim=1)  # (T,)
    return image_to_text, text_to_image


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor,
                      logit_scale: float | torch.Tensor | None = None,
                      text_to_image_index: torch.Tensor | Sequence[int] | None = None,
                      ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Image→text and text→image retrieval metrics, named and computed as open_clip does.

    For each direction: `{direction}_mean_rank` (mean of 1-based ranks), `{direction}_median_rank`
    (floor of the median 0-based rank, plus 1) and `{direction}_R@k` (fraction of queries whose
    correct item is among the first k), with direction `image_to_text` or `text_to_image`.
    With one caption per image this equals open_clip's `get_clip_metrics` (ties: see
    `retrieval_ranks`). With several captions per image (COCO: 5), an image counts as retrieved
    if ANY of its captions is in the top k, and every caption has one correct image.

    Args:
        image_emb: (N, D) image embeddings, raw or normalised (normalised here, see
            `retrieval_ranks`; on normalised input the numbers equal open_clip's).
        text_emb: (T, D) caption embeddings, same convention.
        logit_scale: optional positive multiplier (ranks do not depend on it).
        text_to_image_index: (T,) image index of each caption; default `arange(N)`.
        ks: the k of each R@k.

    Returns:
        dict of Python floats.
    """
    ranks = retrieval_ranks(image_emb, text_emb, logit_scale, text_to_image_index)
    metrics = {}
    for name, rank in zip(("image_to_text", "text_to_image"), ranks):
        preds = rank.numpy()
        metrics[f"{name}_mean_rank"] = float(preds.mean() + 1)
        metrics[f"{name}_median_rank"] = float(np.floor(np.median(preds)) + 1)
        for k in ks:
            metrics[f"{name}_R@{k}"] = float(np.mean(preds < k))
    return metrics


# ---------------------------------------------------------------------- datasets and probes
@torch.no_grad()
def encode_dataset(model: torch.nn.Module, loader: Iterable[dict[str, Any]],
                   device: torch.device | str | None = None, normalize: bool = True,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embed every batch of a loader with the model in eval mode.

    Args:
        model: a `CLIP` (`encode_image`, `encode_text`).
        loader: yields dicts with "image" (B, C, H, W), "input_ids" (B, L), optional
            "attention_mask" (B, L) and "label" (B,) — the `mmcourse.data` collate format.
        device: where to run; default the model's device.
        normalize: L2-normalise the embeddings (what retrieval and zero-shot use).

    Returns:
        `(image_emb (N, D), text_emb (N, D), labels (N,))` on the CPU; labels are -1 when the
        batches carry none.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    images, texts, labels = [], [], []
    try:
        for batch in loader:
            mask = batch.get("attention_mask")
            img = model.encode_image(batch["image"].to(device)).float()
            txt = model.encode_text(batch["input_ids"].to(device),
                                    attention_mask=None if mask is None else mask.to(device)).float()
            if normalize:
                img, txt = l2_normalize(img), l2_normalize(txt)
            images.append(img.cpu())
            texts.append(txt.cpu())
            label = batch.get("label")
            labels.append(label.cpu() if label is not None else torch.full((img.shape[0],), -1))
    finally:
        model.train(was_training)
    if not images:
        raise ValueError("the loader yielded no batches")
    image_emb, text_emb = torch.cat(images), torch.cat(texts)
    _check_embeddings("image embeddings", image_emb)
    _check_embeddings("text embeddings", text_emb)
    return image_emb, text_emb, torch.cat(labels)


class ImageClassifier(torch.nn.Module):
    """A CLIP image tower with a linear head on its normalised embedding: `logits = head(x / |x|)`.

    One architecture for three rows of lesson 05's table: trained from a random `CLIP` (the
    supervised baseline), or fine-tuned from a trained one with the head initialised to the
    zero-shot classifier (so training starts at zero-shot accuracy, as in LP-FT / FLYP). Train
    it with `mmcourse.train.fit(model, loader, config, loss_fn=classification_loss)`.

    Args:
        clip: a `CLIP`; its `encode_image` is the image tower (the text tower is not used).
        num_classes: C, for a randomly initialised head.
        zero_shot_weights: (D, C) from `build_zero_shot_classifier`, to initialise the head.
        logit_scale: multiplier of the zero-shot head (open_clip uses 100).
    """

    def __init__(self, clip: torch.nn.Module, num_classes: int | None = None,
                 zero_shot_weights: torch.Tensor | None = None, logit_scale: float = 100.0):
        super().__init__()
        if (num_classes is None) == (zero_shot_weights is None):
            raise ValueError("give exactly one of num_classes (random head) or zero_shot_weights (zero-shot head)")
        self.clip = clip
        if zero_shot_weights is not None:
            d, num_classes = zero_shot_weights.shape
        else:
            d = clip.encode_image(torch.zeros(1, clip.config.in_channels, clip.config.image_size,
                                              clip.config.image_size, device=_model_device(clip))).shape[1]
        self.head = torch.nn.Linear(d, num_classes)
        if zero_shot_weights is not None:
            with torch.no_grad():
                self.head.weight.copy_(logit_scale * zero_shot_weights.T)  # (C, D)
                self.head.bias.zero_()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, num_classes) logits."""
        return self.head(self.clip.encode_image(image, normalize=True))


def classification_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """`loss_fn` for `fit`: cross-entropy of `model(batch["image"])` against `batch["label"]`."""
    return F.cross_entropy(model(batch["image"]), batch["label"])


@torch.no_grad()
def classifier_accuracy(model: torch.nn.Module, loader: Iterable[dict[str, Any]],
                        device: torch.device | str | None = None) -> float:
    """Top-1 accuracy of an image classifier (`model(image) -> (B, C)`) over a loader."""
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for batch in loader:
            pred = model(batch["image"].to(device)).argmax(dim=1).cpu()
            correct += (pred == batch["label"]).sum().item()
            total += len(pred)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("the loader yielded no batches")
    return correct / total


class LinearProbe(NamedTuple):
    """What `linear_probe` returns: test accuracy and the fitted scikit-learn classifier."""

    accuracy: float
    classifier: Any  # sklearn.linear_model.LogisticRegression


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor,
                 test_features: torch.Tensor, test_labels: torch.Tensor,
                 C: float = 1.0, max_iter: int = 1000, normalize: bool = True) -> LinearProbe:
    """Logistic regression on frozen embeddings (the CLIP paper's linear probe).

    Args:
        train_features: (N, D) frozen image embeddings.
        train_labels: (N,) class indices.
        test_features: (M, D).
        test_labels: (M,).
        C: inverse L2 regularisation strength (scikit-learn's `C`).
        max_iter: L-BFGS iterations.
        normalize: L2-normalise the features first, in float32 (as zero-shot does); raw and
            normalised embeddings then give the same probe.

    Returns:
        `LinearProbe(accuracy, classifier)`; accuracy in [0, 1] on the test set.
    """
    from sklearn.linear_model import LogisticRegression

    def prepare(x, y, name):
        x = torch.as_tensor(x)
        _check_embeddings(name, x)
        y = torch.as_tensor(y)
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"{name} has {x.shape[0]} rows but its labels have shape {tuple(y.shape)}")
        x = _unit(x, name, dtype=torch.float32) if normalize else x.float()
        return x.cpu().numpy().astype(np.float64), y.cpu().numpy()

    x_train, y_train = prepare(train_features, train_labels, "train_features")
    x_test, y_test = prepare(test_features, test_labels, "test_features")
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"train and test features differ in size: {x_train.shape[1]} vs {x_test.shape[1]}")
    if C <= 0:
        raise ValueError(f"C must be positive, got {C}")
    clf = LogisticRegression(C=C, max_iter=max_iter)
    clf.fit(x_train, y_train)
    return LinearProbe(float(clf.score(x_test, y_test)), clf)
