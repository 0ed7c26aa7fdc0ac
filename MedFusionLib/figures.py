"""Figures of fused volumes: sources and result in three orthogonal planes (matplotlib, Agg)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["orthogonal_planes", "save_planes_figure"]


def orthogonal_planes(volume: np.ndarray, centre=None) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices through ``centre`` of a (z, y, x) volume, display-oriented.

    For a 2D image, returns ``[image]``.
    """
    if volume.ndim == 2:
        return [volume]
    z, y, x = (np.array(volume.shape) // 2) if centre is None else centre
    return [volume[z], np.flipud(volume[:, y, :]), np.flipud(volume[:, :, x])]


def save_planes_figure(path: str | os.PathLike, panels: dict[str, np.ndarray], *, title: str = "",
                       overlay: tuple[str, np.ndarray] | None = None, centre=None) -> Path:
    """Save a grid: one column per panel (name -> (z, y, x) or 2D array in [0, 1]), one row per plane.

    Parameters
    ----------
    path : path-like
        Output PNG.
    panels : dict
        Column title -> image, all of the same shape, values in [0, 1].
    title : str, optional
        Figure title (say here when data are synthetic).
    overlay : (str, ndarray), optional
        A last column showing a contribution map in [0, 1] with a colour bar.
    centre : (int, int, int), optional
        Voxel (z, y, x) where the planes cross; the volume centre by default.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cols = list(panels.items()) + ([overlay] if overlay is not None else [])
    rows = len(orthogonal_planes(next(iter(panels.values())), centre))
    fig, axes = plt.subplots(rows, len(cols), figsize=(3.2 * len(cols), 3.2 * rows + 0.6),
                             squeeze=False)
    for c, (name, vol) in enumerate(cols):
        is_overlay = overlay is not None and c == len(cols) - 1
        for r, plane in enumerate(orthogonal_planes(vol, centre)):
            ax = axes[r][c]
            im = ax.imshow(plane, cmap="coolwarm" if is_overlay else "gray", vmin=0.0, vmax=1.0,
                           interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=10)
            if is_overlay and r == rows - 1:
                fig.colorbar(im, ax=axes[:, c].tolist(), fraction=0.046, pad=0.02,
                             label="share of fixed source")
    if title:
        fig.suptitle(title, fontsize=10)
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".medfusion-", suffix=".png", dir=p.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=90)
        os.replace(tmp, p)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p
