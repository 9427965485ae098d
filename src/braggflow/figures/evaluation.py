"""Figures of the peak-position evaluation: offsets per resolution bin, recall / precision / spurious peaks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import pyplot, save_figure


def plot_offsets(path: str | Path, bins: pd.DataFrame, title: str) -> None:
    """Median offset per resolution bin (overall, radial, transverse) of every model and finder, per reference."""
    plt = pyplot()
    refs = list(dict.fromkeys(bins.reference)) if len(bins) else ["none"]
    fig, axes = plt.subplots(len(refs), 3, figsize=(15, 3.8 * len(refs)), squeeze=False)
    for r, ref in enumerate(refs):
        b = bins[bins.reference == ref] if len(bins) else bins
        for c, (col, label) in enumerate((("median_offset_px", "overall"), ("median_radial_px", "radial"),
                                          ("median_transverse_px", "transverse"))):
            ax = axes[r, c]
            for (model, finder), g in b.groupby(["model", "finder"], sort=False) if len(b) else []:
                x = 0.5 * (1 / g.d_max_angstrom.clip(upper=1e3) + 1 / g.d_min_angstrom)
                ax.plot(x, g[col], marker="o", ls="-" if finder == "cnn" else "--", label=f"{finder} ({model})")
            ax.axhline(0, color="grey", lw=0.5)
            ax.set(xlabel="1/d (1/A)", ylabel=f"median {label} offset (px)", title=f"{label}, against {ref}")
            if r == 0 and c == 0 and len(b):
                ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_summary(path: str | Path, summary: pd.DataFrame) -> None:
    """Recall, precision and spurious peaks per frame of every (experiment, model, finder) per reference."""
    plt = pyplot()
    refs = list(dict.fromkeys(summary.reference)) or ["none"]
    fig, axes = plt.subplots(len(refs), 3, figsize=(16, 4.2 * len(refs)), squeeze=False)
    for r, ref in enumerate(refs):
        s = summary[summary.reference == ref]
        labels = [f"{e}\n{m}\n{f}" for e, m, f in zip(s.experiment, s.model, s.finder)]
        x = np.arange(len(s))
        colours = ["tab:red" if f == "cnn" else ("tab:blue" if f == "dispersion" else "tab:green") for f in s.finder]
        for c, (col, label) in enumerate((("recall", "recall"), ("precision", "precision"),
                                          ("spurious_per_frame", "spurious peaks per frame"))):
            ax = axes[r, c]
            ax.bar(x, s[col], color=colours)
            ax.set(xticks=x, ylabel=label, title=f"{label} against {ref} (red CNN, blue dispersion, green DIALS)")
            ax.set_xticklabels(labels, fontsize=6, rotation=90)
    fig.tight_layout()
    save_figure(fig, path)
