"""Runtime figures from Snakemake's benchmark files (results/benchmarks/<rule>/.../<job>.tsv)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

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
    from .figures.benchmarks import plot_runtimes

    plot_runtimes(plot_path, jobs, summary.rule.tolist())
