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


FINDER_STYLE = {"cnn": ("o", "tab:red", "CNN"), "dispersion": ("s", "tab:blue", "dispersion"),
                "dials": ("^", "tab:green", "DIALS spot finder")}
REFERENCE_TEXT = {"truth": "the simulation's truth", "dials": "DIALS-indexed reflections (DIALS geometry)",
                  "dials_predicted_geometry": "DIALS-indexed reflections at the predicted energy / distance"}


def plot_summary(path: str | Path, summary: pd.DataFrame, min_i_over_sigma: float | None = None) -> None:
    """One row per experiment, one panel per reference: recall against spurious peaks per frame, a labelled
    point per (finder, model), the reference and its I/sigma cut named. Up and to the left is better."""
    plt = pyplot()
    experiments = list(dict.fromkeys(summary.experiment)) or ["none"]
    refs = {x: list(dict.fromkeys(summary.reference[summary.experiment == x])) or ["none"] for x in experiments}
    cols = max(len(r) for r in refs.values())
    fig, axes = plt.subplots(len(experiments), cols, figsize=(6.2 * cols, 5.0 * len(experiments)), squeeze=False)
    for r, x in enumerate(experiments):
        for c in range(cols):
            ax = axes[r, c]
            if c >= len(refs[x]):
                ax.axis("off")
                continue
            ref = refs[x][c]
            s = summary[(summary.experiment == x) & (summary.reference == ref)]
            s = pd.concat([s[s.finder != "dials"], s[s.finder == "dials"].head(1)])  # DIALS' spots: one model-free point
            for finder, (marker, colour, label) in FINDER_STYLE.items():
                g = s[s.finder == finder]
                ax.scatter(g.spurious_per_frame, g.recall, marker=marker, s=70, color=colour, label=label,
                           edgecolor="black", linewidth=0.5, zorder=3)
                names: dict[tuple[float, float], list[str]] = {}  # models on one point share one label
                for row in g.itertuples():
                    name = str(row.model).replace("peak_finder-", "")
                    if getattr(row, "out_of_distribution_frames", 0):
                        name += " (extrapolates)"
                    names.setdefault((row.spurious_per_frame, row.recall), []).append(name)
                for (spurious, recall), models in names.items():
                    if finder != "dials":
                        ax.annotate(", ".join(models), (spurious, recall), xytext=(6, 4), textcoords="offset points",
                                    fontsize=9)
            cut = "" if ref == "truth" or min_i_over_sigma is None else f", I/sigma >= {min_i_over_sigma:g}"
            ax.set_title(f"{x}: against {REFERENCE_TEXT.get(ref, ref)}{cut}", fontsize=10)
            ax.set_xlabel("spurious peaks per frame (fewer is better)", fontsize=10)
            ax.set_ylabel("recall (higher is better)", fontsize=10)
            ax.set_ylim(-0.02, 1.05)
            ax.set_xlim(left=-0.5)
            ax.grid(alpha=0.3)
            if c == 0:
                ax.legend(fontsize=9, loc="best")
    fig.suptitle("Peak finders on the experimental inputs: recall against spurious peaks (results/evaluation/"
                 "summary.tsv)", fontsize=12)
    fig.tight_layout()
    save_figure(fig, path)
