"""Save matplotlib figures atomically (PNG written to a temp file, then renamed)."""

from __future__ import annotations

from pathlib import Path

from .io import atomic_path


def save_figure(fig, path: str | Path, dpi: int = 80) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
