"""Figure of a water background: the image and its azimuthal average."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..water import WaterBackground
from . import pyplot, save_figure


def plot_background(path: str | Path, bg: WaterBackground, title: str = "") -> None:
    plt = pyplot()
    from matplotlib.colors import LogNorm

    img = np.ma.masked_where(bg.mask | (bg.photons <= 0), bg.photons)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.1, 1]})
    fig.subplots_adjust(left=0.06, right=0.98, wspace=0.35)
    im = ax1.imshow(img, norm=LogNorm(vmin=max(img.min(), img.max() * 1e-2), vmax=img.max()), cmap="magma",
                    origin="upper", interpolation="nearest")
    fig.colorbar(im, ax=ax1, label="photons / pixel / pulse")
    bx, by = bg.geometry.beam_center_px
    ax1.plot([bx], [by], "c+", ms=10)
    ax1.set(xlabel="fast (px)", ylabel="slow (px)", title=title or "water background")
    good = ~bg.mask
    order = np.argsort(bg.q_inv_angstrom[good])
    qs, ps = bg.q_inv_angstrom[good][order], bg.photons[good][order]
    edges = np.linspace(qs[0], qs[-1], 200)
    idx = np.digitize(qs, edges)
    prof = np.array([ps[idx == i].mean() if np.any(idx == i) else np.nan for i in range(1, len(edges))])
    ax2.plot(0.5 * (edges[1:] + edges[:-1]), prof)
    ax2.axvline(2.05, color="grey", ls=":", label="q = 2.05 1/Å (water peak)")
    ax2.set(xlabel="q (1/Å)", ylabel="mean photons / pixel", title="azimuthal average")
    ax2.legend()
    save_figure(fig, path, dpi=90)
