"""Gallery of overlay shards: counts, peak labels, the frame's expected water, a zoom on a peak."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..formats.shards import read_frame_table, read_images, read_label, read_water
from . import block_max, pyplot, save_figure


def plot_gallery(path: str | Path, overlay_paths: list[str | Path], max_frames: int = 3, title: str = "") -> None:
    """Per frame: counts, counts with the peak labels, the frame's expected water, and a zoom on peaks."""
    plt = pyplot()
    chosen = []
    for p in overlay_paths:
        frames = read_frame_table(p)
        for i, row in frames.iterrows():
            chosen.append((p, i, row))
    hits = [c for c in chosen if c[2].hit == 1][: max(1, max_frames - 1)]
    blanks = [c for c in chosen if c[2].hit == 0][:1]
    chosen = (hits + blanks)[:max_frames] or chosen[:max_frames]
    fig, axes = plt.subplots(len(chosen), 4, figsize=(17, 4.3 * len(chosen)), squeeze=False)
    for row_axes, (p, i, info) in zip(axes, chosen):
        counts = read_images(p, i).astype(float)
        label = read_label(p, i)
        water = read_water(p) * (info.jet_factor * info.fluence_factor)
        shown = np.where(counts < 0, np.nan, counts)
        # Block maxima keep 1-3 px spots visible when a 2000-px frame is drawn in 300 screen pixels.
        small, small_label = block_max(shown, 4), block_max(label.astype(float), 4) > 0
        vmax = max(float(np.nanpercentile(small, 99.9)), 1.0)
        kw = dict(cmap="gray_r", interpolation="nearest", vmin=0, vmax=np.arcsinh(vmax))
        row_axes[0].imshow(np.arcsinh(small), **kw)
        row_axes[0].set_title(f"frame {int(info.frame_index)} ({'hit' if info.hit else 'blank'}): counts, "
                              "4x4 max, asinh", fontsize=9)
        row_axes[1].imshow(np.arcsinh(small), **kw)
        ys, xs = np.nonzero(small_label)
        row_axes[1].scatter(xs, ys, s=2, c="red", marker="s", linewidths=0)
        row_axes[1].set_title(f"peak labels: {int(info.n_peaks)} visible reflections", fontsize=9)
        row_axes[2].imshow(np.where(np.isnan(shown), np.nan, water), cmap="magma", interpolation="nearest")
        row_axes[2].set_title(f"water only (expected): jet x{info.jet_factor:.2f}, fluence x{info.fluence_factor:.2f}",
                              fontsize=9)
        if label.any():
            cy, cx = np.unravel_index(np.argmax(np.where(label, np.nan_to_num(shown), -1)), label.shape)
        else:
            cy, cx = label.shape[0] // 2, label.shape[1] // 2
        h = 40
        y0, x0 = max(cy - h, 0), max(cx - h, 0)
        crop = shown[y0:cy + h, x0:cx + h]
        row_axes[3].imshow(crop, cmap="viridis", interpolation="nearest", vmin=0,
                           vmax=max(float(np.nanpercentile(crop, 99.5)), 1.0),
                           extent=(x0, x0 + crop.shape[1], y0 + crop.shape[0], y0))
        if label[y0:cy + h, x0:cx + h].any():
            row_axes[3].contour(np.arange(x0, x0 + crop.shape[1]) + 0.5, np.arange(y0, y0 + crop.shape[0]) + 0.5,
                                label[y0:cy + h, x0:cx + h], levels=[0.5], colors="red", linewidths=0.8)
        row_axes[3].set_title("zoom on the strongest peak: counts, label outline", fontsize=9)
        for ax in row_axes[:3]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
