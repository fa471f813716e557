"""Shared plots for the course. Every plot has a title, axis labels and units.

Each function draws on an `ax` you pass (or a new figure's) and returns the `Axes`, so a
lesson can compose panels. Figures are made with `matplotlib.pyplot` so that Jupyter's inline
backend shows them; size and dpi come from `mmcourse.utils.setup_notebook`.

Sections: similarity matrices · distributions over a row · (others append below, one section
each, with a header comment).
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from mmcourse.norms import l2_normalize

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]


def _numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


def _pca_2d(image_emb: torch.Tensor, text_emb: torch.Tensor) -> tuple[np.ndarray, float]:
    """Both sets L2-normalised (float32, `mmcourse.norms`), projected on their first two principal
    components: (N + M, 2) coordinates and the fraction of the variance they explain (1 when all
    points coincide, so a collapsed model shows 100%, not nan%)."""
    x = torch.cat([l2_normalize(e.detach().cpu().float()) for e in (image_emb, text_emb)])  # (N + M, D)
    centred = x - x.mean(0)
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    total = (s ** 2).sum().item()
    return (centred @ v[:2].T).numpy(), ((s[:2] ** 2).sum().item() / total if total > 0 else 1.0)


def _axes(ax, figsize=None):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


# ----------------------------------------------------------------------------- similarity matrices

def plot_similarity_matrix(
    sim: ArrayLike,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str = "Cosine similarity of every image with every text",
    ax=None,
    annotate: bool | None = None,
    xlabel: str = "text j",
    ylabel: str = "image i",
    cbar_label: str = "cosine similarity (unitless, −1 to 1)",
    vmin: float | None = -1.0,
    vmax: float | None = 1.0,
    highlight_diagonal: bool = True,
):
    """Heat map of an (N, M) similarity matrix; the diagonal (the positive pairs) is outlined.

    Args:
        sim: (N, M) similarities, e.g. `image_emb @ text_emb.T`.
        row_labels, col_labels: tick labels (length N and M); indices if None.
        title, xlabel, ylabel, cbar_label: texts (the colour bar states the unit).
        ax: axes to draw on; a new figure if None.
        annotate: write each value in its cell; default when N, M <= 10.
        vmin, vmax: colour range (None: from the data, e.g. for logits).
        highlight_diagonal: outline cells (i, i).

    Returns:
        The matplotlib `Axes`.
    """
    s = _numpy(sim)
    if s.ndim != 2:
        raise ValueError(f"sim must be 2-D (N, M), got shape {s.shape}")
    n, m = s.shape
    for labels, size, what in ((row_labels, n, "row_labels"), (col_labels, m, "col_labels")):
        if labels is not None and len(labels) != size:
            raise ValueError(f"{what} has {len(labels)} entries but the matrix has {size} along that axis")
    ax = _axes(ax, figsize=(1.0 + 0.55 * m, 0.8 + 0.5 * n) if max(n, m) <= 10 else None)
    im = ax.imshow(s, vmin=vmin, vmax=vmax, cmap="viridis", aspect="auto")
    ax.figure.colorbar(im, ax=ax, label=cbar_label)
    ax.set_xticks(range(m), labels=col_labels if col_labels is not None else range(m),
                  rotation=45 if col_labels is not None else 0, ha="right" if col_labels is not None else "center")
    ax.set_yticks(range(n), labels=row_labels if row_labels is not None else range(n))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(False)
    if annotate is None:
        annotate = max(n, m) <= 10
    if annotate:
        mid = (np.nanmin(s) + np.nanmax(s)) / 2 if vmin is None or vmax is None else (vmin + vmax) / 2
        for i in range(n):
            for j in range(m):
                ax.text(j, i, f"{s[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if s[i, j] > mid else "white")
    if highlight_diagonal:
        for i in range(min(n, m)):
            ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.5))
    return ax


# ----------------------------------------------------------------------------- distributions over a row

def plot_softmax_bars(
    probs: ArrayLike,
    labels: Sequence[str] | None = None,
    positive: int | None = 0,
    title: str = "Softmax over the candidates",
    ax=None,
    ylabel: str = "probability (0 to 1)",
    xlabel: str = "candidate j",
    ylim: tuple[float, float] | None = (0.0, 1.0),
):
    """Bar plot of a distribution over candidates; the positive is green, negatives grey.

    Args:
        probs: (K,) values (probabilities, or any per-candidate quantity with `ylabel`/`ylim`).
        labels: (K,) tick labels; indices if None.
        positive: index of the positive candidate to colour, or None.
        title, xlabel, ylabel: texts (ylabel states the unit).
        ax: axes to draw on; a new figure if None.
        ylim: y range; None lets matplotlib choose.

    Returns:
        The `Axes`; the bars are `ax.containers[0]`.
    """
    p = _numpy(probs)
    if p.ndim != 1:
        raise ValueError(f"probs must be 1-D (K,), got shape {p.shape}")
    if labels is not None and len(labels) != len(p):
        raise ValueError(f"labels has {len(labels)} entries, probs has {len(p)}")
    ax = _axes(ax)
    colours = ["tab:green" if j == positive else "tab:gray" for j in range(len(p))]
    ax.bar(range(len(p)), p, color=colours)
    ax.set_xticks(range(len(p)), labels=labels if labels is not None else range(len(p)))
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return ax


# ----------------------------------------------------------------------------- image grids (data, lesson 03)

def show_image_grid(
    images,
    captions: Sequence[str] | None = None,
    nrow: int = 8,
    title: str = "Images and their captions",
    cell_inches: float = 1.1,
    fontsize: float = 7.0,
    pad_value: float = 0.5,
):
    """A grid of images (via `torchvision.utils.make_grid`), each with its caption underneath.

    Args:
        images: (N, C, H, W) float tensor in [0, 1] (C = 1 or 3), or a list of (C, H, W).
        captions: N captions, wrapped to the width of an image; None: no captions.
        nrow: images per row.
        title: figure title.
        cell_inches: width of one image in inches.
        fontsize: caption font size (points).
        pad_value: grey level of the border between images.

    Returns:
        The `Figure` (one `Axes` per row of images, pixels shown unsmoothed and without ticks).
    """
    import textwrap

    from torchvision.utils import make_grid

    if isinstance(images, (list, tuple)):
        images = torch.stack(list(images))
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be (N, C, H, W) with C = 1 or 3, got {shape}")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"captions has {len(captions)} entries, images has {len(images)}")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    images = images.detach().float().cpu().clamp(0, 1)
    n, _, h, w = images.shape
    ncols = min(nrow, n)
    rows = (n + ncols - 1) // ncols
    pad = max(1, w // 16)  # border between images, in pixels
    # Layout in inches, placed by hand so captions never overlap the next row.
    chars = max(8, int(cell_inches * 72 / (0.55 * fontsize)))  # characters that fit under one image
    wrapped = [textwrap.wrap(c, chars) for c in captions] if captions is not None else []
    caption_h = (max(map(len, wrapped), default=0) * fontsize * 1.25 / 72 + 0.1) if captions is not None else 0.05
    grid_w, grid_h = ncols * (w + pad) + pad, h + 2 * pad  # pixels of one row's grid
    row_w = ncols * cell_inches
    row_h = row_w * grid_h / grid_w
    margin, title_h = 0.1, 0.4
    fig_w, fig_h = row_w + 2 * margin, rows * (row_h + caption_h) + title_h
    fig = plt.figure(figsize=(fig_w, fig_h))
    for r in range(rows):
        chunk = images[r * ncols:(r + 1) * ncols]
        k = len(chunk)  # a short last row keeps the same cell width
        grid = make_grid(chunk, nrow=k, padding=pad, pad_value=pad_value)  # (3, grid_h, k * (w + pad) + pad)
        bottom = fig_h - title_h - (r + 1) * row_h - r * caption_h
        width = row_w * grid.shape[2] / grid_w
        ax = fig.add_axes((margin / fig_w, bottom / fig_h, width / fig_w, row_h / fig_h))
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest", aspect="auto")
        ax.set_yticks([])
        ax.grid(False)
        for side in ax.spines.values():
            side.set_visible(False)
        if captions is not None:
            centres = [pad + c * (w + pad) + w / 2 for c in range(k)]
            labels = ["\n".join(lines) for lines in wrapped[r * ncols:r * ncols + k]]
            ax.set_xticks(centres, labels=labels, fontsize=fontsize, va="top")
            ax.tick_params(axis="x", length=0, pad=2)
        else:
            ax.set_xticks([])
    fig.suptitle(title, y=1 - 0.08 / fig_h, va="top")
    return fig


# ----------------------------------------------------------------------------- what CLIP learns (lesson 06)
# Owned by the evaluation lessons (05-06): the modality gap and occlusion maps.

def plot_modality_gap(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    title: str = "Image and text embeddings: two clouds, one gap",
    ax=None,
):
    """Image and text embeddings on the first two principal components of both sets together.

    Args:
        image_emb: (N, D) image embeddings (L2-normalised here).
        text_emb: (M, D) text embeddings (L2-normalised here).
        title: plot title.
        ax: an `Axes` to draw on (default: a new figure).

    Returns:
        The `Axes`. Crosses mark the two centroids; the line between them is the modality gap
        (its length in the plane is at most its length in D dimensions).
    """
    ax = _axes(ax, figsize=(4.8, 4.2))
    xy, explained = _pca_2d(image_emb, text_emb)  # (N + M, 2)
    n = image_emb.shape[0]
    for part, label, colour in ((xy[:n], "images", "C0"), (xy[n:], "texts", "C1")):
        ax.scatter(part[:, 0], part[:, 1], s=6, alpha=0.4, color=colour, label=label)
    c_img, c_txt = xy[:n].mean(0), xy[n:].mean(0)
    ax.plot([c_img[0], c_txt[0]], [c_img[1], c_txt[1]], "k-", lw=1.5, label="gap between centroids")
    ax.scatter([c_img[0], c_txt[0]], [c_img[1], c_txt[1]], marker="x", s=80, color="k", zorder=3)
    ax.set_xlabel("principal component 1 (unitless)")
    ax.set_ylabel("principal component 2 (unitless)")
    ax.set_title(f"{title}\n({explained:.0%} of the variance in this plane)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.set_aspect("equal", adjustable="datalim")
    return ax


def plot_occlusion_maps(
    images: torch.Tensor,
    maps: torch.Tensor,
    titles: Sequence[str] | None = None,
    title: str = "Occlusion sensitivity: drop in image–text similarity when a patch is hidden",
):
    """Each image (top row) above its occlusion map (bottom row, red = hiding it lowers the similarity).

    Args:
        images: (K, C, H, W) images in [0, 1].
        maps: (K, H, W) similarity drops from `mmcourse.evaluation.analysis.occlusion_map`.
        titles: K short titles, one per column.
        title: figure title.

    Returns:
        The `Figure`.
    """
    k = images.shape[0]
    if maps.shape[0] != k:
        raise ValueError(f"got {k} images but {maps.shape[0]} maps")
    fig, axes = plt.subplots(2, k, figsize=(1.9 * k, 4.1), squeeze=False)
    limit = maps.abs().max().item() or 1.0
    for j in range(k):
        img = images[j].detach().float().cpu().clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy()
        axes[0, j].imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        shown = axes[1, j].imshow(_numpy(maps[j]), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        if titles is not None:
            axes[0, j].set_title(titles[j], fontsize=8)
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
    axes[0, 0].set_ylabel("image")
    axes[1, 0].set_ylabel("occlusion map")
    fig.colorbar(shown, ax=axes[1, :].tolist(), shrink=0.8, label="similarity drop (cosine)")
    fig.suptitle(title, fontsize=10)
    return fig


# ----------------------------------------------------------------------------- training (lesson 04)

def plot_history(history, axes=None, figsize=(11.0, 3.2)):
    """Three panels of a `mmcourse.training.types.History`: the loss per step, the learned logit scale
    (and the temperature 1 / scale), and the learning rate.

    Args:
        history: a `History` from `fit`.
        axes: three `Axes` to draw on (default: a new 1 x 3 figure).

    Returns:
        The three `Axes`.
    """
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=figsize)
    ax_loss, ax_scale, ax_lr = axes
    ax_loss.plot(history.step, history.loss, lw=1)
    ax_loss.set(title="Training loss", xlabel="step", ylabel="loss (nats)")
    ax_scale.plot(history.step, history.logit_scale, color="C1", lw=1.5)
    ax_scale.set(title="Learned logit scale", xlabel="step", ylabel="logit scale 1/τ (unitless)")
    twin = ax_scale.twinx()
    twin.plot(history.step, [1 / s for s in history.logit_scale], color="C2", lw=1, ls="--")
    twin.set_ylabel("τ = 1 / scale (dashed)")
    twin.grid(False)
    ax_lr.plot(history.step, history.lr, color="C3", lw=1.5)
    ax_lr.set(title="Learning rate: warmup + cosine", xlabel="step", ylabel="learning rate (per step)")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax_loss.figure.tight_layout()
    return axes


def plot_embeddings_2d(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    image_labels: ArrayLike,
    text_labels: ArrayLike,
    classnames: Sequence[str] | None = None,
    title: str = "Image (•) and text (▲) embeddings, first two principal components",
    ax=None,
):
    """Image and text embeddings in one 2-D map (PCA of both sets together), coloured by class,
    with a different marker per modality.

    Args:
        image_emb: (N, D) image embeddings (L2-normalised here).
        text_emb: (M, D) text embeddings (L2-normalised here).
        image_labels, text_labels: (N,) and (M,) class indices, for the colours.
        classnames: names for the legend (default: the indices).
        title: plot title.
        ax: an `Axes` to draw on (default: a new figure).

    Returns:
        The `Axes`.
    """
    ax = _axes(ax, figsize=(5.5, 4.5))
    n = image_emb.shape[0]
    xy, explained = _pca_2d(image_emb, text_emb)  # (N + M, 2)
    labels = np.concatenate([_numpy(image_labels), _numpy(text_labels)]).astype(int)
    cmap = plt.get_cmap("tab10" if labels.max() < 10 else "tab20")
    for c in np.unique(labels):
        name = classnames[c] if classnames is not None else str(c)
        img, txt = (labels[:n] == c), (labels[n:] == c)
        ax.scatter(xy[:n][img, 0], xy[:n][img, 1], s=8, alpha=0.5, color=cmap(c % cmap.N), marker="o", label=name)
        ax.scatter(xy[n:][txt, 0], xy[n:][txt, 1], s=40, alpha=0.9, color=cmap(c % cmap.N), marker="^",
                   edgecolors="black", linewidths=0.5)
    ax.set_xlabel("principal component 1 (unitless)")
    ax.set_ylabel("principal component 2 (unitless)")
    ax.set_title(f"{title}\n({explained:.0%} of the variance)", fontsize=10)
    ax.legend(fontsize=7, markerscale=1.5, ncol=2, loc="best", title="class", title_fontsize=7)
    return ax
