"""Runtime figures from Snakemake's benchmark files (results/benchmarks/<rule>/.../<job>.tsv)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .atomicplot import save_figure
from .io import atomic_path


def collect(paths, root: str | Path = "results/benchmarks") -> pd.DataFrame:
    rows = []
    for p in map(Path, paths):
        rel = p.relative_to(root) if p.is_relative_to(root) else p
        table = pd.read_csv(p, sep="\t")
        rows.append({"rule": rel.parts[0], "job": str(rel.with_suffix("")), "seconds": float(table["s"].iloc[0]),
                     "max_rss_mb": float(table["max_rss"].iloc[0]), "cpu_seconds": float(table["cpu_time"].iloc[0])})
    return pd.DataFrame(rows)


def summarise(jobs: pd.DataFrame) -> pd.DataFrame:
    g = jobs.groupby("rule")
    return pd.DataFrame({"jobs": g.size(), "seconds_median": g.seconds.median(), "seconds_max": g.seconds.max(),
                         "seconds_total": g.seconds.sum(), "max_rss_mb": g.max_rss_mb.max()}).reset_index()


def write_summary(table_path, plot_path, jobs: pd.DataFrame) -> None:
    summary = summarise(jobs)
    with atomic_path(table_path) as tmp:
        summary.to_csv(tmp, sep="\t", index=False, float_format="%.4g")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.5 * len(summary) + 1.5))
    rules = summary.rule.tolist()
    for i, rule in enumerate(rules):
        s = jobs.seconds[jobs.rule == rule].to_numpy()
        ax.scatter(s, np.full(len(s), i) + np.linspace(-0.15, 0.15, len(s)), s=10, alpha=0.7)
    ax.set(yticks=range(len(rules)), yticklabels=rules, xscale="log", xlabel="wall seconds per job",
           title="Runtime of every job, by rule (Snakemake benchmark files)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, plot_path)
