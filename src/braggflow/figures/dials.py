"""Figure of the DIALS scores against the simulation truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import pyplot, save_figure


def plot_scores(path: str | Path, summary: pd.DataFrame, frames: pd.DataFrame) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    labels = summary.dataset.tolist()
    x = np.arange(len(labels))
    axes[0].bar(x, 100 * summary.indexing_rate.fillna(0), color="tab:blue")
    axes[0].axhline(90, color="grey", ls=":", label="bar: 90 %")
    axes[0].set(xticks=x, ylabel="hits indexed (%)", title="Indexing rate among hits", ylim=(0, 105))
    axes[0].set_xticklabels(labels, rotation=45, ha="right")
    axes[0].legend()
    w = 0.4
    axes[1].bar(x - w / 2, summary.rmsd_cal_true_px, w, label="calculated vs true")
    axes[1].bar(x + w / 2, summary.rmsd_obs_true_px, w, label="observed vs true")
    axes[1].axhline(1.0, color="grey", ls=":", label="bar: 1 px")
    axes[1].set(xticks=x, ylabel="RMSD (px)", title="Spot positions against the simulation")
    axes[1].set_xticklabels(labels, rotation=45, ha="right")
    axes[1].legend()
    idx = frames[frames.indexed & (frames.hit == 1)]
    for name, grp in idx.groupby("dataset"):
        axes[2].scatter([labels.index(name)] * len(grp), grp.misorientation_deg, s=12)
    axes[2].set(xticks=x, ylabel="misorientation (deg)", yscale="log",
                title="Orientation error per indexed frame")
    axes[2].set_xticklabels(labels, rotation=45, ha="right")
    fig.tight_layout()
    save_figure(fig, path)
