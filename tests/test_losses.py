"""Tests of mmcourse.objectives.losses against trusted references: open_clip's ClipLoss/SigLipLoss, a naive
Python loop, F.cross_entropy, gradcheck, and properties (hypothesis)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from open_clip.loss import ClipLoss as OpenClipLoss
from open_clip.loss import SigLipLoss as OpenSigLipLoss

from mmcourse.objectives import ClipLoss, SigLipLoss, alignment, clip_loss, info_nce, siglip_loss, uniformity

f64 = torch.float64


def _pair(n=8, d=5, seed=0, dtype=f64, normalise=True):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=dtype)
    b = torch.randn(n, d, generator=g, dtype=dtype)
    if normalise:
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    return a, b


def naive_info_nce(z, z_pos, temperature):
    """The formula, term by term, with Python loops and math (float64 throughout)."""
    n = z.shape[0]

    def unit(row):
        norm = math.sqrt(sum(v * v for v in row))
        return [v / norm for v in row]

    zs, ps = [unit(r) for r in z.tolist()], [unit(r) for r in z_pos.tolist()]
    total = 0.0
    for i in range(n):
        sims = [sum(u * v for u, v in zip(zs[i], ps[j])) for j in range(n)]
        denom = sum(math.exp(s / temperature) for s in sims)
        total += -math.log(math.exp(sims[i] / temperature) / denom)
    return total / n


# ----------------------------------------------------------------------------- references

@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n,d", [(1, 3), (4, 2), (16, 8), (33, 64)])
def test_clip_loss_matches_open_clip(seed, n, d):
    a, b = _pair(n, d, seed)
    scale = torch.tensor(1 / 0.07, dtype=f64) * (seed + 1) / 3
    ours = clip_loss(a, b, scale)
    ref = OpenClipLoss()(a, b, scale)
    assert ours.dtype == f64
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert (ours - ref).abs().item() < 1e-12  # same operations: equal to rounding


def test_clip_loss_output_dict_matches_open_clip():
    a, b = _pair(12, 6, 1)
    ours = clip_loss(a, b, 20.0, output_dict=True)
    ref = OpenClipLoss()(a, b, 20.0, output_dict=True)
    assert set(ours) == set(ref) == {"contrastive_loss"}
    torch.testing.assert_close(ours["contrastive_loss"], ref["contrastive_loss"], rtol=0, atol=1e-6)
    torch.testing.assert_close(ClipLoss()(a, b, 20.0, output_dict=True)["contrastive_loss"], ref["contrastive_loss"],
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n,d", [(1, 3), (5, 4), (32, 16)])
def test_siglip_loss_matches_open_clip(seed, n, d):
    a, b = _pair(n, d, seed)
    scale, bias = torch.tensor(10.0, dtype=f64) * (seed + 1), torch.tensor(-10.0 + 3 * seed, dtype=f64)
    ours = siglip_loss(a, b, scale, bias)
    ref = OpenSigLipLoss()(a, b, scale, bias)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    d_ours = SigLipLoss()(a, b, scale, bias, output_dict=True)
    d_ref = OpenSigLipLoss()(a, b, scale, bias, output_dict=True)
    assert set(d_ours) == set(d_ref) == {"contrastive_loss"}
    torch.testing.assert_close(d_ours["contrastive_loss"], d_ref["contrastive_loss"], rtol=0, atol=1e-6)


def test_siglip_loss_value_by_hand():
    # N = 1, x·y = 1: loss = -log σ(scale + bias) = log(1 + e^{-(scale+bias)})
    x = torch.tensor([[1.0, 0.0]], dtype=f64)
    assert siglip_loss(x, x, 2.0, -1.0).item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tau", [0.05, 0.07, 0.5, 2.0])
def test_info_nce_matches_naive_loop(seed, tau):
    a, b = _pair(6, 4, seed, normalise=False)
    a = a * 3.0  # not normalised: info_nce normalises itself
    assert info_nce(a, b, tau).item() == pytest.approx(naive_info_nce(a, b, tau), abs=1e-10)


def test_info_nce_equals_cross_entropy_with_diagonal_labels():
    a, b = _pair(10, 7, 3)
    logits = a @ b.T / 0.1
    torch.testing.assert_close(info_nce(a, b, 0.1), F.cross_entropy(logits, torch.arange(10)))


def test_info_nce_worked_example():
    # Three pairs; similarities chosen by hand: positives 0.9, negatives 0.1 → every row the same.
    # loss = -log(e^{9} / (e^{9} + 2 e^{1})) at τ = 0.1
    expected = -math.log(math.exp(9) / (math.exp(9) + 2 * math.exp(1)))
    sims = torch.full((3, 3), 0.1, dtype=f64).fill_diagonal_(0.9)
    ce = F.cross_entropy(sims / 0.1, torch.arange(3))
    assert ce.item() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(6.709e-4, rel=1e-3)


@pytest.mark.parametrize("tau", [0.01, 0.07, 1.0])
def test_clip_loss_is_mean_of_two_info_nce(tau):
    a, b = _pair(9, 5, 4, normalise=False)
    a = a * torch.linspace(0.5, 3, 9, dtype=f64)[:, None]  # rows of different norms
    lhs = clip_loss(F.normalize(a, dim=-1), F.normalize(b, dim=-1), 1 / tau)
    rhs = (info_nce(a, b, tau) + info_nce(b, a, tau)) / 2
    torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-12)
    assert not torch.allclose(info_nce(a, b, tau), info_nce(b, a, tau))  # one direction is not symmetric


def test_alignment_uniformity_reference_formulas():
    # Wang & Isola's published code
    a, b = _pair(20, 3, 5)
    torch.testing.assert_close(alignment(a, b), (a - b).norm(p=2, dim=1).pow(2).mean())
    torch.testing.assert_close(alignment(a, b, alpha=1), (a - b).norm(dim=1).mean())
    torch.testing.assert_close(uniformity(a), torch.pdist(a, p=2).pow(2).mul(-2).exp().mean().log())
    # collapse: all points equal → uniformity 0, alignment 0 for identical pairs
    same = F.normalize(torch.ones(5, 3, dtype=f64), dim=-1)
    assert uniformity(same).item() == pytest.approx(0.0, abs=1e-12)
    assert alignment(same, same).item() == 0.0
    # antipodal pairs: ||x - y||² = 4
    assert alignment(a, -a).item() == pytest.approx(4.0)


# ----------------------------------------------------------------------------- gradients

def test_gradcheck_info_nce_and_clip_and_siglip():
    a, b = _pair(5, 3, 6, normalise=False)
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, y: info_nce(x, y, 0.3), (a, b))
    scale = torch.tensor(4.0, dtype=f64, requires_grad=True)
    bias = torch.tensor(-1.0, dtype=f64, requires_grad=True)
    # clip_loss and siglip_loss take unit rows: evaluate at normalised points (gradcheck moves them by 1e-6)
    an, bn = (F.normalize(x.detach(), dim=-1).requires_grad_(True) for x in (a, b))
    assert torch.autograd.gradcheck(lambda x, y, s: clip_loss(x, y, s), (an, bn, scale))
    assert torch.autograd.gradcheck(lambda x, y, s, c: siglip_loss(x, y, s, c), (an, bn, scale, bias))
    tau = torch.tensor(0.2, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: info_nce(a.detach(), b.detach(), t), (tau,))


def test_gradcheck_alignment_uniformity():
    a, b = _pair(6, 3, 7)
    a.requires_grad_(True)
    b.requires_grad_(True)
    # evaluate at normalised points only: perturbations in gradcheck are tiny (1e-6)
    assert torch.autograd.gradcheck(lambda x, y: alignment(x, y), (a, b))
    assert torch.autograd.gradcheck(lambda x: uniformity(x), (a,))


def test_gradient_by_hand():
    # dL/ds_ij for L = CE(s/τ, diag): (softmax(s/τ)_ij - δ_ij) / (N τ); chain rule through s = a b^T
    a, b = _pair(6, 4, 8)
    a.requires_grad_(True)
    tau = 0.1
    clip = F.cross_entropy(a @ b.T / tau, torch.arange(6))
    clip.backward()
    p = torch.softmax((a @ b.T / tau).detach(), dim=1)
    grad_s = (p - torch.eye(6, dtype=f64)) / (6 * tau)
    torch.testing.assert_close(a.grad, grad_s @ b)


# ----------------------------------------------------------------------------- properties

emb = st.integers(min_value=1, max_value=9).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(min_value=1, max_value=6), st.integers(0, 2**31 - 1)))


@settings(max_examples=40, deadline=None)
@given(emb, st.floats(0.01, 10.0))
def test_property_permutation_equivariance(spec, tau):
    n, d, seed = spec
    a, b = _pair(n, d, seed, normalise=False)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(info_nce(a[perm], b[perm], tau), info_nce(a, b, tau))
    an, bn = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    torch.testing.assert_close(clip_loss(an[perm], bn[perm], 1 / tau), clip_loss(an, bn, 1 / tau))
    torch.testing.assert_close(siglip_loss(an[perm], bn[perm], 1 / tau, -1.0), siglip_loss(an, bn, 1 / tau, -1.0))


@settings(max_examples=40, deadline=None)
@given(emb, st.floats(0.0, 100.0))
def test_property_clip_loss_symmetric(spec, scale):
    n, d, seed = spec
    a, b = _pair(n, d, seed)
    torch.testing.assert_close(clip_loss(a, b, scale), clip_loss(b, a, scale))
    torch.testing.assert_close(siglip_loss(a, b, scale, 0.5), siglip_loss(b, a, scale, 0.5))


@settings(max_examples=40, deadline=None)
@given(emb)
def test_property_log_n_at_zero_scale(spec):
    n, d, seed = spec
    a, b = _pair(n, d, seed)
    assert clip_loss(a, b, 0.0).item() == pytest.approx(math.log(n), abs=1e-12)
    assert info_nce(a, b, 1e12).item() == pytest.approx(math.log(n), abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(emb, st.floats(0.001, 10.0))
def test_property_bounds(spec, tau):
    # 0 <= L, and L <= log N + 2/τ (cosine similarities differ by at most 2)
    n, d, seed = spec
    a, b = _pair(n, d, seed, normalise=False)
    loss = info_nce(a, b, tau).item()
    assert 0.0 <= loss <= math.log(n) + 2 / tau + 1e-9


def test_random_embeddings_close_to_log_n():
    a, b = _pair(256, 256, 9)
    loss = clip_loss(a, b, 1.0).item()  # τ = 1, D large: similarities ≈ 0
    assert abs(loss - math.log(256)) < 0.05


# ----------------------------------------------------------------------------- stability

@pytest.mark.parametrize("tau", [0.01, 0.001])
def test_stable_at_small_tau(tau):
    a, b = _pair(16, 8, 10)
    b_near = F.normalize(a + 0.01 * b, dim=-1)  # well-aligned: exp(sim/τ) overflows float32 at τ=0.001
    for x, y in [(a.float(), b.float()), (a.float(), b_near.float())]:
        assert math.isinf(torch.exp(x @ y.T / tau).sum().item()) or tau == 0.01
        loss = info_nce(x, y, tau)
        ref = info_nce(x.double(), y.double(), tau)
        assert torch.isfinite(loss)
        torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-3)
        lc = clip_loss(x, y, 1 / tau)
        assert torch.isfinite(lc)
        torch.testing.assert_close(lc.double(), clip_loss(x.double(), y.double(), 1 / tau), rtol=1e-4, atol=1e-3)
    # gradients finite too
    x = a.float().requires_grad_(True)
    info_nce(x, b_near.float(), tau).backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tau", [0.001, 0.07, 1.0])
def test_low_precision(dtype, tau):
    a, b = _pair(32, 16, 11)
    b = F.normalize(a + 0.3 * b, dim=-1)
    tol = 0.02 if dtype == torch.float16 else 0.1  # bfloat16 has 8 bits of mantissa
    for fn, args in [(info_nce, (tau,)), (clip_loss, (1 / tau,)), (siglip_loss, (1 / tau, -2.0))]:
        low = fn(a.to(dtype), b.to(dtype), *args)
        ref = fn(a.to(dtype).double(), b.to(dtype).double(), *args)  # same rounded inputs, exact arithmetic
        assert low.dtype == torch.float32
        assert torch.isfinite(low)
        assert abs(low.item() - ref.item()) <= tol * max(1.0, abs(ref.item())), (fn.__name__, low, ref)
    x = a.to(dtype)
    assert torch.isfinite(uniformity(x)) and torch.isfinite(alignment(x, b.to(dtype)))


def test_siglip_stable_at_large_logits():
    a, _ = _pair(8, 4, 12)
    loss = siglip_loss(a.float(), a.float(), 1000.0, -10.0)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), siglip_loss(a, a, 1000.0, -10.0), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- bad input

a4, b4 = _pair(4, 3, 13)


@pytest.mark.parametrize("call,match", [
    (lambda: info_nce(a4, b4[:3]), "mismatched batch size N"),
    (lambda: info_nce(a4, torch.randn(4, 5, dtype=f64)), "mismatched embedding size D"),
    (lambda: info_nce(a4[:0], b4[:0]), "empty batch"),
    (lambda: info_nce(a4[0], b4[0]), "must be 2-D"),
    (lambda: info_nce(a4, b4, 0.0), "temperature must be > 0"),
    (lambda: info_nce(a4, b4, -0.07), "temperature must be > 0"),
    (lambda: info_nce(a4, b4, float("nan")), "temperature must be finite"),
    (lambda: info_nce(a4, b4, torch.tensor([0.1, 0.2])), "temperature must be a scalar"),
    (lambda: info_nce(a4.clone().index_fill_(0, torch.tensor([1]), float("nan")), b4), "z contains NaN"),
    (lambda: info_nce(a4, b4.clone().index_fill_(0, torch.tensor([2]), float("inf"))), "z_pos contains inf"),
    (lambda: info_nce(torch.ones(4, 3, dtype=torch.long), b4), "floating-point"),
    (lambda: info_nce([[1.0]], b4), "must be a torch.Tensor"),
    (lambda: clip_loss(a4, b4[:2], 10.0), "mismatched batch size N"),
    (lambda: clip_loss(a4, torch.randn(4, 2, dtype=f64), 10.0), "mismatched embedding size D"),
    (lambda: clip_loss(a4[:0], b4[:0], 10.0), "empty batch"),
    (lambda: clip_loss(a4[0], b4[0], 10.0), "must be 2-D"),
    (lambda: clip_loss(a4, b4, -1.0), "logit_scale must be >= 0"),
    (lambda: clip_loss(a4, b4, float("inf")), "logit_scale must be finite"),
    (lambda: clip_loss(a4 * float("nan"), b4, 10.0), "image_emb contains NaN"),
    (lambda: clip_loss(a4, b4 * float("inf"), 10.0), "text_emb contains inf"),
    (lambda: siglip_loss(a4, b4[:3], 10.0, -10.0), "mismatched batch size N"),
    (lambda: siglip_loss(a4, b4, -10.0, -10.0), "logit_scale must be >= 0"),
    (lambda: siglip_loss(a4, b4, 10.0, float("nan")), "logit_bias must be finite"),
    (lambda: siglip_loss(a4[:0], b4[:0], 10.0, -10.0), "empty batch"),
    (lambda: alignment(a4, b4[:3]), "mismatched batch size N"),
    (lambda: alignment(a4 * 2, b4), "must be L2-normalised"),
    (lambda: uniformity(a4 * 2), "must be L2-normalised"),
    (lambda: uniformity(a4[:1]), "at least 2 points"),
    (lambda: uniformity(a4[0]), "must be 2-D"),
    (lambda: ClipLoss()(a4, b4, 10.0, logit_bias=1.0), "no logit_bias"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------- low precision and zero rows

def _issue_input():
    torch.manual_seed(0)
    z = torch.randn(4, 8)
    p = torch.randn(4, 8)
    z[1] = 0  # an all-zero row: a dead ReLU tower followed by a bias-free projection
    return z, p


def test_info_nce_zero_row_in_float16_is_the_float32_value():
    z, p = _issue_input()
    assert info_nce(z, p, 0.07).item() == pytest.approx(5.8200, abs=5e-5)
    assert info_nce(z.double(), p.double(), 0.07).item() == pytest.approx(5.8200, abs=5e-5)
    # the zero row has cosine 0 with every candidate: its term is exactly log N
    rows = F.cross_entropy(F.normalize(z, dim=-1) @ F.normalize(p, dim=-1).T / 0.07, torch.arange(4), reduction="none")
    assert rows[1].item() == pytest.approx(math.log(4))
    for dtype, tol in [(torch.float16, 5e-3), (torch.bfloat16, 5e-2)]:
        zl, pl = z.to(dtype).requires_grad_(True), p.to(dtype).requires_grad_(True)
        loss = info_nce(zl, pl, 0.07)  # was NaN in float16: F.normalize's eps is 0 there
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert loss.item() == pytest.approx(5.8200, abs=tol)
        loss.backward()
        assert torch.isfinite(zl.grad).all() and torch.isfinite(pl.grad).all()
        # and against the same rounded inputs in float64
        assert loss.item() == pytest.approx(info_nce(z.to(dtype).double(), p.to(dtype).double(), 0.07).item(), abs=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_every_loss_finite_with_a_zero_row_in_low_precision(dtype):
    a, b = _pair(8, 6, 21)
    a[3] = 0  # what l2_normalize / encode_*(normalize=True) give for a zero embedding
    b[5] = 0
    tol = {torch.float16: 0.02, torch.bfloat16: 0.1, torch.float32: 1e-5}[dtype]
    for fn, args in [(info_nce, (0.07,)), (clip_loss, (1 / 0.07,)), (siglip_loss, (10.0, -10.0))]:
        x, y = a.to(dtype).requires_grad_(True), b.to(dtype).requires_grad_(True)
        low = fn(x, y, *args)
        ref = fn(a.to(dtype).double(), b.to(dtype).double(), *args)
        assert torch.isfinite(low), fn.__name__
        assert abs(low.item() - ref.item()) <= tol * max(1.0, abs(ref.item())), (fn.__name__, low, ref)
        low.backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all(), fn.__name__
    # alignment and uniformity are defined on the sphere: a zero row is refused, by name
    with pytest.raises(ValueError, match="x's row 3 is all zeros"):
        alignment(a.to(dtype), b.to(dtype))
    with pytest.raises(ValueError, match="x's row 3 is all zeros"):
        uniformity(a.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_alignment_uniformity_low_precision_in_float32(dtype):
    a, b = _pair(40, 8, 22)
    x, y = a.to(dtype), b.to(dtype)
    tol = 1e-3 if dtype == torch.float16 else 1e-2
    al, un = alignment(x, y), uniformity(x)
    assert al.dtype == un.dtype == torch.float32
    assert al.item() == pytest.approx(alignment(x.double(), y.double()).item(), abs=tol)
    assert un.item() == pytest.approx(uniformity(x.double()).item(), abs=tol)
    # collapse (all points equal): uniformity 0 with a finite gradient, in low precision too
    same = F.normalize(torch.ones(6, 8, dtype=f64), dim=-1).to(dtype).requires_grad_(True)
    u = uniformity(same)
    assert u.item() == pytest.approx(0.0, abs=1e-6)
    u.backward()
    assert torch.isfinite(same.grad).all()
    s2 = same.detach().clone().requires_grad_(True)
    alignment(s2, same.detach()).backward()
    assert torch.isfinite(s2.grad).all()


# ----------------------------------------------------------------------------- raw (not unit) embeddings

def test_raw_embeddings_info_nce_normalises_clip_and_siglip_refuse_by_name():
    a, b = _pair(6, 4, 23, normalise=False)
    scales = torch.linspace(0.1, 20, 6, dtype=f64)[:, None]
    # info_nce normalises (documented): raw rows give the loss of their directions
    torch.testing.assert_close(info_nce(a * scales, b, 0.1), info_nce(F.normalize(a, dim=-1), F.normalize(b, dim=-1), 0.1))
    # clip_loss/siglip_loss take open_clip's normalised features: raw ones raise, naming the input
    an, bn = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    with pytest.raises(ValueError, match=r"image_emb must be L2-normalised: its row 0 has norm"):
        clip_loss(a, bn, 10.0)
    with pytest.raises(ValueError, match=r"text_emb must be L2-normalised"):
        clip_loss(an, bn * 2, 10.0)
    with pytest.raises(ValueError, match=r"image_emb must be L2-normalised"):
        siglip_loss(an * 0.5, bn, 10.0, -10.0)
    with pytest.raises(ValueError, match=r"text_emb must be L2-normalised"):
        SigLipLoss()(an, b, 10.0, -10.0)
    with pytest.raises(ValueError, match=r"image_emb must be L2-normalised"):
        ClipLoss()(a, bn, 10.0)
    with pytest.raises(ValueError, match=r"y must be L2-normalised"):
        alignment(an, b)
    # normalised rows pass; so do unit rows rounded to bfloat16 and back
    clip_loss(an.bfloat16().double(), bn.bfloat16().double(), 10.0)
