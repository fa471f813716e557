"""The CLIP loss in blocks: a memory-bounded version and a fused one near the matmul floor.

`mmcourse.objectives.losses.clip_loss` builds the (N, N) logit matrix and lets autograd keep it (and the
two softmaxes) for the backward pass: at N = 32,768 that is 4·N² bytes = 4.3 GB per matrix in
float32. Both functions here give the same value and the same gradients with less memory or
less time, using the gradient's closed form. With logits L = s·X·Yᵀ (s = `logit_scale`, already
exponentiated), row softmax P and column softmax Q of L, and

    loss = 1/(2N) · [Σ_i logsumexp_j L_ij + Σ_j logsumexp_i L_ij] - 1/N · Σ_i L_ii,

the gradient with respect to the logits is G = (P + Q)/(2N) - I/N, hence

    ∂loss/∂X = s·G·Y,   ∂loss/∂Y = s·Gᵀ·X,   ∂loss/∂s = Σ_i x_i · (G·Y)_i.

- `blocked_clip_loss`: memory grows like N·D plus one block of rows (block_size × N), not N².
  A first pass over row blocks computes every row's logsumexp and, online, every column's; a
  second pass recomputes each block of logits and turns it into its block of G, which is
  multiplied into the gradients at once. Nothing of size N² is ever held.
- `fused_clip_loss`: as fast as we can get on a CPU. The (N, N) matrix is held once and each
  entry is exponentiated once (passes over N² numbers are memory-bound, so each block of rows
  gets its maximum, exp and sum while it is in cache); the gradient is formed in place, and the
  loss's whole cost is the three (N, N, D) matrix products plus two elementwise passes. If a column's sum underflows (a column whose largest logit lies
  more than about 70 below the largest row maximum) it falls back to the blocked version.

Both compute in float32 (float64 stays float64; float16/bfloat16 embeddings are upcast before the
product, which is slightly more accurate than `clip_loss`, which multiplies in their own dtype)
and return gradients in the inputs' dtypes. They are `torch.autograd.Function`s whose forward
computes the gradients too (the backward only scales them), so they are meant for training,
once-differentiable. Inputs are checked like `clip_loss`'s (`ValueError` naming the problem);
embeddings are expected L2-normalised, as in open_clip's `ClipLoss`.

The closed form is the one open_clip's and big_vision's losses differentiate through autograd;
the two-pass streaming logsumexp is the idea of FlashAttention (Dao et al., 2022) applied to the
contrastive loss (as in "Breaking the Memory Barrier", Cheng et al., 2024, Inf-CL).
"""
from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from mmcourse.objectives.losses import Scalar, _check_pair, _check_scalar

__all__ = ["blocked_clip_loss", "fused_clip_loss", "default_block_size"]


