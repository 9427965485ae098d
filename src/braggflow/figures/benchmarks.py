"""Figure of the run's runtimes: every job's wall seconds, by rule (from Snakemake's benchmark files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import pyplot, save_figure


def plot_runtimes(plot_path: str | Path, jobs: pd.DataFrame, rules: Sequence[str]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rules) + 1.5))
    for i, rule in enumerate(rules):
        s = jobs.seconds[jobs.rule == rule].to_numpy()
        ax.scatter(s, np.full(len(s), i) + np.linspace(-0.15, 0.15, len(s)), s=10, alpha=0.7)
    ax.set(yticks=range(len(rules)), yticklabels=rules, xscale="log", xlabel="wall seconds per job",
           title="Runtime of every job, by rule (Snakemake benchmark files)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, plot_path)
