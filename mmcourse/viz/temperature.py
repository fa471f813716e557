"""What temperature does: pure functions over one row of similarities, the interactive explorer
built on them, and a toy training experiment with fixed and learned temperature.

For one anchor with similarities s_j to K candidates (candidate `positive` is its pair), InfoNCE
is a K-way cross-entropy over the logits s_j / τ::

    p_j = softmax(s / τ)_j                      the softmax distribution
    L   = -log p_pos                            the loss
    ∂L/∂s_j = (p_j - [j = pos]) / τ             the gradient on each similarity

So a negative j is pushed away with weight p_j / τ: at small τ the softmax is sharp, almost all
of the push goes to the hardest negatives (the most similar ones); at large τ it is spread
evenly over all negatives and the loss tends to log K.

Every number is computed in float64 from the logits s / τ with log-sum-exp (softmax, loss) or as
a softmax over the negatives alone (their shares of the push), so all of them stay finite over
the explorer's whole range, τ from 0.001 to 10 with similarities in [-1, 1], even where every
p_j of a negative underflows to 0.

Sections: pure functions · explorer widget · toy experiment.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from mmcourse.viz.plots import plot_softmax_bars

DEFAULT_SIMILARITIES = (0.8, 0.7, 0.55, 0.3, 0.1, -0.1, -0.4)  # pos, 2 hard negatives, easy ones
PREDICTION_SIMILARITIES = (0.6, 0.5, 0.2, -0.1, -0.5)  # assignment 02's row, never shown in the lesson
DEFAULT_TEMPERATURES = (0.01, 0.07, 0.2, 1.0)
TAU_MIN, TAU_MAX = 1e-3, 10.0


# ----------------------------------------------------------------------------- pure functions

def _row(similarities: Sequence[float] | torch.Tensor, positive: int) -> torch.Tensor:
    s = torch.as_tensor(similarities, dtype=torch.float64)
    if s.dim() != 1 or s.numel() < 2:
        raise ValueError(f"similarities must be a 1-D row of at least 2 values, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError("similarities contain NaN or inf")
    if not 0 <= positive < s.numel():
        raise ValueError(f"positive must index the row (0..{s.numel() - 1}), got {positive}")
    return s


def _tau(temperature: float) -> float:
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be > 0 and finite, got {temperature}")
    return t


def softmax_distribution(similarities, temperature: float) -> torch.Tensor:
    """p = softmax(s / τ): the probability the model gives each candidate. Shape (K,)."""
    s = _row(similarities, 0)
    return torch.softmax(s / _tau(temperature), dim=0)


def row_loss(similarities, temperature: float, positive: int = 0) -> float:
    """L = -log p_pos = logsumexp(s / τ) - s_pos / τ = log(1 + Σ_{j≠pos} exp((s_j - s_pos) / τ)).

    Computed from the margins d_j = (s_j - s_pos) / τ, with `log1p` when the positive is the
    most similar, so the loss is right to float64's relative precision at any τ (not rounded to
    0 when it is 1e-20) and never overflows.
    """
    s, t = _row(similarities, positive), _tau(temperature)
    d = torch.cat([s[:positive], s[positive + 1:]]).sub(s[positive]).div(t)  # (K-1,) margins of the negatives
    m = float(d.max())
    if m <= 0:  # the positive wins: L = log1p(Σ e^{d_j}), each e^{d_j} <= 1
        return float(torch.log1p(torch.exp(d).sum()))
    return m + float(torch.log(math.exp(-m) + torch.exp(d - m).sum()))  # a negative wins: L >= m > 0


def similarity_gradient(similarities, temperature: float, positive: int = 0) -> torch.Tensor:
    """∂L/∂s_j = (p_j - [j = pos]) / τ, shape (K,): negative on the positive (gradient descent
    pulls it closer), positive on each negative (pushed away with weight p_j / τ).

    The positive's entry p_pos - 1 is computed as -Σ_{j≠pos} p_j, which it equals: when p_pos
    rounds to 1 at small τ, the difference would lose every digit.
    """
    s, t = _row(similarities, positive), _tau(temperature)
    p = torch.softmax(s / t, dim=0)  # (K,)
    grad = p / t
    grad[positive] = -torch.cat([p[:positive], p[positive + 1:]]).sum() / t  # the pull = the total push
    return grad


def negative_shares(similarities, temperature: float, positive: int = 0) -> torch.Tensor:
    """Each negative's share of the push, p_j / Σ_{k≠pos} p_k, shape (K,), 0 on the positive.

    The p_j cancel their common denominator, so the shares are a softmax of s_j / τ over the
    negatives alone: finite and summing to 1 even when every p_j underflows to 0 (at τ = 0.001,
    `[0.9, -0.9, -0.8]` gives `[0, 3.7e-44, 1]`, where p_j / Σ p_k would be 0 / 0).
    """
    s, t = _row(similarities, positive), _tau(temperature)
    logits = s / t  # (K,) float64
    logits[positive] = -math.inf  # the positive takes no share
    return torch.softmax(logits, dim=0)  # subtracts the largest negative logit first: no overflow


def negative_weights(similarities, temperature: float, positive: int = 0) -> torch.Tensor:
    """The gradient weight p_j / τ on each negative j (the positive's entry is 0). Shape (K,)."""
    w = similarity_gradient(similarities, temperature, positive).clone()
    w[positive] = 0.0
    return w


@dataclass(frozen=True)
class TemperatureView:
    """Everything the explorer shows for one τ."""

    temperature: float
    similarities: torch.Tensor  # (K,)
    positive: int
    probs: torch.Tensor  # (K,) softmax(s/τ)
    loss: float  # -log p_pos
    gradient: torch.Tensor  # (K,) ∂L/∂s
    negative_share: torch.Tensor  # (K,) p_j / Σ_{k≠pos} p_k on negatives, 0 on the positive

    @property
    def hardest_negative(self) -> int:
        return int(torch.argmax(self.negative_share))


def explore(similarities=DEFAULT_SIMILARITIES, temperature: float = 0.07, positive: int = 0) -> TemperatureView:
    """Compute the softmax, loss, gradient and share of the push on each negative at τ.

    Every field is finite for any τ > 0 and finite similarities (float64 throughout; see
    `negative_shares` for the shares at tiny τ).
    """
    s = _row(similarities, positive)
    return TemperatureView(
        temperature=_tau(temperature), similarities=s, positive=positive,
        probs=softmax_distribution(s, temperature), loss=row_loss(s, temperature, positive),
        gradient=similarity_gradient(s, temperature, positive),
        negative_share=negative_shares(s, temperature, positive),
    )


def loss_curve(similarities=DEFAULT_SIMILARITIES, temperatures=None, positive: int = 0):
    """(τ values, losses) over a log grid of τ, for the loss-vs-τ panel."""
    taus = np.geomspace(TAU_MIN, TAU_MAX, 121) if temperatures is None else np.asarray(temperatures, dtype=float)
    return taus, np.array([row_loss(similarities, t, positive) for t in taus])


# ----------------------------------------------------------------------------- plotting (shared by widget and lessons)

def _labels(view: TemperatureView) -> list[str]:
    return [("pos\n" if j == view.positive else "\n") + f"{v:+.2f}" for j, v in enumerate(view.similarities.tolist())]


def draw_view(view: TemperatureView, axes, curve=None) -> dict[str, list]:
    """Draw the three panels of `view` on three axes; returns the plotted data (for tests)."""
    ax_p, ax_g, ax_l = axes
    for ax in axes:
        ax.clear()
    labels = _labels(view)
    plot_softmax_bars(view.probs, labels, view.positive, ax=ax_p,
                      title=f"softmax(s/τ) at τ = {view.temperature:.3g}",
                      xlabel="candidate (its cosine similarity s_j)")
    weights = view.gradient.abs()
    plot_softmax_bars(weights, labels, view.positive, ax=ax_g, ylim=None,
                      title="gradient weight |∂L/∂s_j|", ylabel="|∂L/∂s_j| (per unit of similarity)",
                      xlabel="candidate (green: pulled, grey: pushed)")
    for ax in (ax_p, ax_g):
        ax.tick_params(axis="x", labelsize=8)
    # limits first, then the log scale: at τ = 0.001 every weight can underflow to 0, and
    # autoscaling a log axis over no positive value only warns
    ax_g.set_ylim(max(1e-6, float(weights[weights > 0].min()) / 2) if (weights > 0).any() else 1e-6,
                  max(1.0, float(weights.max()) * 2))
    ax_g.set_yscale("log")  # the weights span many orders of magnitude at small τ
    taus, losses = curve if curve is not None else loss_curve(view.similarities, positive=view.positive)
    ax_l.plot(taus, losses, color="tab:blue", label="L(τ) for this row")
    ax_l.axhline(math.log(len(view.similarities)), color="tab:gray", ls="--", label=f"log K = {math.log(len(view.similarities)):.2f}")
    ax_l.plot([view.temperature], [view.loss], "o", color="tab:red", label=f"τ = {view.temperature:.3g}: L = {view.loss:.3f}")
    ax_l.set_xscale("log")
    ax_l.set_title("loss vs temperature")
    ax_l.set_xlabel("temperature τ (log scale)")
    ax_l.set_ylabel("loss L (nats)")
    ax_l.legend(fontsize=7, loc="center left")
    return {"probs": [b.get_height() for b in ax_p.containers[0]],
            "weights": [b.get_height() for b in ax_g.containers[0]],
            "marker": (view.temperature, view.loss)}


def plot_temperatures(similarities=DEFAULT_SIMILARITIES, temperatures=(0.01, 0.07, 1.0), positive: int = 0):
    """Static version of the explorer: one row of panels per τ (for rendered lessons)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(temperatures), 3, figsize=(12, 2.8 * len(temperatures)), squeeze=False)
    curve = loss_curve(similarities, positive=positive)
    for row, t in zip(axes, temperatures):
        draw_view(explore(similarities, t, positive), row, curve)
    fig.suptitle("Softmax, gradient weights and loss for one row of similarities", y=1.0)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- explorer widget

def _widgets():
    import ipywidgets as widgets

    return widgets


class TemperatureExplorer:
    """The interactive explorer: a log-scale τ slider over the three panels of `draw_view`.

    `explorer.widget` is the ipywidgets box (display it); `explorer.slider` the τ slider;
    `explorer.update()` redraws for the slider's value and returns the `TemperatureView`
    (it runs headless, so tests set `slider.value` and read `explorer.plotted`).
    """

    def __init__(self, similarities=None, positive: int = 0, temperature: float = 0.07):
        from matplotlib.figure import Figure  # not pyplot: the inline backend must not show it twice

        widgets = _widgets()
        self.similarities = _row(DEFAULT_SIMILARITIES if similarities is None else similarities, positive)
        self.positive = positive
        self._curve = loss_curve(self.similarities, positive=positive)
        self.figure = Figure(figsize=(11, 3.2), dpi=80)
        self.axes = self.figure.subplots(1, 3)
        self.slider = widgets.FloatLogSlider(
            value=_tau(temperature), base=10, min=math.log10(TAU_MIN), max=math.log10(TAU_MAX), step=0.01,
            description="τ", readout_format=".3f", continuous_update=True,
            layout=widgets.Layout(width="480px"),
        )
        self.summary = widgets.HTML()
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        header = widgets.HTML("<b>Temperature explorer</b>: move τ (log scale, 0.001 to 10) and watch the softmax, "
                              "the gradient on each negative, and the loss.")
        self.widget = widgets.VBox([header, widgets.HBox([self.slider, self.summary]), self.image])
        self.widget.add_class("mmcourse-temperature-explorer")
        self.plotted: dict[str, list] = {}
        self.view: TemperatureView | None = None
        self.slider.observe(lambda change: self.update(change["new"]), names="value")
        self.update()

    def update(self, temperature: float | None = None) -> TemperatureView:
        """Recompute and redraw for `temperature` (default: the slider's value)."""
        t = self.slider.value if temperature is None else _tau(temperature)
        view = explore(self.similarities, t, self.positive)
        self.plotted = draw_view(view, self.axes, self._curve)
        self.figure.tight_layout()
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png")
        self.image.value = buf.getvalue()
        hard = view.hardest_negative
        self.summary.value = (f"&nbsp;loss <b>{view.loss:.3f}</b> nats · p(positive) <b>{view.probs[view.positive]:.3f}</b>"
                              f" · hardest negative (s = {view.similarities[hard]:+.2f}) gets "
                              f"<b>{100 * view.negative_share[hard]:.0f}%</b> of the push")
        self.view = view
        return view

    def _ipython_display_(self):  # display(explorer) shows the widget
        from IPython.display import display

        display(self.widget)


def temperature_explorer(similarities=None, positive: int = 0, temperature: float = 0.07):
    """Build the explorer widget for a row of similarities (default: `DEFAULT_SIMILARITIES`).

    Returns:
        The ipywidgets `VBox` to display; its `.explorer` attribute is the `TemperatureExplorer`
        (slider, update function, last view and plotted data).
    """
    explorer = TemperatureExplorer(similarities, positive, temperature)
    explorer.widget.explorer = explorer
    return explorer.widget
