"""Figures of the training stage: learning curves, confusion matrices, example frames with predicted and true peaks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..ml import data as D
from ..ml.cards import read_card
from ..settings import TrainingSettings
from . import block_max, pyplot, save_figure


def plot_learning_curves(path: str | Path, histories: dict[str, pd.DataFrame], title: str) -> None:
    """One panel per model: training and validation loss against epoch (log scale)."""
    plt = pyplot()
    n = max(len(histories), 1)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, h) in zip(axes.flat, sorted(histories.items())):
        ax.plot(h.epoch, h.train_loss, "o-", ms=3, label="train")
        ax.plot(h.epoch, h.validation_loss, "s-", ms=3, label="validation")
        best = int(h.validation_loss.idxmin())
        ax.axvline(h.epoch[best], color="grey", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(histories):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_confusions(path: str | Path, panels: Sequence[tuple[str, list[list[int]], Sequence[str]]],
                    title: str) -> None:
    """Confusion matrices (rows true, columns predicted) with counts written in the cells."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.6), squeeze=False)
    for ax, (name, m, labels) in zip(axes[0], panels):
        m = np.asarray(m)
        ax.imshow(m, cmap="Blues", vmin=0)
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                    color="white" if v > 0.6 * max(m.max(), 1) else "black")
        ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=45)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        acc = np.trace(m) / max(m.sum(), 1)
        ax.set_title(f"{name}: accuracy {acc:.1%}", fontsize=9)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_example_frames(path: str | Path, examples: Sequence[dict], title: str, zoom_px: int = 64) -> None:
    """Per example: the frame (4x4 block maxima, asinh) and a zoom with true (visible) reflections, CNN spots and
    baseline spots. ``examples``: dicts with counts, visible_xy, cnn_xy, baseline_xy, name."""
    plt = pyplot()
    fig, axes = plt.subplots(max(len(examples), 1), 2, figsize=(11, 5.2 * max(len(examples), 1)), squeeze=False)
    for row, ex in zip(axes, examples):
        counts = ex["counts"].astype(float)
        shown = np.where(counts < 0, np.nan, counts)
        small = block_max(shown, 4)
        vmax = np.arcsinh(max(float(np.nanpercentile(small, 99.9)), 1.0))
        row[0].imshow(np.arcsinh(small), cmap="gray_r", vmin=0, vmax=vmax, interpolation="nearest")
        marks = (("visible_xy", "o", "lime", "truth (visible)"), ("cnn_xy", "+", "red", "CNN"),
                 ("baseline_xy", "x", "dodgerblue", "baseline"))
        for key, m, c, label in marks:
            xy = np.asarray(ex[key]).reshape(-1, 2)
            _mark(row[0], xy / 4, m, c, 50, f"{label}: {len(xy)}")
        row[0].legend(fontsize=7, loc="upper right")
        row[0].set_title(ex["name"], fontsize=9)
        vis = np.asarray(ex["visible_xy"]).reshape(-1, 2)
        cx, cy = (vis[np.argmax(ex.get("visible_photons", np.ones(len(vis))))] if len(vis)
                  else (counts.shape[1] / 2, counts.shape[0] / 2))
        x0, y0 = int(max(cx - zoom_px / 2, 0)), int(max(cy - zoom_px / 2, 0))
        crop = shown[y0:y0 + zoom_px, x0:x0 + zoom_px]
        row[1].imshow(crop, cmap="viridis", vmin=0, vmax=max(float(np.nanpercentile(crop, 99.5)), 1.0),
                      extent=(x0, x0 + crop.shape[1], y0 + crop.shape[0], y0), interpolation="nearest")
        for key, m, c, label in marks:
            xy = np.asarray(ex[key]).reshape(-1, 2)
            sel = (xy[:, 0] >= x0) & (xy[:, 0] < x0 + zoom_px) & (xy[:, 1] >= y0) & (xy[:, 1] < y0 + zoom_px)
            _mark(row[1], xy[sel], m, c, 250, label)
        row[1].set_title("zoom (DIALS px; 3 px match radius)", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def _mark(ax, xy: np.ndarray, marker: str, colour: str, size: float, label: str) -> None:
    if marker == "o":  # hollow circles keep the pixels under the truth visible
        ax.scatter(xy[:, 0], xy[:, 1], s=size, marker="o", facecolors="none", edgecolors=colour, linewidths=1.5,
                   label=label)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=size, marker=marker, c=colour, linewidths=1.5, label=label)


def plot_energy_distance_confusions(path: str, card: str, baseline: str) -> None:
    cnn, base = read_card(card), json.loads(Path(baseline).read_text())
    classes = cnn["metrics"]["classes"]
    e_labels = [f"{e:g} keV" for e in classes["energies_kev"]]
    d_labels = [f"{1000 * d:g} mm" for d in classes["camera_lengths_m"]]
    panels = [("CNN energy", cnn["metrics"]["test"]["energy_confusion"], e_labels),
              ("CNN camera length", cnn["metrics"]["test"]["distance_confusion"], d_labels),
              ("baseline energy", base["test"]["energy_confusion"], e_labels),
              ("baseline camera length", base["test"]["distance_confusion"], d_labels)]
    plot_confusions(path, panels, "Photon energy and camera length on held-out frames (rows: true)")


def plot_learning_curves_of(path: str, histories: dict[str, str], title: str) -> None:
    plot_learning_curves(path, {k: pd.read_csv(v, sep="\t") for k, v in histories.items()}, title)


def plot_peak_examples(path: str, shards: Sequence[str], cnn_spots: str, baseline: str, cfg: TrainingSettings,
                       seed: int, n_frames: int, title: str) -> None:
    """The first test hits (then blanks) with truth, CNN and baseline spots; reads only the frames it draws."""
    cnn = json.loads(Path(cnn_spots).read_text())["spots"]
    base = json.loads(Path(baseline).read_text())["spots"]
    test = D.frame_splits(shards, cfg, seed)["test"]
    chosen = ([r for r in test if r.hit] + [r for r in test if not r.hit])[:n_frames]
    examples = []
    for r in chosen:
        t = D.read_frame_truth(r)
        vis = t[t.visible.astype(bool)]
        key = f"{r.dataset}/{r.frame_index}"
        examples.append({"counts": D.read_counts_only(r), "visible_xy": vis[["x_px", "y_px"]].to_numpy(float),
                         "visible_photons": vis.photons.to_numpy(float), "cnn_xy": np.asarray(cnn.get(key, [])),
                         "baseline_xy": np.asarray(base.get(key, [])),
                         "name": f"{key} ({'hit' if r.hit else 'blank'})"})
    plot_example_frames(path, examples, title)
