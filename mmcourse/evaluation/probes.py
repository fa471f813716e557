"""Embedding a data set and probing it: `encode_dataset`, `linear_probe` (scikit-learn's logistic
regression on frozen image embeddings, CLIP paper section 3.2), and `ImageClassifier` with
`classification_loss` (the image tower + a linear head that `fit` trains or fine-tunes)."""
from __future__ import annotations

from typing import Any, Iterable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from mmcourse.norms import l2_normalize
from mmcourse.evaluation.zero_shot import _check_embeddings, _model_device, _unit


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
    it with `mmcourse.training.loop.fit(model, loader, config, loss_fn=classification_loss)`.

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
