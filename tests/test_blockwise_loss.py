"""Tests for mmcourse.objectives.blockwise: values and gradients equal clip_loss (and open_clip's ClipLoss)."""
import pytest
import torch
import torch.nn.functional as F

from mmcourse.objectives import blocked_clip_loss, default_block_size, fused_clip_loss
from mmcourse.objectives import clip_loss

LOSSES = [blocked_clip_loss, fused_clip_loss]


def _inputs(n, d=16, dtype=torch.float64, scale=14.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1).requires_grad_()
    y = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1).requires_grad_()
    return x, y, torch.tensor(scale, dtype=dtype, requires_grad=True)


def _value_and_grads(fn, x, y, s, **kw):
    loss = fn(x, y, s, **kw)
    return (loss, *torch.autograd.grad(loss, (x, y, s)))


@pytest.mark.parametrize("loss_fn", LOSSES)
@pytest.mark.parametrize("n, block", [(1, 1), (7, 3), (64, 64), (65, 16), (200, None)])
def test_equals_clip_loss_float64(loss_fn, n, block):
    x, y, s = _inputs(n)
    ref = _value_and_grads(clip_loss, x, y, s)
    got = _value_and_grads(loss_fn, x, y, s, block_size=block)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss_fn", LOSSES)
@pytest.mark.parametrize("scale", [0.0, 1.0, 100.0])
def test_equals_open_clip_float32(loss_fn, scale):
    from open_clip.loss import ClipLoss

    x, y, s = _inputs(300, 32, torch.float32, scale)
    ref = _value_and_grads(lambda a, b, c: ClipLoss()(a, b, c), x, y, s)
    got = _value_and_grads(loss_fn, x, y, s, block_size=64)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(got[1:], ref[1:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_gradcheck_and_float_scale():
    x, y, s = _inputs(6, 4)
    for fn in LOSSES:
        assert torch.autograd.gradcheck(lambda a, b, c: fn(a, b, c, block_size=4), (x, y, s))
        # a float scale: no gradient for it, the same value
        torch.testing.assert_close(fn(x, y, 14.0), clip_loss(x, y, 14.0))


def test_fused_falls_back_when_a_column_underflows():
    # column 0's logits lie ~200 below the largest row maximum: its sum underflows in the fused pass
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float32, requires_grad=True)
    y = torch.tensor([[-1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float32, requires_grad=True)
    s = torch.tensor(100.0, requires_grad=True)
    ref = _value_and_grads(clip_loss, *(t.detach().double().requires_grad_() for t in (x, y, s)))
    got = _value_and_grads(fused_clip_loss, x, y, s)
    assert torch.isfinite(got[0])
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b.float(), rtol=1e-5, atol=1e-4)  # s = 100: float32 cancellation


def test_low_precision_inputs_and_no_grad():
    x, y, s = _inputs(50, 8, torch.float32)
    for fn in LOSSES:
        loss = fn(x.bfloat16(), y.bfloat16(), s)
        assert loss.dtype == torch.float32
        # upcast before the product: clip_loss of the same (rounded) values in float32
        torch.testing.assert_close(loss, clip_loss(x.bfloat16().float(), y.bfloat16().float(), s))
        xb = x.detach().bfloat16().requires_grad_()
        gx, = torch.autograd.grad(fn(xb, y, s), xb)
        assert gx.dtype == torch.bfloat16
        with torch.no_grad():
            torch.testing.assert_close(fn(x, y, s), clip_loss(x, y, s))


def test_bad_input_raises():
    x, y, s = _inputs(4, 3)
    for fn in LOSSES:
        with pytest.raises(ValueError, match="mismatched batch size"):
            fn(x, y[:3], s)
        with pytest.raises(ValueError, match="logit_scale must be >= 0"):
            fn(x, y, -1.0)
        with pytest.raises(ValueError, match="block_size must be a positive int"):
            fn(x, y, s, block_size=0)
        with pytest.raises(ValueError, match="NaN"):
            fn(x.detach() * float("nan"), y, s)


def test_default_block_size():
    assert default_block_size(4096) == 256  # 256 rows x 4096 x 4 bytes = 4 MiB
    assert default_block_size(10) == 10 and default_block_size(1 << 20) == 128
