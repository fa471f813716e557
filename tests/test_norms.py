"""mmcourse.norms against F.normalize (float32/float64, bit for bit), a float64 reference for
float16/bfloat16, and by hand for zero vectors, overflow, underflow and the unit-vector check."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcourse.norms import compute_dtype, l2_norm, l2_normalize, unit_vectors

LOW = [torch.float16, torch.bfloat16]
TOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3}  # half an ulp near 1, plus rounding of the inputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [-1, 0])
def test_equals_f_normalize_bit_for_bit(dtype, dim):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 33, generator=g, dtype=dtype) * torch.rand(64, 1, generator=g, dtype=dtype) * 10
    assert torch.equal(l2_normalize(x, dim=dim), F.normalize(x, dim=dim))
    assert torch.equal(l2_norm(x, dim=dim), x.norm(dim=dim))
    # and so are the gradients, for vectors that are not zero
    x.requires_grad_(True)
    w = torch.randn(64, 33, generator=g, dtype=dtype)
    (ours,) = torch.autograd.grad((l2_normalize(x, dim=dim) * w).sum(), x)
    (ref,) = torch.autograd.grad((F.normalize(x, dim=dim) * w).sum(), x)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_matches_float64_and_keeps_dtype(dtype):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(50, 16, generator=g) * torch.logspace(-3, 3, 50)[:, None]).to(dtype)  # norms 1e-3..1e3
    ref = F.normalize(x.double(), dim=-1)  # the same rounded inputs, exact arithmetic
    out = l2_normalize(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=TOL[dtype])
    norms = l2_norm(x)
    assert norms.dtype == torch.float32 == compute_dtype(dtype)
    torch.testing.assert_close(norms.double(), x.double().norm(dim=-1), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", LOW + [torch.float32, torch.float64])
def test_zero_vector_stays_zero_with_a_finite_gradient(dtype):
    # F.normalize's eps = 1e-12 is 0 in float16: a zero row gives 0 / 0 = NaN there
    x = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0]], dtype=dtype, requires_grad=True)
    if dtype == torch.float16:
        assert torch.isnan(F.normalize(x.detach(), dim=-1)[0]).all()  # the fault this module fixes
    out = l2_normalize(x)
    torch.testing.assert_close(out.detach().double(), torch.tensor([[0.0, 0.0, 0.0], [0.6, 0.0, 0.8]], dtype=torch.float64),
                               rtol=0, atol=TOL.get(dtype, 1e-7))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[0], torch.ones(3, dtype=dtype))  # identity through a zero vector, not 1/eps
    assert l2_norm(x.detach())[0] == 0


def test_float16_overflow_and_underflow_of_the_squares():
    big = torch.tensor([[60000.0, 60000.0]], dtype=torch.float16)  # norm 84853 > float16's max 65504
    assert l2_norm(big).item() == pytest.approx(60000 * math.sqrt(2), rel=1e-6)
    torch.testing.assert_close(l2_normalize(big).float(), torch.full((1, 2), 0.5 ** 0.5), rtol=0, atol=1e-3)
    tiny = torch.tensor([[3e-7, 4e-7]], dtype=torch.float16)  # subnormal: squares underflow in float16
    torch.testing.assert_close(l2_normalize(tiny).float(), torch.tensor([[0.6, 0.8]]), rtol=0, atol=0.05)
    assert torch.isfinite(l2_normalize(tiny)).all()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.integers(1, 12), st.integers(0, 2**31 - 1), st.sampled_from(LOW))
def test_property_low_precision_rows_unit_or_zero(n, d, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * 10 ** torch.randint(-3, 4, (n, 1), generator=g)
    x[torch.rand(n, generator=g) < 0.3] = 0  # some dead rows
    out = l2_normalize(x.to(dtype))
    assert torch.isfinite(out).all()
    norms = out.double().norm(dim=-1)
    zero = (x.to(dtype) == 0).all(dim=-1)
    assert (norms[zero] == 0).all()
    assert ((norms[~zero] - 1).abs() <= 2 * TOL[dtype]).all()


# ----------------------------------------------------------------------------- unit_vectors

def test_unit_vectors_normalises_or_checks():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.6, 0.8]])
    torch.testing.assert_close(unit_vectors(x, "x"), l2_normalize(x))
    unit = l2_normalize(x)
    assert unit_vectors(unit, "x", normalize=False) is unit  # checked and returned as it is
    assert unit_vectors(unit, "x", normalize=False, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match=r"image_emb must be L2-normalised: its row 0 has norm 5 "):
        unit_vectors(x, "image_emb", normalize=False)
    with pytest.raises(ValueError, match=r"x's row 1 is all zeros"):
        unit_vectors(unit, "x", normalize=False, allow_zero=False)
    with pytest.raises(ValueError, match=r"classifier must be L2-normalised: its column 1 has norm 2"):
        unit_vectors(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), "classifier", normalize=False, dim=0)
    with pytest.raises(ValueError, match="floating-point"):
        unit_vectors(torch.ones(2, 2, dtype=torch.long), "ids")
    with pytest.raises(ValueError, match="torch.Tensor"):
        l2_normalize([[1.0, 0.0]])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_unit_vectors_accepts_unit_rows_rounded_to_low_precision_and_back(dtype):
    g = torch.Generator().manual_seed(2)
    x = F.normalize(torch.randn(256, 512, generator=g, dtype=torch.float64), dim=-1).to(dtype)
    unit_vectors(x, "x", normalize=False)
    unit_vectors(x.double(), "x", normalize=False)  # upcast for evaluation: still accepted
    with pytest.raises(ValueError, match="must be L2-normalised"):
        unit_vectors(x * 1.02, "x", normalize=False)
