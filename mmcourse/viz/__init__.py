"""Plots (every plot: title, axis labels, units) and lesson 02's interactive temperature explorer.

Public names are importable from here (`from mmcourse.viz import ...`), resolved lazily so importing
one of them pays only for its own module.
"""
from __future__ import annotations

import importlib

_API = {
    "plots": ["plot_similarity_matrix", "plot_softmax_bars", "show_image_grid", "plot_modality_gap",
        "plot_occlusion_maps", "plot_history", "plot_embeddings_2d"],
    "temperature": ["DEFAULT_SIMILARITIES", "PREDICTION_SIMILARITIES", "DEFAULT_TEMPERATURES",
        "softmax_distribution", "row_loss", "similarity_gradient", "negative_shares", "negative_weights",
        "TemperatureView", "explore", "loss_curve", "draw_view", "plot_temperatures", "TemperatureExplorer",
        "temperature_explorer"],
}
_WHERE = {name: module for module, names in _API.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
