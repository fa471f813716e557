"""Checks for assignments 01 (InfoNCE) and 02 (temperature).

Each check runs the student's function on a few inputs, compares with `mmcourse.objectives.losses` (or
autograd), and when the answer is wrong names the likely mistake: temperature multiplied
instead of divided, divided twice, no normalisation, a sum instead of a mean, labels off the
diagonal, one direction only, overflow at small τ, a sign error in the gradient...
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mmcourse.objectives import losses
from mmcourse.viz import temperature as temp
from mmcourse.classroom.checks.core import Case, CheckResult, Property, Variant, compare, finish, run_check

__all__ = ["check_info_nce_naive", "check_info_nce", "check_clip_loss", "check_info_nce_grad",
           "check_gradient_weights", "check_temperature_predictions"]

f64 = torch.float64


def _data(n: int, d: int, seed: int, dtype=f64, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=dtype) * scale
    b = a + 0.8 * torch.randn(n, d, generator=g, dtype=dtype) * scale  # correlated: a real signal
    return a, b


def _unit(x):
    return F.normalize(x, dim=-1)


def _aligned32(n: int = 8, d: int = 4):
    # near-identical pairs in float32: exp(sim / 0.01) ≈ exp(100) overflows float32 (max ≈ 3.4e38)
    a, b = _data(n, d, 7, torch.float32)
    return a, a + 1e-3 * b


# ----------------------------------------------------------------------------- wrong answers (one direction)

def _one_dir(z, p, logits_fn, reduction="mean", labels_fn=None):
    logits = logits_fn(z, p)
    labels = labels_fn(len(z)) if labels_fn else torch.arange(len(z))
    return F.cross_entropy(logits, labels, reduction=reduction)


def _info_nce_variants():
    cos = lambda z, p: _unit(z) @ _unit(p).T  # noqa: E731
    return [
        Variant(lambda z, z_pos, temperature=0.07: _one_dir(z, z_pos, lambda a, b: cos(a, b) * temperature),
                "temperature multiplied instead of divided", "the logits are similarity / τ"),
        Variant(lambda z, z_pos, temperature=0.07: _one_dir(z, z_pos, lambda a, b: cos(a, b) / temperature ** 2),
                "you divided by τ twice", "divide the similarities by τ once (look for a second `/ temperature`)"),
        Variant(lambda z, z_pos, temperature=0.07: _one_dir(z, z_pos, lambda a, b: a @ b.T / temperature),
                "not normalised (the loss changes when you scale the inputs)",
                ('sim is the COSINE similarity: it must not change when a vector gets longer', 'scale every row of z and z_pos to length 1 before the dot products (torch.nn.functional has a function for it)')),
        Variant(lambda z, z_pos, temperature=0.07: _one_dir(z, z_pos, lambda a, b: cos(a, b) / temperature, "sum"),
                "returns a sum, not a mean", "the formula has 1/N in front: average over the N anchors"),
        Variant(lambda z, z_pos, temperature=0.07: _one_dir(z, z_pos, lambda a, b: cos(a, b) / temperature, "none"),
                "wrong shape returned: one loss per anchor, shape (N,), instead of their mean (a scalar)",
                ('the formula returns one number: the 1/N Σ over anchors', 'reduce the (N,) per-anchor losses to their average')),
        Variant(lambda z, z_pos, temperature=0.07: _one_dir(z, z_pos, lambda a, b: cos(a, b) / temperature,
                                                            labels_fn=lambda n: torch.zeros(n, dtype=torch.long)),
                "labels off the diagonal: every row used column 0 as its positive",
                ('the positive of anchor i is z_i+, which sits in column i of the similarity matrix', 'the target class of row i is the number i: 0, 1, ..., N-1')),
        Variant(lambda z, z_pos, temperature=0.07: _one_dir(z, z_pos, lambda a, b: cos(a, b) / temperature,
                                                            labels_fn=lambda n: torch.arange(n).flip(0)),
                "labels off the diagonal: you used the anti-diagonal",
                ('the positive of anchor i is z_i+, which sits in column i of the similarity matrix', 'the target class of row i is the number i: 0, 1, ..., N-1')),
        Variant(lambda z, z_pos, temperature=0.07: _ce((_unit(z) @ _unit(z_pos).T / temperature).T),
                "softmax over the wrong axis: each column (not each row) was normalised",
                ('each anchor z_i picks among all z_j+: one softmax per ROW of the similarity matrix', 'which dimension of the (N, N) matrix indexes the candidates of one anchor?')),
        # Properties test one feature each, so they still name a mistake when two are combined.
        Property(lambda fn: _near(_on_identical(fn, 4), 4 * math.log(4)),
                 "returns a sum, not a mean", "the formula has 1/N in front: average over the N anchors"),
        Property(_tau_backwards, "temperature multiplied instead of divided: your loss grows when τ shrinks "
                 "on well-aligned pairs", "the logits are similarity / τ"),
        Property(lambda fn: _not_scale_invariant(fn),
                 "not normalised (the loss changes when you scale the inputs)",
                 ('sim is the COSINE similarity: it must not change when a vector gets longer', 'scale every row of z and z_pos to length 1 before the dot products (torch.nn.functional has a function for it)')),
        Property(lambda fn: _result_shape(fn) not in (None, ()),
                 "wrong shape returned: the loss must be a scalar (shape ())",
                 ('the formula returns one number: the 1/N Σ over anchors', 'reduce the (N,) per-anchor losses to their average')),
    ]


def _near(value, target: float, tol: float = 1e-4) -> bool:
    """Whether `value` (a number or one-element tensor) is within `tol` of `target`."""
    try:
        return abs(float(value) - target) <= tol
    except (TypeError, ValueError, RuntimeError):
        return False


def _on_identical(fn, n: int, *args):
    # all embeddings equal: every similarity is 1, the softmax is uniform and the loss is log N exactly
    x = torch.ones(n, 3, dtype=f64)
    return fn(x, x.clone(), *args) if args else fn(x, x.clone(), temperature=0.5)


def _tau_backwards(fn) -> bool:
    a, _ = _data(6, 4, 6)
    b = a + 0.05 * _data(6, 4, 8)[1]  # each positive is by far its row's most similar candidate
    return float(fn(a, b, temperature=0.05)) > float(fn(a, b, temperature=1.0)) + 1e-6


def _not_scale_invariant(fn) -> bool:
    a, b = _data(6, 4, 3)
    l1, l2 = fn(a, b, temperature=0.5), fn(3.0 * a, 0.5 * b, temperature=0.5)
    return bool(torch.isfinite(l1).all()) and not torch.allclose(torch.as_tensor(l1, dtype=f64), torch.as_tensor(l2, dtype=f64), atol=1e-6)


def _result_shape(fn):
    a, b = _data(5, 3, 4)
    out = fn(a, b, temperature=0.5)
    return tuple(out.shape) if isinstance(out, torch.Tensor) else None


def _unstable(fn) -> bool:
    a, b = _aligned32()
    out = fn(a, b, temperature=0.01)
    return isinstance(out, torch.Tensor) and not bool(torch.isfinite(out).all())


def _info_nce_cases(stable: bool):
    cases = [
        Case((*_data(4, 3, 0),), {"temperature": 0.5}, "N=4, D=3, τ=0.5"),
        Case((*_data(8, 5, 1, scale=3.0),), {"temperature": 0.1}, "N=8, D=5, τ=0.1, inputs not normalised"),
        Case((*_data(1, 4, 2),), {"temperature": 1.0}, "a batch of one pair, τ=1"),
        Case((*_data(16, 8, 3),), {"temperature": 0.2}, "N=16, D=8, τ=0.2"),
    ]
    if stable:
        cases += [Case(_aligned32(), {"temperature": 0.01}, "float32, τ=0.01, well-aligned pairs"),
                  Case(_aligned32(16, 8), {"temperature": 0.001}, "float32, τ=0.001")]
    return cases


def check_info_nce_naive(info_nce, raise_on_fail: bool = True) -> CheckResult:
    """Exercise 01.1: InfoNCE from the formula (exp and sum allowed), at moderate τ."""
    return run_check("info_nce (formula)", info_nce, losses.info_nce, _info_nce_cases(stable=False),
                     _info_nce_variants(), success="matches mmcourse.objectives.losses.info_nce on {n} cases (τ from 0.1 to 1, "
                     "inputs not normalised, a batch of one)", raise_on_fail=raise_on_fail)


def check_info_nce(info_nce, raise_on_fail: bool = True) -> CheckResult:
    """Exercise 01.3: InfoNCE that stays finite down to τ = 0.001 in float32."""
    diagnoses = [Property(_unstable, "not stable at τ=0.01: exp(sim/τ) overflows; use logsumexp",
                          ("never compute exp(sim/τ) itself: at τ = 0.01 it exceeds float32's range; work with logarithms throughout", 'log(e^{x_i} / Σ_j e^{x_j}) = x_i − log Σ_j e^{x_j}, and torch has a stable function for the last term (F.cross_entropy uses it too)'))]
    diagnoses += _info_nce_variants()
    return run_check("info_nce (stable)", info_nce, losses.info_nce, _info_nce_cases(stable=True), diagnoses,
                     success="matches mmcourse.objectives.losses.info_nce on {n} cases, finite at τ=0.01 and τ=0.001 in float32",
                     raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- symmetric CLIP loss

def _ce(logits):
    return F.cross_entropy(logits, torch.arange(len(logits)))


def _asymmetric(fn) -> bool:
    a, b = _data(6, 4, 5)
    a, b = _unit(a), _unit(b)
    return not torch.allclose(torch.as_tensor(fn(a, b, 10.0), dtype=f64), torch.as_tensor(fn(b, a, 10.0), dtype=f64),
                              atol=1e-6)


def check_clip_loss(clip_loss, raise_on_fail: bool = True) -> CheckResult:
    """Exercise 01.2: the symmetric CLIP loss `clip_loss(image_emb, text_emb, logit_scale)`."""
    def cases():
        out = []
        for n, d, seed, scale in [(4, 3, 10, 1.0), (8, 5, 11, 1 / 0.07), (1, 4, 12, 10.0), (16, 8, 13, 100.0)]:
            a, b = _data(n, d, seed)
            out.append(Case((_unit(a), _unit(b), scale), {}, f"N={n}, D={d}, logit_scale={scale:.3g}"))
        return out

    diagnoses = [
        Variant(lambda i, t, s: _ce(s * i @ t.T), "your loss is not symmetric: it is the image→text direction only",
                ("CLIP's loss is symmetric: images choose captions AND captions choose images", 'the second direction reads the same logit matrix by columns')),
        Variant(lambda i, t, s: _ce(s * t @ i.T), "your loss is not symmetric: it is the text→image direction only",
                ("CLIP's loss is symmetric: images choose captions AND captions choose images", 'the second direction reads the same logit matrix by columns')),
        Variant(lambda i, t, s: _ce(s * i @ t.T) + _ce(s * t @ i.T), "you added the two directions instead of averaging",
                "divide the sum of the two cross-entropies by 2"),
        Variant(lambda i, t, s: (_ce(i @ t.T / s) + _ce(t @ i.T / s)) / 2,
                "you divided by logit_scale: it is 1/τ, so it multiplies the similarities", ('logit_scale is 1/τ, so it multiplies the similarities', 'dividing by 1/τ is multiplying by τ: the opposite of what the temperature does')),
        Variant(lambda i, t, s: (_ce(math.exp(s) * i @ t.T) + _ce(math.exp(s) * t @ i.T)) / 2,
                "you exponentiated logit_scale again: it is passed already exponentiated (1/τ)",
                "use logit_scale as it is"),
        Variant(lambda i, t, s: (_ce(i @ t.T) + _ce(t @ i.T)) / 2, "logit_scale is ignored",
                ('the logits are scaled cosine similarities', 'where does 1/τ enter the formula?')),
        Variant(lambda i, t, s: (F.cross_entropy(s * i @ t.T, torch.arange(len(i)), reduction="sum")
                                 + F.cross_entropy(s * t @ i.T, torch.arange(len(i)), reduction="sum")) / 2,
                "returns a sum, not a mean", "average over the N pairs in each direction"),
        Property(lambda fn: _near(_on_identical(fn, 4, 10.0), 2 * math.log(4)),
                 "you added the two directions instead of averaging", "divide the sum of the two cross-entropies by 2"),
        Property(lambda fn: any(_near(_on_identical(fn, 4, 10.0), k * math.log(4)) for k in (4, 8)),
                 "returns a sum, not a mean", "average over the N pairs in each direction"),
        Property(_asymmetric, "your loss is not symmetric: swapping images and texts changes it",
                 "average the image→text and text→image cross-entropies"),
    ]
    return run_check("clip_loss", clip_loss, losses.clip_loss, cases(), diagnoses,
                     success="matches mmcourse.objectives.losses.clip_loss (and open_clip's ClipLoss) on {n} cases, "
                     "logit_scale from 1 to 100", raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- gradient

def _autograd_grad(sim: torch.Tensor, temperature: float) -> torch.Tensor:
    s = sim.detach().clone().requires_grad_(True)
    F.cross_entropy(s / temperature, torch.arange(len(s))).backward()
    return s.grad


def _grad_formula(sim, temperature, *, mean=True, tau=1, sign=1, dim=1, eye=True):
    p = torch.softmax(sim / temperature, dim=dim)
    g = sign * (p - (torch.eye(len(sim), dtype=sim.dtype) if eye else 0))
    return g / (len(sim) if mean else 1) / (temperature if tau == 1 else 1)


def check_info_nce_grad(grad_fn, raise_on_fail: bool = True) -> CheckResult:
    """Exercise 01.4: `grad_fn(sim, temperature)` returns ∂L/∂S for L = CE(S/τ, diagonal labels),
    S the (N, N) similarity matrix; compared with autograd."""
    g = torch.Generator().manual_seed(20)
    cases = [Case((torch.rand(n, n, generator=g, dtype=f64) * 2 - 1, tau), {}, f"N={n}, τ={tau}")
             for n, tau in [(3, 1.0), (5, 0.1), (8, 0.07)]]
    diagnoses = [
        Variant(lambda s, t: _grad_formula(s, t, sign=-1), "sign flipped: ∂L/∂s_ij is positive on negatives (p_ij) and "
                "negative on the positive (p_ii - 1)", "the gradient is (softmax - I) / (N τ), not (I - softmax)"),
        Variant(lambda s, t: _grad_formula(s, t, tau=0), "the 1/τ from the chain rule is missing",
                "L depends on S / τ, so ∂L/∂S = (1/τ) ∂L/∂(S/τ)"),
        Variant(lambda s, t: _grad_formula(s, t, mean=False), "this is the gradient of a sum, not a mean: divide by N",
                "the loss averages over the N rows, so each row's gradient carries 1/N"),
        Variant(lambda s, t: _grad_formula(s, t, eye=False), "the positive's -1 is missing: you only kept the softmax",
                "∂(-log p_ii)/∂x_ij = p_ij - [i = j]"),
        Variant(lambda s, t: _grad_formula(s, t, dim=0), "softmax over the wrong axis (columns instead of rows)",
                "each row i is one softmax over its candidates j: softmax(S / τ, dim=1)"),
    ]
    return run_check("gradient of InfoNCE", grad_fn, _autograd_grad, cases, diagnoses,
                     success="equals autograd's gradient on {n} cases: (softmax(S/τ) - I) / (N τ)",
                     rtol=1e-6, atol=1e-9, raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- temperature (assignment 02)

def check_gradient_weights(gradient_weights, raise_on_fail: bool = True) -> CheckResult:
    """Exercise 02.2: `gradient_weights(similarities, temperature, positive)` returns ∂L/∂s_j, shape (K,)."""
    cases = [Case((torch.tensor(temp.DEFAULT_SIMILARITIES, dtype=f64), tau, pos), {}, f"τ={tau}, positive={pos}")
             for tau, pos in [(1.0, 0), (0.07, 0)]]
    # A hard negative more similar than the positive, which is neither first nor most similar: this
    # case tells "the -1 always at 0" from "the -1 at the most similar candidate".
    cases.append(Case((torch.tensor([0.3, 0.9, 0.55, 0.8, 0.1, -0.1, -0.4], dtype=f64), 0.2, 3), {},
                      "τ=0.2, positive=3, a hard negative more similar than the positive"))
    cases += [Case((torch.tensor(temp.DEFAULT_SIMILARITIES, dtype=f64), tau, pos), {}, f"τ={tau}, positive={pos}")
              for tau, pos in [(0.2, 2), (0.01, 1)]]

    def p(s, t):
        return torch.softmax(s / t, dim=0)

    def onehot(s, pos):
        return F.one_hot(torch.tensor(pos), len(s)).to(s.dtype)

    diagnoses = [
        Variant(lambda s, t, pos: (onehot(s, pos) - p(s, t)) / t, "sign flipped: the loss grows with a negative's similarity, "
                "so ∂L/∂s_j = +p_j/τ for negatives", "∂L/∂s_j = (p_j - [j = positive]) / τ"),
        Variant(lambda s, t, pos: p(s, t) - onehot(s, pos), "the 1/τ from the chain rule is missing",
                "the logits are s / τ, so each derivative carries 1/τ"),
        Variant(lambda s, t, pos: (p(s, t) - onehot(s, pos)) * t, "temperature multiplied instead of divided",
                "the logits are s / τ: the chain rule gives a factor 1/τ"),
        Variant(lambda s, t, pos: (p(s, t) - onehot(s, pos)) / t ** 2, "you divided by τ twice",
                "p already uses s / τ; the chain rule adds one more 1/τ, not two"),
        Variant(lambda s, t, pos: p(s, t) / t, "the positive's -1 is missing: the positive must be pulled (negative gradient)",
                "the derivative of -log p_positive has an extra term at the positive itself"),
        Variant(lambda s, t, pos: (p(s, t) - onehot(s, 0)) / t, "the -1 always goes to candidate 0: `positive` says "
                "which candidate is the positive, and it is not always the first",
                "use the `positive` argument where you place the -1"),
        Variant(lambda s, t, pos: (p(s, t) - onehot(s, int(s.argmax()))) / t, "the -1 goes to the MOST SIMILAR "
                "candidate, but the positive is the one `positive` names (a hard negative can be more similar)",
                "use the `positive` argument where you place the -1"),
        Variant(lambda s, t, pos: (p(s * t, 1.0) - onehot(s, pos)) / t, "temperature multiplied instead of divided inside the softmax",
                "softmax(s / τ), not softmax(s * τ)"),
    ]
    return run_check("gradient_weights", gradient_weights, temp.similarity_gradient, cases, diagnoses,
                     success="matches autograd on {n} rows, τ from 0.01 to 1", raise_on_fail=raise_on_fail)


# Assignment 02's prediction is about a row the lesson never showed, so its numbers are not in the
# lesson's output: K = 5 candidates, the first the positive, at τ = 0.1.
PREDICTION_SIMILARITIES = temp.PREDICTION_SIMILARITIES
PREDICTION_TAU = 0.1


def check_temperature_predictions(loss_at_large_tau: float, hardest_share_at_small_tau: float,
                                  raise_on_fail: bool = True) -> CheckResult:
    """Exercise 02.1: numbers predicted before moving the slider, for `PREDICTION_SIMILARITIES`
    (K = 5 candidates, candidate 0 the positive): the loss as τ → ∞, and the share of the push on
    the hardest negative at τ = `PREDICTION_TAU` (a fraction between 0 and 1)."""
    row = PREDICTION_SIMILARITIES
    k = len(row)
    share = temp.explore(row, PREDICTION_TAU).negative_share.max().item()
    weights = [math.exp(x / PREDICTION_TAU) for x in row]
    p_hardest = weights[1] / sum(weights)  # a probability over all K candidates, not a share of the push
    name = "temperature predictions"
    if compare(math.log(k), loss_at_large_tau, rtol=0, atol=0.02) is not None:
        wrong = [(0.0, "a loss of 0 is the limit τ → 0 (the positive is the most similar, so it wins); "
                       "at large τ the softmax is uniform"),
                 (1 / k, f"1/{k} is the probability of the positive at large τ; the loss is minus its log"),
                 (math.log(k - 1), f"the positive is one of the K = {k} candidates: log {k}, not log {k - 1}")]
        msg = next((m for w, m in wrong if compare(w, loss_at_large_tau, rtol=0, atol=0.02) is None),
                   f"loss_at_large_tau = {loss_at_large_tau!r} is not the limit of the loss as τ → ∞")
        return finish(CheckResult(name, False, msg, ("at large τ every logit s/τ → 0: what is the softmax then?",
                                                     "the loss is −log of the positive's probability")),
                      raise_on_fail)
    if compare(share, hardest_share_at_small_tau, rtol=0, atol=0.01) is not None:
        hint = ("the push on negative j is proportional to p_j, so its share is p_j divided by the sum over the "
                "negatives only", f"compute e^(s_j/τ) with τ = {PREDICTION_TAU} for the {k - 1} negatives")
        if compare(100 * share, hardest_share_at_small_tau, rtol=0, atol=1.0) is None:
            msg = (f"{hardest_share_at_small_tau!r} looks like a percentage: a share is a fraction between 0 and 1 "
                   f"(the widget shows it as a percentage)")
        elif compare(p_hardest, hardest_share_at_small_tau, rtol=0, atol=0.005) is None:
            msg = ("that is the hardest negative's probability among all candidates; its share of the push divides "
                   "by the negatives only (the positive is pulled, not pushed)")
        elif compare(1 / (k - 1), hardest_share_at_small_tau, rtol=0, atol=0.005) is None:
            msg = f"1/{k - 1} is the share at large τ, where the push is spread evenly over the {k - 1} negatives"
        elif compare(1.0, hardest_share_at_small_tau, rtol=0, atol=0.01) is None:
            msg = f"at τ = {PREDICTION_TAU} the softmax is sharp but not yet one-hot: the second negative still gets some"
        else:
            msg = (f"hardest_share_at_small_tau = {hardest_share_at_small_tau!r} is not the share at "
                   f"τ = {PREDICTION_TAU}")
        return finish(CheckResult(name, False, msg, hint), raise_on_fail)
    return finish(CheckResult(name, True, f"right: as τ → ∞ the softmax is uniform and L → log {k} ≈ {math.log(k):.3f}; "
                              f"at τ = {PREDICTION_TAU} the hardest negative takes {100 * share:.1f}% of the push"),
                  raise_on_fail)