def default_block_size(n: int, bytes_per_block: int = 4 << 20, min_rows: int = 128) -> int:
    """Rows per block so that one block of float32 logits (rows × n) takes about
    `bytes_per_block` (4 MiB: within a CPU's cache), but at least `min_rows` (thinner blocks make
    the matrix products slow) and at most n."""
    return min(n, max(min_rows, bytes_per_block // (4 * n)))


def _blocks(n: int, block_size: int):
    for r0 in range(0, n, block_size):
        yield r0, min(r0 + block_size, n)


def _lse_stats(x: torch.Tensor, y: torch.Tensor, s: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column logsumexp of s·x·yᵀ, one block of rows at a time (columns online)."""
    n = x.shape[0]
    row_lse = x.new_empty(n)  # (N,)
    col_max = x.new_full((n,), -math.inf)  # (N,) running column maximum
    col_sum = x.new_zeros(n)  # (N,) Σ exp(L - col_max) so far
    for r0, r1 in _blocks(n, block):
        logits = s * (x[r0:r1] @ y.T)  # (b, N)
        row_lse[r0:r1] = torch.logsumexp(logits, dim=1)
        new_max = torch.maximum(col_max, logits.amax(dim=0))  # (N,)
        col_sum = col_sum * torch.exp(col_max - new_max) + torch.exp(logits - new_max).sum(dim=0)
        col_max = new_max
    return row_lse, col_max + torch.log(col_sum)


def _blocked_forward(x, y, s, block, need_grad):
    n = x.shape[0]
    row_lse, col_lse = _lse_stats(x, y, s, block)
    diag = s * (x * y).sum(dim=1)  # (N,) the positives' logits
    loss = (row_lse.sum() + col_lse.sum()) / (2 * n) - diag.mean()
    if not need_grad:
        return loss, None, None
    gy_x = torch.empty_like(x)  # (N, D) G·Y
    gtx = torch.zeros_like(y)  # (N, D) Gᵀ·X
    for r0, r1 in _blocks(n, block):
        logits = s * (x[r0:r1] @ y.T)  # (b, N), recomputed instead of stored
        g = (torch.exp(logits - row_lse[r0:r1, None]) + torch.exp(logits - col_lse[None, :])) / (2 * n)
        g[:, r0:r1].diagonal().sub_(1.0 / n)  # - I/N on this block's part of the diagonal
        gy_x[r0:r1] = g @ y
        gtx += g.T @ x[r0:r1]
    return loss, gy_x, gtx


def _fused_forward(x, y, s, block, need_grad):
    n = x.shape[0]
    e = x.new_empty(n, n)  # (N, N) the one big buffer: logits, then exp, then G
    row_max = x.new_empty(n)  # (N,)
    row_sum = x.new_empty(n)  # (N,)
    torch.mm(x, y.T, out=e).mul_(s)  # (N, N) logits: one big product, as fast as the floor's
    for r0, r1 in _blocks(n, block):
        eb = e[r0:r1]  # (b, N), read once from memory and kept in cache for:
        row_max[r0:r1] = eb.amax(dim=1)
        eb.sub_(row_max[r0:r1, None]).exp_()  # the only exp pass: E_ij = exp(L_ij - m_i) <= 1
        row_sum[r0:r1] = eb.sum(dim=1)  # >= 1 (the row's maximum contributes exp(0))
    big = row_max.max()
    w = torch.exp(row_max - big)  # (N,) exp(m_i - M) <= 1
    col_sum = w @ e  # (N,) Σ_i exp(L_ij - M)
    if not bool((col_sum > 1e-30).all()):  # a column underflowed: exact but slower path
        del e
        return _blocked_forward(x, y, s, block, need_grad)
    diag = s * (x * y).sum(dim=1)  # (N,)
    loss = ((row_max + row_sum.log()).sum() + (big + col_sum.log()).sum()) / (2 * n) - diag.mean()
    if not need_grad:
        return loss, None, None
    inv_row = 1.0 / (2 * n * row_sum)  # (N,)
    inv_col = 1.0 / (2 * n * col_sum)  # (N,)
    for r0, r1 in _blocks(n, block):
        gb = e[r0:r1]
        gb.mul_(w[r0:r1, None] * inv_col[None, :] + inv_row[r0:r1, None])  # P/(2N) + Q/(2N)
        gb[:, r0:r1].diagonal().sub_(1.0 / n)
    return loss, e @ y, e.T @ x  # G·Y, Gᵀ·X: the floor's other two products


class _BlockwiseClipLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image_emb, text_emb, logit_scale, block_size, fused, need_grad):
        work = torch.float64 if image_emb.dtype == torch.float64 else torch.float32
        x, y = image_emb.detach().to(work), text_emb.detach().to(work)  # (N, D) each
        s = logit_scale.detach().to(work)  # () exponentiated scale
        ctx.scale_shape = logit_scale.shape
        step = _fused_forward if fused else _blocked_forward
        loss, gy_x, gtx = step(x, y, s, block_size, need_grad)
        if need_grad:
            grad_s = (gy_x * x).sum()  # Σ_i x_i·(G·Y)_i
            ctx.save_for_backward((s * gy_x).to(image_emb.dtype), (s * gtx).to(text_emb.dtype),
                                  grad_s.to(logit_scale.dtype))
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        grad_x, grad_y, grad_s = ctx.saved_tensors
        return grad_out * grad_x, grad_out * grad_y, (grad_out * grad_s).reshape(ctx.scale_shape), None, None, None


def blocked_clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: Scalar,
                      block_size: int | None = None) -> torch.Tensor:
    """The symmetric CLIP loss with memory N·D + block_size·N instead of N² (value and
    gradients equal `mmcourse.objectives.losses.clip_loss`).

    Args:
        image_emb: (N, D) image embeddings, expected L2-normalised; float32/float64
            (float16/bfloat16 are computed in float32).
        text_emb: (N, D) text embeddings, expected L2-normalised; row i matches image i.
        logit_scale: the exponentiated scale 1/τ >= 0, a float or a scalar tensor (gets a
            gradient if it requires one).
        block_size: rows of logits held at once; None: `default_block_size(N)` (about 1 MiB).

    Returns:
        The scalar loss (float32, or float64 for float64 inputs).

    Raises:
        ValueError: the inputs `clip_loss` rejects, or a block_size that is not a positive int.
    """
    return _clip_loss_blockwise(image_emb, text_emb, logit_scale, block_size, fused=False)


def fused_clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: Scalar,
                    block_size: int | None = None) -> torch.Tensor:
    """The symmetric CLIP loss computed with one exp pass over the logits and the gradient's
    closed form (value and gradients equal `mmcourse.objectives.losses.clip_loss`). Holds one (N, N)
    matrix; falls back to `blocked_clip_loss`'s two passes if a column's sum underflows.

    Args and Returns: as `blocked_clip_loss` (block_size: rows exponentiated while in cache).

    Raises:
        ValueError: as `blocked_clip_loss`.
    """
    return _clip_loss_blockwise(image_emb, text_emb, logit_scale, block_size, fused=True)


def _clip_loss_blockwise(image_emb, text_emb, logit_scale, block_size, fused):
    _check_pair(image_emb, text_emb, "image_emb", "text_emb")
    _check_scalar(logit_scale, "logit_scale", allow_zero=True)
    if block_size is None:
        block_size = default_block_size(image_emb.shape[0])
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int (rows per block), got {block_size!r}")
    scale = logit_scale if isinstance(logit_scale, torch.Tensor) else torch.tensor(float(logit_scale))
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (image_emb, text_emb, scale))
    return _BlockwiseClipLoss.apply(image_emb, text_emb, scale, block_size, fused, need_grad)
