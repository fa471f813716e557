"""Plots (every plot: title, axis labels, units) and lesson 02's interactive temperature explorer.

Public names are importable from here (`from mmcourse.viz import ...`), resolved lazily so importing
one of them pays only for its own module.
"""
from __future__ import annotations

from mmcourse._lazy import lazy_exports

_API = {
    "plots": ["plot_similarity_matrix", "plot_softmax_bars", "show_image_grid", "plot_modality_gap",
        "plot_occlusion_maps", "plot_history", "plot_embeddings_2d"],
    "temperature": ["DEFAULT_SIMILARITIES", "PREDICTION_SIMILARITIES", "DEFAULT_TEMPERATURES",
        "softmax_distribution", "row_loss", "similarity_gradient", "negative_shares", "negative_weights",
        "TemperatureView", "explore", "loss_curve", "draw_view", "plot_temperatures", "TemperatureExplorer",
        "temperature_explorer"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _API)
