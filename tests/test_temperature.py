"""Tests of mmcourse.viz.temperature: the pure functions against autograd and F.cross_entropy, the
explorer widget headless, and the toy experiment on a tiny configuration."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmcourse.models import toy
from mmcourse.recipes import temperature as E  # lesson 02's toy experiment
from mmcourse.viz import temperature as T  # the explorer
from mmcourse.objectives import alignment, uniformity

SIMS = (0.8, 0.7, 0.55, 0.3, 0.1, -0.1, -0.4)


@pytest.mark.parametrize("tau", [0.001, 0.01, 0.07, 1.0, 10.0])
@pytest.mark.parametrize("positive", [0, 3])
def test_pure_functions_match_autograd_and_cross_entropy(tau, positive):
    s = torch.tensor(SIMS, dtype=torch.float64, requires_grad=True)
    loss = F.cross_entropy((s / tau)[None], torch.tensor([positive]))
    loss.backward()
    assert T.row_loss(SIMS, tau, positive) == pytest.approx(loss.item(), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(T.similarity_gradient(SIMS, tau, positive), s.grad)
    torch.testing.assert_close(T.softmax_distribution(SIMS, tau), torch.softmax(s.detach() / tau, 0))
    w = T.negative_weights(SIMS, tau, positive)
    assert w[positive] == 0 and (w >= 0).all()
    torch.testing.assert_close(w.sum(), -s.grad[positive])  # pull on the positive = total push on negatives


def test_small_tau_focuses_on_hardest_negative_large_tau_spreads():
    cold, hot = T.explore(SIMS, 0.01), T.explore(SIMS, 10.0)
    assert cold.hardest_negative == 1  # s = 0.7, the most similar negative
    assert cold.negative_share[1] > 0.99
    shares = hot.negative_share[1:]
    assert shares.max() / shares.min() < 1.2  # nearly uniform over the 6 negatives
    # first order in 1/τ: L ≈ log K - (s_pos - mean(s)) / τ → log K as τ grows
    assert hot.loss == pytest.approx(math.log(7) - (0.8 - sum(SIMS) / 7) / 10, abs=2e-3)
    assert T.row_loss(SIMS, 1e4) == pytest.approx(math.log(7), abs=1e-4)
    assert cold.loss < 1e-3
    torch.testing.assert_close(cold.negative_share.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_stable_at_tiny_tau():
    v = T.explore((1.0, -1.0, 0.99), 0.001)
    assert math.isfinite(v.loss) and torch.isfinite(v.gradient).all()
    assert v.loss == pytest.approx(math.log1p(math.exp(-10) + math.exp(-2000)), rel=1e-9)


@pytest.mark.parametrize("call,match", [
    (lambda: T.explore([0.5], 0.1), "at least 2"),
    (lambda: T.explore([[0.5, 0.1]], 0.1), "1-D"),
    (lambda: T.explore(SIMS, 0.0), "temperature must be > 0"),
    (lambda: T.explore(SIMS, -1), "temperature must be > 0"),
    (lambda: T.explore(SIMS, 0.1, positive=7), "positive must index"),
    (lambda: T.explore((0.1, float("nan")), 0.1), "NaN"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_explorer_widget_headless():
    import ipywidgets as widgets

    box = T.temperature_explorer()
    ex = box.explorer
    assert isinstance(box, widgets.VBox)
    assert isinstance(ex.slider, widgets.FloatLogSlider) and ex.slider.description == "τ"
    assert ex.slider.base == 10 and ex.slider.min == -3 and ex.slider.max == 1
    assert ex.slider in box.children[1].children and ex.image in box.children
    before_png, before = ex.image.value, dict(ex.plotted)
    assert before_png[:8] == b"\x89PNG\r\n\x1a\n"
    torch.testing.assert_close(torch.tensor(before["probs"]), T.explore(SIMS, 0.07).probs, check_dtype=False)

    ex.slider.value = 0.01  # as a learner moving the slider: the observer redraws
    assert ex.view.temperature == pytest.approx(0.01)
    assert ex.plotted["probs"] != before["probs"]
    assert ex.plotted["probs"][0] > 0.99  # the positive takes (almost) all the mass
    assert ex.plotted["marker"] == (pytest.approx(0.01), pytest.approx(T.row_loss(SIMS, 0.01)))
    assert ex.image.value != before_png
    assert "loss" in ex.summary.value and "100%" in ex.summary.value

    view = ex.update(5.0)  # the update function called directly
    assert view.loss == pytest.approx(T.row_loss(SIMS, 5.0))
    assert max(ex.plotted["probs"]) < 0.2


def test_explorer_custom_row_and_positive():
    ex = T.TemperatureExplorer([0.1, 0.9, 0.2], positive=1, temperature=0.5)
    assert ex.view.positive == 1
    assert ex.plotted["probs"][1] == max(ex.plotted["probs"])
    with pytest.raises(ValueError, match="positive must index"):
        T.TemperatureExplorer([0.1, 0.9], positive=2)


def test_static_plot_has_titles_and_labels():
    fig = T.plot_temperatures(SIMS, (0.01, 1.0))
    for ax in fig.axes:
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert len(fig.axes) == 6


def test_toy_data_and_model_shapes():
    cfg = toy.ToyConfig(num_train=64, num_val=32, num_classes=4)
    data = E.make_toy_data(cfg)
    assert data["train"]["image"].shape == (64, cfg.input_dim) and data["val"]["label"].shape == (32,)
    assert data["prompts"]["text"].shape == (4, cfg.input_dim)
    model = toy.ToyCLIP(cfg, temperature=0.2)
    out = model(data["val"]["image"], data["val"]["text"])
    assert out["image_embeds"].shape == (32, 3)
    torch.testing.assert_close(out["image_embeds"].norm(dim=-1), torch.ones(32))
    assert out["logit_scale"].item() == pytest.approx(5.0)
    assert not model.logit_scale.requires_grad
    learned = toy.ToyCLIP(cfg)
    assert learned.logit_scale.requires_grad and learned.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    m = E.evaluate_toy(model, data)
    emb_i, emb_t = model.encode_image(data["val"]["image"]), model.encode_text(data["val"]["text"])
    assert m["alignment"] == pytest.approx(alignment(emb_i, emb_t).item())
    assert m["uniformity"] == pytest.approx(((uniformity(emb_i) + uniformity(emb_t)) / 2).item())
    assert 0 <= m["zero_shot_top1"] <= 1 and 0 <= m["image_to_text_R@1"] <= 1


def test_tensor_batches_cover_data_once_per_epoch():
    data = {"x": torch.arange(10), "y": torch.arange(10) * 2}
    loader = E.TensorBatches(data, 3, torch.Generator().manual_seed(0))
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    seen = torch.cat([b["x"] for b in batches])
    assert len(set(seen.tolist())) == 9
    assert all(torch.equal(b["y"], b["x"] * 2) for b in batches)
    with pytest.raises(ValueError, match="larger than the data"):
        E.TensorBatches(data, 11)


def test_experiment_trains_and_learned_scale_is_clamped():
    pytest.importorskip("mmcourse.training.loop")
    cfg = toy.ToyConfig(num_train=512, num_val=128, epochs=3, batch_size=64)
    runs = E.run_temperature_experiment(temperatures=(0.07,), learned=True, config=cfg)
    fixed, learned = runs
    assert [r.name for r in runs] == ["τ = 0.07", "learned"]
    assert fixed.final_temperature == pytest.approx(0.07)  # a fixed τ is not trained
    assert all(s == pytest.approx(1 / 0.07) for s in fixed.history.logit_scale)
    assert 1.0 <= min(learned.history.logit_scale) and max(learned.history.logit_scale) <= 100.0 + 1e-4
    assert learned.final_temperature != pytest.approx(0.07, abs=1e-4)  # it moved
    for r in runs:
        assert r.history.loss[-1] < r.history.loss[0]  # it learned something
        assert r.metrics["zero_shot_top1"] > 0.3  # chance is 0.1
        assert len(r.history.val) == 3
    fig = E.plot_temperature_experiment(runs)
    for ax in fig.axes:
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


# ----------------------------------------------------------------------------- the whole slider range

def _reference(similarities, tau, positive):
    """Every number of a view, from the formulas in plain Python float64 and log-space."""
    logits = [s / tau for s in similarities]

    def log_sum_exp(values):
        m = max(values)
        return m + math.log(math.fsum(math.exp(v - m) for v in values))

    lse = log_sum_exp(logits)
    probs = [math.exp(v - lse) for v in logits]
    p_neg = math.fsum(p for j, p in enumerate(probs) if j != positive)  # = 1 - p_pos, without cancelling
    grad = [-p_neg / tau if j == positive else p / tau for j, p in enumerate(probs)]
    negatives = [v for j, v in enumerate(logits) if j != positive]
    lse_neg = log_sum_exp(negatives)
    share = [0.0 if j == positive else math.exp(v - lse_neg) for j, v in enumerate(logits)]
    margins = [(s - similarities[positive]) / tau for j, s in enumerate(similarities) if j != positive]
    if max(margins) <= 0:  # -log p_pos = log(1 + Σ e^{margin}), to full relative precision
        loss = math.log1p(math.fsum(math.exp(d) for d in margins))
    else:
        loss = log_sum_exp([0.0] + margins)
    return {"probs": probs, "loss": loss, "gradient": grad, "negative_share": share}


def test_negative_shares_at_tiny_tau_issue_input():
    # every p_j of a negative underflows to 0 at τ = 0.001: p_j / Σ p_k was 0/0 = nan
    v = T.explore([0.9, -0.9, -0.8], 0.001)
    expected = [0.0, math.exp(-100) / (1 + math.exp(-100)), 1 / (1 + math.exp(-100))]
    assert v.negative_share.tolist() == pytest.approx(expected, rel=1e-12, abs=0)
    assert v.negative_share[1].item() == pytest.approx(3.7e-44, rel=0.01)
    assert v.hardest_negative == 2
    torch.testing.assert_close(T.negative_shares([0.9, -0.9, -0.8], 0.001), v.negative_share)


SLIDER_ROWS = [  # similarities at the ends of [-1, 1], positive best, worst, tied, and in between
    ((1.0, -1.0, -1.0), 0), ((-1.0, 1.0, 1.0), 0), ((1.0, 1.0, 1.0), 1), ((-1.0, -1.0), 1),
    ((0.9, -0.9, -0.8), 0), ((1.0, -1.0, 0.999), 0), ((1.0, -1.0), 0), ((-1.0, 1.0, -1.0, 0.5, -0.5), 4),
    (SIMS, 0), (SIMS, 6),
]
SLIDER_TAUS = sorted({T.TAU_MIN, T.TAU_MAX, *torch.logspace(-3, 1, 41, dtype=torch.float64).tolist()})


@pytest.mark.parametrize("row,positive", SLIDER_ROWS)
def test_every_number_finite_and_right_over_the_slider_range(row, positive):
    for tau in SLIDER_TAUS:
        v = T.explore(row, tau, positive)
        ref = _reference(row, tau, positive)
        for name in ("probs", "gradient", "negative_share"):
            got = getattr(v, name)
            assert torch.isfinite(got).all(), (name, row, tau)
            torch.testing.assert_close(got, torch.tensor(ref[name], dtype=torch.float64), rtol=1e-9, atol=1e-300,
                                       msg=f"{name} at τ = {tau}, row {row}")
        assert math.isfinite(v.loss) and v.loss == pytest.approx(ref["loss"], rel=1e-12, abs=1e-300)
        assert v.probs.sum().item() == pytest.approx(1.0, abs=1e-12)
        assert v.negative_share.sum().item() == pytest.approx(1.0, abs=1e-12) and v.negative_share[positive] == 0
        weights = T.negative_weights(row, tau, positive)
        assert torch.isfinite(weights).all() and (weights >= 0).all()
    taus, losses = T.loss_curve(row, positive=positive)
    assert taus[0] == pytest.approx(T.TAU_MIN) and taus[-1] == pytest.approx(T.TAU_MAX)
    assert np.isfinite(losses).all()
    assert losses.tolist() == pytest.approx([_reference(row, t, positive)["loss"] for t in taus], rel=1e-12, abs=1e-300)


def test_plotted_numbers_finite_over_the_slider_range():
    import warnings

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3)
    for row, positive in SLIDER_ROWS[:8]:
        curve = T.loss_curve(row, positive=positive)
        for tau in (T.TAU_MIN, 10 ** -2.5, 0.07, 1.0, T.TAU_MAX):
            view = T.explore(row, tau, positive)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no "invalid value" or log-scale warnings either
                plotted = T.draw_view(view, axes, curve)
            assert np.isfinite(plotted["probs"]).all() and np.isfinite(plotted["weights"]).all()
            assert np.isfinite(plotted["marker"]).all()
            # bars are drawn in float32: the view's float64 numbers rounded once (below 1e-45 -> 0)
            np.testing.assert_allclose(plotted["probs"], view.probs.float().numpy(), rtol=1e-6, atol=0)
            np.testing.assert_allclose(plotted["weights"], view.gradient.abs().float().numpy(), rtol=1e-6, atol=0)
            for ax in axes:
                low, high = ax.get_ylim()
                assert np.isfinite([low, high]).all() and low < high
    plt.close(fig)


@pytest.mark.parametrize("row,positive", [SLIDER_ROWS[1], SLIDER_ROWS[4]])
def test_widget_summary_at_the_slider_ends(row, positive):
    ex = T.TemperatureExplorer(row, positive=positive)
    for tau in (T.TAU_MIN, T.TAU_MAX):
        ex.slider.value = tau
        assert ex.view.temperature == pytest.approx(tau)
        assert "nan" not in ex.summary.value.lower() and "inf" not in ex.summary.value.lower()
        if row == (0.9, -0.9, -0.8) and tau == T.TAU_MIN:  # the issue's row: was "nan%"
            assert "(s = -0.80) gets <b>100%</b> of the push" in ex.summary.value
        assert ex.image.value[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_toy_clip_normalises_in_float32(dtype):
    cfg = toy.ToyConfig(num_train=64, num_val=32, num_classes=4)
    model = toy.ToyCLIP(cfg, temperature=0.2).to(dtype)
    x = E.make_toy_data(cfg)["val"]["image"][:5].to(dtype)
    with torch.no_grad():
        model.image_encoder[2].weight[:] = 0  # a dead tower: zero embeddings, not NaN
        model.image_encoder[2].bias[:] = 0
        out = model(x, x)
    assert (out["image_embeds"] == 0).all() and out["image_embeds"].dtype == dtype
    torch.testing.assert_close(out["text_embeds"].float().norm(dim=-1), torch.ones(5), rtol=0, atol=1e-2)
