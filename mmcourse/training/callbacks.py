"""Callbacks of `mmcourse.training.loop.fit` and the running state they see.

A `Callback` is told when training begins, after every step, after every epoch and when
training ends; it reads (and may stop) the run through the `TrainState`. `LivePlot` redraws the
loss and the validation metrics in a notebook once per epoch.
"""
from __future__ import annotations

from typing import Sequence


from mmcourse.training.types import Callback, TrainState

__all__ = ["LivePlot"]


class LivePlot(Callback):
    """A live plot of the loss (and validation metrics) in a notebook, redrawn once per epoch.

    Args:
        metrics: names of validation metrics to plot on a second axis (e.g. "zero_shot_top1");
            None plots every metric `val_fn` returns.
        every: redraw every this many epochs.
    """

    def __init__(self, metrics: Sequence[str] | None = None, every: int = 1, figsize=(7.0, 3.0)):
        self.metrics, self.every, self.figsize = metrics, every, figsize
        self._handle = None

    def _draw(self, state: TrainState):
        import matplotlib.pyplot as plt

        h = state.history
        fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=self.figsize)
        ax_loss.plot(h.epoch, h.loss, lw=1)
        ax_loss.set(title="training loss", xlabel="epoch", ylabel="CLIP loss (nats)")
        ax_loss.set_xlim(0, state.config.epochs)
        names = self.metrics or sorted({k for row in h.val for k in row} - {"epoch", "step", "time"})
        values = []
        for name in names:
            xs = [r["epoch"] for r in h.val if name in r]
            values += [r[name] for r in h.val if name in r]
            ax_val.plot(xs, [r[name] for r in h.val if name in r], marker="o", ms=3, label=name)
        fractions = bool(values) and all(0.0 <= v <= 1.0 for v in values)  # accuracies, recalls: give the unit
        ax_val.set(title="validation", xlabel="epoch",
                   ylabel="metric value (fraction, 0 to 1)" if fractions else "metric value")
        if fractions:
            ax_val.set_ylim(0, 1.02)
        ax_val.set_xlim(0, state.config.epochs)
        if names:
            ax_val.legend(fontsize=8)
        fig.tight_layout()
        plt.close(fig)  # shown through the display handle only, not again at the cell's end
        return fig

    def _show(self, state: TrainState) -> None:
        try:
            from IPython.display import display
        except ImportError:  # pragma: no cover
            return
        fig = self._draw(state)
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)

    def on_epoch_end(self, state: TrainState) -> None:
        if state.epoch % self.every == 0 or state.epoch == state.config.epochs:
            self._show(state)

    def on_train_end(self, state: TrainState) -> None:
        if state.epoch % self.every != 0:
            self._show(state)
