"""Do simulated frames look like an experiment's real ones where a peak finder can tell? Spot shape and lone pixels.

Prints, for the real frames (spots: DIALS-integrated reflections with I/sigma >= 5) and for a matched training
shard (spots: truth reflections above 40 photons):
- the share of a spot's net photons in its brightest pixel, and how many pixels reach 20 % of that pixel
  (sets ``simulation.psf_fwhm_um``);
- isolated bright pixels per million pixels per frame: net photons above the local median >= T while every
  neighbour stays below 15 % of it (sets ``overlay.outlier_pixels_per_mpx``).

usage: python benchmarks/detector_realism.py [experiment]   (after the workflow has run it)
"""

import sys

import h5py
import numpy as np
import pandas as pd
from scipy import ndimage

from braggflow import evaluate as E
from braggflow.panels import read_frame_photons, read_frames_info

THRESHOLDS_PHOTONS = (5, 10, 20, 50)


def spot_shapes(photons: np.ndarray, panel: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(peak share, pixels >= 20 % of the peak) of each spot with >= 40 net photons, 7x7 box, local median."""
    out = []
    for j, (x, y) in zip(panel, xy):
        s, f = int(y), int(x)
        box = photons[j, max(s - 3, 0):s + 4, max(f - 3, 0):f + 4].astype(float)
        bg = photons[j, max(s - 10, 0):s + 11, max(f - 10, 0):f + 11]
        net = np.where(box >= 0, box - np.median(bg[bg >= 0]), 0.0)
        total = net[net > 0].sum()
        if total < 40:
            continue
        lab, _ = ndimage.label(net >= 0.2 * net.max())
        out.append((net.max() / total, (lab == lab[np.unravel_index(np.argmax(net), net.shape)]).sum()))
    return np.array(out).reshape(-1, 2)


def isolated_pixels(photons: np.ndarray) -> np.ndarray:
    """Net photons of every isolated bright pixel (>= 3) of a (panels, slow, fast) frame."""
    ring = ndimage.generate_binary_structure(2, 2)
    ring[1, 1] = False
    out = []
    for a in photons.astype(float):
        trusted = a >= 0
        a = np.where(trusted, a, 0.0)
        med = ndimage.median_filter(a, size=7)
        net = a - med
        neighbours = ndimage.maximum_filter(a, footprint=ring) - med
        iso = (net >= 3) & (neighbours < 0.15 * net) & ndimage.binary_erosion(trusted, ring, border_value=0)
        out.append(net[iso])
    return np.concatenate(out)


def report(name: str, shapes: np.ndarray, spikes: list[np.ndarray], n_pixels: int) -> None:
    share, npx = shapes[:, 0], shapes[:, 1]
    rates = ", ".join(f">= {t}: {np.mean([(s >= t).sum() for s in spikes]) / n_pixels * 1e6:.1f}"
                      for t in THRESHOLDS_PHOTONS)
    print(f"{name}: {len(shapes)} spots, peak share p10/p50/p90 = "
          f"{' / '.join(f'{v:.2f}' for v in np.percentile(share, [10, 50, 90]))}, "
          f"pixels >= 20 % of peak median {np.median(npx):.0f}; isolated pixels per Mpx per frame {rates}")


def main(experiment: str = "thermolysin_lcls_cspad") -> None:
    frames = f"results/experiments/{experiment}/frames.h5"
    info = read_frames_info(frames)
    dials = E.dials_frames(f"results/experiments/{experiment}/dials/export.npz", info.n_frames)
    shapes, spikes = [], []
    for i, fr in enumerate(dials):
        photons = read_frame_photons(frames, i)
        spikes.append(isolated_pixels(photons))
        if fr.indexed:
            ref = E.dials_reference(fr, fr.wavelength_angstrom, 0.0, 5.0)
            shapes.append(spot_shapes(photons, ref.panel, ref.xy))
    report(f"real ({info.n_frames} frames)", np.concatenate(shapes), spikes, int((photons >= 0).sum()))

    shard = f"results/matched/{experiment}/shard_0000.h5"
    with h5py.File(shard, "r") as f:
        g = f["braggflow/truth"]
        truth = pd.DataFrame({k: g[k][()] for k in ("frame_index", "x_px", "y_px", "photons", "visible")})
        index = f["braggflow/frames/frame_index"][()]
        shapes, spikes = [], []
        for row, frame_index in enumerate(index):
            counts = f["entry/data/data"][row].astype(float)[None]
            t = truth[(truth.frame_index == frame_index) & truth.visible & (truth.photons > 40)]
            shapes.append(spot_shapes(counts, np.zeros(len(t), int), t[["x_px", "y_px"]].to_numpy()))
            spikes.append(isolated_pixels(counts))
    report(f"matched simulation ({len(index)} frames of {shard})", np.concatenate(shapes), spikes,
           int((counts >= 0).sum()))


if __name__ == "__main__":
    main(*sys.argv[1:])
