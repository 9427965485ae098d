"""Figure of the structure-factor stage: mean amplitude and Bijvoet ratio per resolution shell."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import pyplot, save_figure


def plot_resolution_shells(path: str | Path, shells: dict[tuple[str, float], pd.DataFrame]) -> None:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for (name, energy_kev), df in shells.items():
        label = f"{name} {energy_kev:g} keV"
        ax1.plot(1.0 / df.d_angstrom**2, df.mean_f_electrons, marker="o", label=label)
        ax2.plot(1.0 / df.d_angstrom**2, 100 * df.bijvoet_ratio, marker="o", label=label)
    ax1.set(yscale="log", xlabel="1/d$^2$ (1/Å$^2$)", ylabel="<|F|> (electrons)", title="Mean amplitude per shell")
    ax2.set(xlabel="1/d$^2$ (1/Å$^2$)", ylabel="<| |F+| - |F-| |> / <|F|> (%)", title="Bijvoet ratio per shell")
    ax1.legend(fontsize=8)
    save_figure(fig, path, dpi=100)
