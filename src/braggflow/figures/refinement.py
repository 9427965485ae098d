"""Figures of the refinement scores: DIALS' model against the refined one, per dataset and per resolution bin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import pyplot, save_figure


def _bars(ax, x, before, after, labels, ylabel, title, bar=None, log=False):
    w = 0.4
    ax.bar(x - w / 2, before, w, label="DIALS", color="tab:grey")
    ax.bar(x + w / 2, after, w, label="refined", color="tab:blue")
    if bar is not None:
        ax.axhline(bar, color="tab:red", ls=":", label=f"bar: {bar:g}")
    ax.set(xticks=x, ylabel=ylabel, title=title)
    if log:
        ax.set_yscale("log")
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.legend(fontsize=8)


def plot_refinement_scores(path: str | Path, summary: pd.DataFrame) -> None:
    """Per dataset, before (DIALS) and after refinement: misorientation median (against the domains' mean
    orientation), largest cell error, RMSD of predicted against true positions, and the refined Ncells error."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.5))
    labels = summary.dataset.tolist()
    x = np.arange(len(labels))
    _bars(axes[0], x, summary.misorientation_mean_dials_median_deg, summary.misorientation_mean_refined_median_deg,
          labels, "deg", "Misorientation, median", 0.01, log=True)
    _bars(axes[1], x, 100 * summary.cell_error_dials_max_rel, 100 * summary.cell_error_refined_max_rel, labels, "%",
          "Cell edge error, largest", 0.02, log=True)
    _bars(axes[2], x, summary.rmsd_dials_px, summary.rmsd_refined_px, labels, "px",
          "Predicted vs true positions, RMSD", 0.15)
    axes[3].bar(x, 100 * summary.ncells_error_median_rel, color="tab:blue")
    axes[3].axhline(10, color="tab:red", ls=":", label="bar: 10 %")
    axes[3].set(xticks=x, ylabel="%", title="Ncells error, median |refined / true - 1|")
    axes[3].set_xticklabels(labels, rotation=45, ha="right")
    axes[3].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_offsets_by_resolution(path: str | Path, offsets: pd.DataFrame) -> None:
    """RMSD of the prediction offsets by resolution bin over every dataset: overall, radial and transverse,
    DIALS against refined."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    g = offsets[offsets.dataset == "all"] if len(offsets) else offsets
    centre = 0.5 * (1 / g.d_max_angstrom.replace(np.inf, 0.0) + 1 / g.d_min_angstrom) if len(g) else []
    for ax, (what, title) in zip(axes, (("", "overall"), ("radial_", "radial"), ("transverse_", "transverse"))):
        if len(g):
            ax.plot(centre, g[f"rmsd_{what}dials_px"], "o-", color="tab:grey", label="DIALS")
            ax.plot(centre, g[f"rmsd_{what}refined_px"], "o-", color="tab:blue", label="refined")
        ax.set(xlabel="1/d (1/A)", title=f"Prediction offsets, {title}")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("RMSD (px)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_observed_offsets(path: str | Path, by_bin: pd.DataFrame, title: str) -> None:
    """Real stills: RMSD of predicted against observed centroids by resolution bin (overall, radial, transverse,
    in um), DIALS' prediction against the refined model's, with each bin's spot count."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    g = by_bin[by_bin.n > 0] if len(by_bin) else by_bin
    centre = 0.5 * (1 / g.d_max_angstrom.replace(np.inf, 0.0) + 1 / g.d_min_angstrom) if len(g) else []
    for ax, (what, name) in zip(axes, (("", "overall"), ("radial_", "radial"), ("transverse_", "transverse"))):
        if len(g):
            ax.plot(centre, g[f"rmsd_{what}dials_um"], "o-", color="tab:grey", label="DIALS")
            ax.plot(centre, g[f"rmsd_{what}refined_um"], "o-", color="tab:blue", label="refined")
            for x, y, n in zip(centre, g[f"rmsd_{what}dials_um"], g.n):
                ax.annotate(f"{n}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        ax.set(xlabel="1/d (1/A)", title=f"{title}: {name}")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("RMSD against observed centroids (um)")
    fig.tight_layout()
    save_figure(fig, path)
