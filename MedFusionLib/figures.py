"""Figures of fused volumes: sources and result in three orthogonal planes (matplotlib, Agg)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import optional
from .colour import apply_colour_table, colour_table
from .outputs import atomic_output

__all__ = ["orthogonal_planes", "save_planes_figure", "contribution_overlay", "save_figure",
           "add_contribution_legend"]


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 90) -> Path:
    """Save a matplotlib figure as PNG atomically (:func:`MedFusionLib.outputs.atomic_output`), close it."""
    plt = optional.pyplot()
    p = Path(path)
    try:
        with atomic_output(p) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return p


def add_contribution_legend(fig, axes) -> None:
    """A colour bar explaining :func:`contribution_overlay`'s tint, beside ``axes``."""
    cm, colors = optional.require("matplotlib.cm"), optional.require("matplotlib.colors")
    legend = cm.ScalarMappable(cmap=colors.ListedColormap(colour_table("contribution")))
    legend.set_clim(0.0, 1.0)
    bar = fig.colorbar(legend, ax=axes, fraction=0.046, pad=0.02)
    bar.set_label("source share: 0 = moving, 1 = fixed")


def contribution_overlay(fused01: np.ndarray, weight_fixed: np.ndarray, *, alpha: float = 0.55) -> np.ndarray:
    """The fused image tinted by which source each pixel came from: ``(...)`` -> ``(..., 3)`` RGB.

    Blue where the moving source dominates, orange where the fixed source does, grey where they
    share equally (the ``contribution`` colour table of :mod:`MedFusionLib.colour`); brightness is
    the fused image, so anatomy stays readable. Background (fused < 0.02) stays untinted.
    """

    grey = np.clip(np.asarray(fused01, dtype=np.float32), 0.0, 1.0)[..., None]
    tint = apply_colour_table(weight_fixed, "contribution")
    a = alpha * (grey > 0.02)
    return np.clip((1 - a) * grey + a * tint * (0.3 + 0.7 * grey), 0.0, 1.0)


def orthogonal_planes(volume: np.ndarray, centre=None, *, rgb: bool = False) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices through ``centre`` of a (z, y, x) volume, display-oriented.

    For a 2D image, returns ``[image]``. With ``rgb`` the last axis holds colour channels.
    """
    if volume.ndim == (3 if rgb else 2):
        return [volume]
    z, y, x = (np.array(volume.shape[:3]) // 2) if centre is None else centre
    return [volume[z], np.flipud(volume[:, y, :]), np.flipud(volume[:, :, x])]


def save_planes_figure(path: str | os.PathLike, panels: dict[str, np.ndarray], *, title: str = "",
                       overlay: tuple[str, np.ndarray, np.ndarray] | None = None,
                       centre=None) -> Path:
    """Save a grid: one column per panel, one row per plane (axial, coronal, sagittal; one row in 2D).

    Parameters
    ----------
    path : path-like
        Output PNG.
    panels : dict
        Column title -> image in [0, 1], all of the same grid: greyscale ``(z, y, x)`` / ``(y, x)``
        arrays, or RGB ones with an extra last axis of length 3.
    title : str, optional
        Figure title (say here when data are synthetic).
    overlay : (str, ndarray, ndarray), optional
        ``(title, fused01, weight_fixed)``: a last column with the fused image tinted by the
        contribution map (:func:`contribution_overlay`) and a colour bar as its legend.
    centre : (int, int, int), optional
        Voxel (z, y, x) where the planes cross; the volume centre by default.
    """
    plt = optional.pyplot()
    first = next(iter(panels.values()))
    cols = [(name, vol, vol.ndim == first.ndim + 1 and vol.shape[-1] == 3) for name, vol in panels.items()]
    if overlay is not None:
        cols.append((overlay[0], contribution_overlay(overlay[1], overlay[2]), True))
    rows = len(orthogonal_planes(first, centre))
    fig, axes = plt.subplots(rows, len(cols), figsize=(3.2 * len(cols), 3.2 * rows + 0.6),
                             squeeze=False)
    for c, (name, vol, rgb) in enumerate(cols):
        for r, plane in enumerate(orthogonal_planes(vol, centre, rgb=rgb)):
            ax = axes[r][c]
            if rgb:
                ax.imshow(plane, interpolation="nearest")
            else:
                ax.imshow(plane, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=10)
    if overlay is not None:
        add_contribution_legend(fig, axes[:, -1].tolist())
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=90)
