"""The course's one loss module: InfoNCE, the symmetric CLIP loss, the SigLIP loss, and the
alignment/uniformity diagnostics of Wang & Isola (2020).

InfoNCE (one direction, cosine similarity, temperature τ)::

    L = -1/N Σ_i log( exp(sim(z_i, z_i+)/τ) / Σ_j exp(sim(z_i, z_j+)/τ) )

is a cross-entropy over the (N, N) matrix of logits `sim(z_i, z_j+)/τ` whose correct class
for row i is column i (the labels are the diagonal), so it is written with `F.cross_entropy`,
which uses log-sum-exp and stays finite at τ = 0.001 where `exp(1/τ)` overflows.

How `info_nce` and `clip_loss` relate. `clip_loss` follows open_clip's `ClipLoss`: it takes
embeddings that are *already* L2-normalised and a `logit_scale` that is *already*
exponentiated (`logit_scale = 1/τ`), and averages the image→text and text→image
cross-entropies. `info_nce` normalises its inputs and divides by τ itself, one direction only.
Hence, for any a, b of shape (N, D) and τ > 0::

    clip_loss(F.normalize(a, dim=-1), F.normalize(b, dim=-1), 1 / τ)
        == (info_nce(a, b, τ) + info_nce(b, a, τ)) / 2

(tested in `tests/test_losses.py`). At `logit_scale = 0` (τ → ∞) every logit is 0, the softmax
is uniform and both losses equal log N: the loss of an untrained model with random embeddings
is close to log N, and InfoNCE bounds the mutual information, I(X; Y) >= log N - L.

Low-precision inputs (float16, bfloat16) are normalised in float32 (`mmcourse.norms`: an all-zero
row stays zero instead of becoming NaN) and multiplied in their own dtype, then the logits are
upcast to float32 for the log-softmax / log-sigmoid, as `torch.autocast` does; the loss is then
returned in float32.

Unit vectors: `info_nce` L2-normalises its inputs itself. `clip_loss` and `siglip_loss` take
open_clip's already-normalised features and do not normalise them (the training loop's numbers
stay open_clip's), but they check: a row whose length is not 1 raises a `ValueError` naming the
input (an all-zero row, what normalising a zero embedding gives, is accepted: its similarity with
everything is 0). `alignment` and `uniformity` are defined on the sphere: non-unit or zero rows
raise.

Bad input raises `ValueError` naming the problem: 1-D input, empty batch, mismatched batch
size N or embedding size D, NaN or inf, non-positive temperature, negative logit_scale.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcourse.norms import compute_dtype, l2_norm, unit_vectors

Scalar = float | torch.Tensor

__all__ = ["info_nce", "clip_loss", "siglip_loss", "alignment", "uniformity", "ClipLoss", "SigLipLoss"]


# ----------------------------------------------------------------------------- validation

def _check_embeddings(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, D), got {type(x).__name__}")
    if x.dim() != 2:
        hint = " (a single vector? use x.unsqueeze(0) for a batch of one)" if x.dim() == 1 else ""
        raise ValueError(f"{name} must be 2-D of shape (N, D), got {x.dim()}-D shape {tuple(x.shape)}{hint}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (N = 0): the loss of no pairs is undefined")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has embedding size D = 0")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        bad = "NaN" if torch.isnan(x).any() else "inf"
        raise ValueError(f"{name} contains {bad}: check the encoder output (a diverged model or a bad input)")


def _check_pair(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    _check_embeddings(a, name_a)
    _check_embeddings(b, name_b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"mismatched batch size N: {name_a} has {a.shape[0]} rows, {name_b} has {b.shape[0]}; "
                         "row i of each must be a positive pair")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"mismatched embedding size D: {name_a} has D = {a.shape[1]}, {name_b} has D = {b.shape[1]}")


def _check_scalar(value: Scalar, name: str, allow_zero: bool) -> None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        v = float(value.detach())
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        v = float(value)
    else:
        raise ValueError(f"{name} must be a number or a scalar tensor, got {type(value).__name__}")
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if v < 0 or (v == 0 and not allow_zero):
        need = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {need}, got {v:g}"
                         + (" (did you pass the log of the scale? use model.logit_scale.exp())" if name == "logit_scale" else ""))


def _upcast(x: torch.Tensor) -> torch.Tensor:
    # float16/bfloat16 logits lose digits in the log-softmax; float32 is what autocast uses.
    return x.to(compute_dtype(x.dtype))


# ----------------------------------------------------------------------------- losses

def info_nce(z: torch.Tensor, z_pos: torch.Tensor, temperature: Scalar = 0.07) -> torch.Tensor:
    """InfoNCE, one direction: each z_i must pick its positive z_i+ among all N candidates z_j+.

    Args:
        z: anchors, shape (N, D); need not be normalised: both inputs are L2-normalised here
            (in float32 for float16/bfloat16), so the logits are cosine similarities / τ. An
            all-zero row stays zero: its similarity with every candidate is 0.
        z_pos: positives, shape (N, D); row i is the positive of z[i], the other rows its
            negatives.
        temperature: τ > 0 (float or scalar tensor); small τ sharpens the softmax.

    Returns:
        The mean loss over the N anchors, a scalar tensor (float32 for float16/bfloat16 inputs).

    Raises:
        ValueError: bad shapes, NaN/inf, non-float input, τ <= 0.

    Source: van den Oord et al. (2018), "Representation Learning with Contrastive Predictive
    Coding"; cosine similarity and τ as in SimCLR (Chen et al., 2020).
    """
    _check_pair(z, z_pos, "z", "z_pos")
    _check_scalar(temperature, "temperature", allow_zero=False)
    z = unit_vectors(z, "z")  # (N, D), normalised in float32, back in z's dtype
    z_pos = unit_vectors(z_pos, "z_pos")  # (N, D)
    logits = _upcast(z @ z_pos.T) / temperature  # (N, N): cosine similarity / τ
    labels = torch.arange(z.shape[0], device=z.device)  # the positive of row i is column i
    return F.cross_entropy(logits, labels)  # log-sum-exp inside: finite at τ = 0.001


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: Scalar,
              output_dict: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
    """The symmetric CLIP loss, as open_clip's `ClipLoss` computes it on one device.

    Args:
        image_emb: image embeddings, shape (N, D), L2-normalised (as in open_clip they are not
            normalised here; a row of length other than 1 raises, an all-zero row is accepted).
        text_emb: text embeddings, shape (N, D), L2-normalised; row i matches image i.
        logit_scale: the *exponentiated* scale 1/τ >= 0 (e.g. `model.logit_scale.exp()`).
            0 gives the chance-level loss log N.

    Returns:
        (cross_entropy(image→text) + cross_entropy(text→image)) / 2, a scalar tensor (float32
        for float16/bfloat16 inputs), or `{"contrastive_loss": loss}` when `output_dict`.

    Raises:
        ValueError: bad shapes, NaN/inf, rows not L2-normalised, logit_scale < 0.

    Source: Radford et al. (2021), CLIP; open_clip's `loss.ClipLoss`.
    """
    _check_pair(image_emb, text_emb, "image_emb", "text_emb")
    unit_vectors(image_emb, "image_emb", normalize=False)
    unit_vectors(text_emb, "text_emb", normalize=False)
    _check_scalar(logit_scale, "logit_scale", allow_zero=True)
    logits_per_image = _upcast(logit_scale * image_emb @ text_emb.T)  # (N, N): row i = image i vs all texts
    logits_per_text = logits_per_image.T  # (N, N): row i = text i vs all images
    labels = torch.arange(image_emb.shape[0], device=image_emb.device)
    loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    return {"contrastive_loss": loss} if output_dict else loss


def siglip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: Scalar, logit_bias: Scalar,
                output_dict: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
    """The sigmoid loss of SigLIP (Zhai et al., 2023), as open_clip's `SigLipLoss` on one device.

    Every (image, text) pair is an independent binary problem: matching (diagonal, label +1)
    or not (label -1); no softmax over the batch.

    Args:
        image_emb: (N, D), L2-normalised (checked, not normalised here, as `clip_loss`).
        text_emb: (N, D), L2-normalised.
        logit_scale: exponentiated scale >= 0 (SigLIP initialises it at 10).
        logit_bias: a real bias added to every logit (SigLIP initialises it at -10).

    Returns:
        -Σ_ij log σ(label_ij · (logit_scale · x_i·y_j + logit_bias)) / N, a scalar tensor
        (note: summed over the N² pairs, divided by N; float32 for float16/bfloat16 inputs),
        or `{"contrastive_loss": loss}`.

    Raises:
        ValueError: bad shapes, NaN/inf, rows not L2-normalised, logit_scale < 0, logit_bias
            not a finite scalar.
    """
    _check_pair(image_emb, text_emb, "image_emb", "text_emb")
    unit_vectors(image_emb, "image_emb", normalize=False)
    unit_vectors(text_emb, "text_emb", normalize=False)
    _check_scalar(logit_scale, "logit_scale", allow_zero=True)
    if isinstance(logit_bias, bool) or not isinstance(logit_bias, (int, float, torch.Tensor)):
        raise ValueError(f"logit_bias must be a number or a scalar tensor, got {type(logit_bias).__name__}")
    if isinstance(logit_bias, torch.Tensor) and logit_bias.numel() != 1:
        raise ValueError(f"logit_bias must be a scalar, got a tensor of shape {tuple(logit_bias.shape)}")
    if not math.isfinite(float(logit_bias.detach() if isinstance(logit_bias, torch.Tensor) else logit_bias)):
        raise ValueError(f"logit_bias must be finite, got {logit_bias}")
    n = image_emb.shape[0]
    logits = _upcast(logit_scale * image_emb @ text_emb.T + logit_bias)  # (N, N)
    labels = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1  # +1 diagonal, -1 elsewhere
    loss = -F.logsigmoid(labels * logits).sum() / n  # logsigmoid is stable for large |logits|
    return {"contrastive_loss": loss} if output_dict else loss


# ----------------------------------------------------------------------------- diagnostics

def _check_normalised(x: torch.Tensor, name: str) -> None:
    unit_vectors(x, name, normalize=False, allow_zero=False)  # on the sphere: no zero rows either


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2) -> torch.Tensor:
    """Alignment (Wang & Isola, 2020): mean ||x_i - y_i||^alpha over positive pairs. Lower is better.

    Args:
        x, y: L2-normalised embeddings, shape (N, D); row i of each is a positive pair. Rows of
            length other than 1 (or all zeros) raise a `ValueError`.
        alpha: exponent > 0 (the paper uses 2).

    Returns:
        A scalar tensor in [0, 2**alpha]; 0 when every pair coincides. Distances are computed
        in float32 for float16/bfloat16 input, and the result is float32 then.
    """
    _check_pair(x, y, "x", "y")
    _check_normalised(x, "x")
    _check_normalised(y, "y")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    return l2_norm(_upcast(x) - _upcast(y), dim=1).pow(alpha).mean()  # (N,) distances -> scalar


def uniformity(x: torch.Tensor, t: float = 2) -> torch.Tensor:
    """Uniformity (Wang & Isola, 2020): log mean_{i<j} exp(-t ||x_i - x_j||²). Lower is more uniform.

    Args:
        x: L2-normalised embeddings, shape (N, D), N >= 2; rows of length other than 1 (or all
            zeros) raise a `ValueError`.
        t: scale > 0 (the paper uses 2).

    Returns:
        A scalar tensor <= 0; 0 when all points coincide (collapse); about -4 for points
        spread uniformly on the 2-sphere with t = 2. Squared distances are computed in float32
        for float16/bfloat16 input, and the result is float32 then.
    """
    _check_embeddings(x, "x")
    _check_normalised(x, "x")
    if x.shape[0] < 2:
        raise ValueError(f"uniformity needs at least 2 points, got N = {x.shape[0]}")
    if not t > 0:
        raise ValueError(f"t must be > 0, got {t}")
    sq_dists = torch.pdist(_upcast(x), p=2).pow(2)  # (N(N-1)/2,) one entry per pair i < j
    return torch.logsumexp(-t * sq_dists, dim=0) - math.log(sq_dists.numel())  # log-mean-exp, stable


# ----------------------------------------------------------------------------- modules

class ClipLoss(nn.Module):
    """`clip_loss` as a module with open_clip's call signature (single device only)."""

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: Scalar,
                logit_bias: Scalar | None = None, output_dict: bool = False):
        if logit_bias is not None:
            raise ValueError("ClipLoss takes no logit_bias (that is SigLipLoss)")
        return clip_loss(image_features, text_features, logit_scale, output_dict=output_dict)


