"""Every figure braggflow draws, one module per stage (``structure_factors``, ``water``, ``overlays``, ``dials``,
``training``, ``evaluation``, ``calibration``, ``benchmarks``): they read what the stage computed and draw it;
none computes a result of its own. Figures are PNG, written atomically; matplotlib runs headless (Agg).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import atomic_path


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (imported on first use: the library imports without it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 80) -> None:
    """The figure as PNG at ``path`` (atomic: a temporary beside it, then renamed), and closed."""
    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


def block_max(image: np.ndarray, k: int) -> np.ndarray:
    """k x k block maxima: keeps 1-3 px spots visible when a 2000-px frame is drawn in 300 screen pixels."""
    ny, nx = image.shape[0] // k * k, image.shape[1] // k * k
    blocks = image[:ny, :nx].reshape(ny // k, k, nx // k, k)
    with np.errstate(all="ignore"):
        return np.nanmax(np.nanmax(blocks, axis=3), axis=1) if np.isnan(blocks).any() else blocks.max(axis=(1, 3))
