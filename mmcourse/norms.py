"""L2 norms and normalisation that stay finite in float16 and bfloat16, and the one rule for
functions whose result assumes unit vectors.

Why not `F.normalize` alone: it divides by `max(||x||, eps)` in the input's own dtype, and its
`eps = 1e-12` rounds to 0 in float16, so an all-zero row (what a dead ReLU tower followed by a
bias-free projection gives) becomes 0 / 0 = NaN. As `torch.autocast` does, the functions here
compute the norm in float32 (float64 input stays float64), then return the input's dtype:

- `l2_norm(x)`: Euclidean length along `dim`, in float32 (or float64).
- `l2_normalize(x)`: `x / ||x||`; a zero vector stays the zero vector (its cosine similarity with
  anything is then 0, the value `F.normalize` gives in float32) and its gradient stays finite.
- `unit_vectors(x, name, normalize=...)`: what every public function that needs unit vectors
  calls on its inputs. With `normalize=True` (retrieval, zero-shot, probes, `info_nce`, the
  modality gap, the plots) it L2-normalises, so raw embeddings give the same result as
  normalised ones; with `normalize=False` (`clip_loss` and `siglip_loss`, which take open_clip's
  already-normalised features, and `alignment`/`uniformity`, defined on the sphere) it checks and
  raises a `ValueError` naming the input.
"""
from __future__ import annotations

import torch

__all__ = ["compute_dtype", "l2_norm", "l2_normalize", "unit_vectors"]

LOW_PRECISION = (torch.float16, torch.bfloat16)
UNIT_TOLERANCE = 1e-2  # | ||x|| - 1 | allowed by unit_vectors(normalize=False); bfloat16 rounding is ~2e-3


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype norms are computed in: float32 for float16/bfloat16, else `dtype` itself."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def _check_float(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def l2_norm(x: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    """Euclidean length of the vectors of `x` along `dim`, computed in float32.

    Args:
        x: a floating-point tensor, e.g. (N, D) embeddings.
        dim: the dimension holding each vector's coordinates.
        keepdim: keep `dim` with size 1 (for broadcasting against `x`).

    Returns:
        The norms, float32 for float16/bfloat16 input (a norm can exceed float16's largest
        value, 65504), else `x`'s dtype. Shape of `x` without `dim` (or with size 1).

    Raises:
        ValueError: `x` is not a floating-point tensor.
    """
    _check_float(x, "x")
    return torch.linalg.vector_norm(x, dim=dim, keepdim=keepdim, dtype=compute_dtype(x.dtype))


def l2_normalize(x: torch.Tensor, dim: int = -1, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`x / ||x||` along `dim`: the vectors of `x` scaled to length 1, computed in float32.

    Equal to `F.normalize(x, dim=dim)` in float32 and float64 (bit for bit for vectors of norm
    >= 1e-12); unlike it, finite in float16/bfloat16. A vector whose norm is 0 (or underflows
    to 0) is returned unchanged: the zero vector stays zero, so its cosine similarity with
    anything is 0, and the gradient through it is the identity rather than 1/eps.

    Args:
        x: a floating-point tensor, e.g. (N, D) embeddings.
        dim: the dimension holding each vector's coordinates.
        dtype: dtype of the result; default `x`'s dtype.

    Returns:
        A tensor of `x`'s shape whose vectors along `dim` have length 1 (or 0).

    Raises:
        ValueError: `x` is not a floating-point tensor.
    """
    _check_float(x, "x")
    xc = x.to(compute_dtype(x.dtype))
    norm = torch.linalg.vector_norm(xc, dim=dim, keepdim=True)  # (..., 1, ...)
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))  # zero vectors: divide by 1, not 0
    return (xc / safe).to(dtype or x.dtype)


def unit_vectors(x: torch.Tensor, name: str, normalize: bool = True, dim: int = -1,
                 allow_zero: bool = True, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The vectors of `x` as unit vectors: the one rule for functions that need them.

    Args:
        x: a floating-point tensor, e.g. (N, D) embeddings, or (D, C) classifier columns with
            `dim=0`.
        name: the caller's name for `x` ("image_emb"), used in the error message.
        normalize: True: return `l2_normalize(x, dim)` (a unit-norm input comes back unchanged
            up to rounding). False: return `x` itself after checking that every vector has
            length 1 within `UNIT_TOLERANCE` (1e-2: loose enough for unit vectors rounded to
            bfloat16 and back, tight enough to catch raw embeddings).
        dim: the dimension holding each vector's coordinates.
        allow_zero: with `normalize=False`, also accept all-zero vectors (what `l2_normalize`
            and `encode_*(normalize=True)` give for a zero embedding).
        dtype: dtype of the result; default `x`'s dtype.

    Returns:
        A tensor of `x`'s shape.

    Raises:
        ValueError: (only with `normalize=False`) a vector's length is not 1, naming `name`,
            the vector and its length; or `x` is not a floating-point tensor.
    """
    _check_float(x, name)
    if normalize:
        return l2_normalize(x, dim=dim, dtype=dtype)
    norms = l2_norm(x.detach(), dim=dim)  # float32
    bad = (norms - 1).abs() > UNIT_TOLERANCE
    if allow_zero:
        bad &= norms != 0
    if bad.any():
        flat = norms.flatten()
        what = "vector" if x.dim() != 2 else "row" if dim in (-1, 1) else "column"
        first = int(bad.flatten().nonzero()[0])
        if not allow_zero and flat[first] == 0:
            raise ValueError(f"{name}'s {what} {first} is all zeros, which has no direction on the unit sphere: "
                             "check what produced it (a dead ReLU tower or a blank input gives a zero embedding)")
        raise ValueError(f"{name} must be L2-normalised: its {what} {first} has norm {float(flat[first]):.4g} "
                         f"(norms range {float(flat.min()):.4g}..{float(flat.max()):.4g}); normalise it first with "
                         f"mmcourse.norms.l2_normalize(x, dim={dim}), or encode with normalize=True")
    return x if dtype is None else x.to(dtype)
