"""Figures of the phase-retrieval stage: learning curves, phase error by resolution shell, density sections."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import pyplot, save_figure

_ORDER = ("linear", "mlp", "cnn", "unet", "zero_phases", "random_phases")


def _ordered(names) -> list[str]:
    return sorted(names, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))


def plot_learning_curves(path: str | Path, histories: Sequence[str | Path]) -> None:
    """Training and validation loss against epoch, one panel per model (same axes), the kept epoch dotted."""
    plt = pyplot()
    data = {Path(p).name.split(".")[0]: pd.read_csv(p, sep="\t") for p in histories}
    names = _ordered(data)
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.2), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        h = data[name]
        ax.plot(h.epoch, h.train_loss, "o-", ms=3, label="train")
        ax.plot(h.epoch, h.validation_loss, "s-", ms=3, label="validation")
        ax.axvline(h.epoch[int(h.validation_loss.idxmin())], color="grey", lw=0.8, ls=":")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("loss (1 - map CC)")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_shells(path: str | Path, shells: str | Path) -> None:
    """Amplitude-weighted mean phase error by resolution shell, one panel per test split."""
    plt = pyplot()
    t = pd.read_csv(shells, sep="\t")
    splits = [s for s in ("test_seen", "test_unseen") if s in set(t.split)]
    fig, axes = plt.subplots(1, len(splits), figsize=(5.2 * len(splits), 3.6), sharey=True, squeeze=False)
    for ax, split in zip(axes[0], splits):
        s = t[t.split == split]
        for name in _ordered(set(s.model)):
            m = s[s.model == name].sort_values("shell")
            centre = 0.5 * (m.inv_d_low + m.inv_d_high)
            ls = "--" if name in ("zero_phases", "random_phases") else "-"
            ax.plot(centre, m.phase_error_deg, ls, marker="o", ms=3, label=name)
        ax.set_title(split.replace("_", " "), fontsize=10)
        ax.set_xlabel("1/d (1/A), shell centre")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("mean phase error (deg, |F|-weighted)")
    axes[0, -1].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_density_sections(path: str | Path, sections: str | Path, table: str | Path) -> None:
    """z = 0 sections of maps with the true amplitudes: true phases, then each model's (at the origin and hand
    it chose, moved back), one row per test sample, each panel with its RSCC to the true map."""
    from ..formats.phase_sections import read_sections

    plt = pyplot()
    data, attrs = read_sections(sections)
    models = _ordered(attrs["models"])
    cols = ["truth"] + models
    rows = len(data["samples"])
    fig, axes = plt.subplots(rows, len(cols), figsize=(1.9 * len(cols), 1.9 * rows + 0.4), squeeze=False)
    for r in range(rows):
        truth = data["truth"][r]
        for c, name in enumerate(cols):
            ax = axes[r, c]
            img = data[name][r]
            centred = np.roll(img, (img.shape[0] // 2, img.shape[1] // 2), axis=(0, 1))  # origin in the middle
            ax.imshow(centred.T, origin="lower", cmap="viridis", extent=(-0.5, 0.5, -0.5, 0.5),
                      interpolation="bicubic")
            ax.set_xticks([])
            ax.set_yticks([])
            if name == "truth":
                ax.set_ylabel(f"{attrs['crystals'][r].removeprefix('dans:')}\n{attrs['splits'][r]}", fontsize=7)
            else:
                a, b = img.ravel() - img.mean(), truth.ravel() - truth.mean()
                cc = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
                ax.text(0.03, 0.03, f"CC {cc:.2f}", color="w", fontsize=7, transform=ax.transAxes)
            if r == 0:
                ax.set_title("true phases" if name == "truth" else name, fontsize=8)
    fig.suptitle("density, z = 0 section (x, y fractional, origin in the centre); true amplitudes, F000 left out",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