class SigLipLoss(nn.Module):
    """`siglip_loss` as a module with open_clip's call signature (single device only)."""

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: Scalar,
                logit_bias: Scalar, output_dict: bool = False):
        return siglip_loss(image_features, text_features, logit_scale, logit_bias, output_dict=output_dict)


# ----------------------------------------------------------------------------- masked language modelling
# (lesson 07; kept together at the end of the module)

__all__ += ["mlm_loss", "masked_token_accuracy"]

MLM_IGNORE_INDEX = -100  # labels of positions that are not predicted, as Hugging Face and F.cross_entropy use


def _check_mlm(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Validate (B, L, V) logits and (B, L) labels; return the (B, L) bool mask of targets."""
    if not isinstance(logits, torch.Tensor) or logits.dim() < 2:
        raise ValueError(f"logits must be a (..., V) tensor of token scores, e.g. (B, L, V), got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != tuple(logits.shape[:-1]):
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must have the shape of logits without the vocabulary axis, "
                         f"{tuple(logits.shape[:-1])}, got {shape}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be integer token ids (and -100), got dtype {labels.dtype}")
    target = labels != MLM_IGNORE_INDEX
    vocab = logits.shape[-1]
    bad = target & ((labels < 0) | (labels >= vocab))
    if bad.any():
        raise ValueError(f"labels must be token ids in [0, {vocab}) or -100 (not predicted), got "
                         f"{int(labels[bad][0])}")
    if not torch.isfinite(logits[target]).all():
        raise ValueError("logits at the target positions contain NaN or inf: check the model output")
    return target


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The masked-language-modelling loss of BERT: cross-entropy over the vocabulary at the
    chosen positions only, averaged over them (labels -100 elsewhere are ignored).

    Args:
        logits: (B, L, V) token scores (any (..., V) works).
        labels: (B, L) original token ids at the chosen positions, -100 everywhere else
            (what `mmcourse.data.masking.mask_tokens` returns).

    Returns:
        A scalar tensor: `F.cross_entropy(logits.flatten(0, -2), labels.flatten(),
        ignore_index=-100)` in nats (float32 for float16/bfloat16 logits). A batch with no chosen
        position has no term to average: it returns a 0 that is still connected to the graph (so
        `backward` gives zero gradients), where `F.cross_entropy` alone would return NaN.

    Raises:
        ValueError: mismatched shapes, non-integer labels, labels outside [0, V) other than -100,
            NaN or inf logits at a target.
    """
    target = _check_mlm(logits, labels)
    flat_logits = _upcast(logits.reshape(-1, logits.shape[-1]))  # (B*L, V)
    if not target.any():
        return flat_logits[:0].sum()  # 0.0, with a grad_fn: nothing to predict in this batch
    return F.cross_entropy(flat_logits, labels.reshape(-1).long(), ignore_index=MLM_IGNORE_INDEX)


def masked_token_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of the predicted token over the chosen positions only (labels != -100).

    Args:
        logits: (B, L, V) token scores.
        labels: (B, L) original ids at the chosen positions, -100 elsewhere.

    Returns:
        A float in [0, 1]: (argmax == label) averaged over the chosen positions. Unchosen
        positions (most of them, and all padding) never count.

    Raises:
        ValueError: as `mlm_loss`, and when no position is chosen (an accuracy of nothing is
            undefined).
    """
    target = _check_mlm(logits, labels)
    if not target.any():
        raise ValueError("no chosen position (every label is -100): masked-token accuracy is undefined")
    pred = logits.detach().argmax(dim=-1)  # (B, L)
    return (pred[target] == labels[target]).float().mean().item()
