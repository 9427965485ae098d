"""Do simulated frames look like an experiment's real ones where a peak finder can tell? Spot shape and lone pixels.

Prints, for the real frames (spots: DIALS-integrated reflections with I/sigma >= 5) and for a matched training
shard (spots: truth reflections above the photon cut of results/matched/<experiment>/calibration.json, else 40):
- the share of a spot's net photons in its brightest pixel, and how many pixels reach 20 % of that pixel
  (sets ``simulation.psf_fwhm_um``);
- net photons (5x5 box, local median) of DIALS-integrated reflections by I/sigma bin: the photons at the
  evaluator's I/sigma cut (sets ``training.peak_finder.score_min_photons`` of the matched model);
- isolated bright pixels per million eligible pixels (trusted, 8 trusted neighbours) per frame: net photons
  above the local median >= T while every neighbour stays below 15 % of it (braggflow.outliers;
  matched.outliers_from_frames draws the real frames' own).

The calibration (rule calibrate_matched) fits the matched simulation to these statistics; its figure
(calibration.png) is the fit report. This benchmark checks the training shard the fitted settings made.

usage: python benchmarks/detector_realism.py [experiment]   (after the workflow has run it)
"""

import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from braggflow import evaluate as E
from braggflow.outliers import eligible_count, isolated_pixels
from braggflow.formats import shards as S
from braggflow.formats.frames import read_frame_photons, read_frames_info
from braggflow.stills import predicted_positions

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


IOS_BINS = (3, 4, 5, 6, 8, 12, 30)


def net_photons_at(photons: np.ndarray, fr) -> list[tuple[float, float]]:
    """(DIALS I/sigma, net photons in a 5x5 box at the predicted position) of an indexed frame's reflections."""
    rows = []
    xy = predicted_positions(fr.a_matrix, fr.hkl, fr.panel, fr.panels, fr.beam_direction, fr.wavelength_angstrom,
                             0.0, fr.parallax)
    for j, (x, y), ios in zip(fr.panel, xy, fr.i_over_sigma):
        if not np.isfinite(x) or not np.isfinite(ios):
            continue
        s, f = int(y), int(x)
        box = photons[j, s - 2:s + 3, f - 2:f + 3]
        if box.shape != (5, 5) or (box < 0).any():
            continue
        bg = photons[j, max(s - 10, 0):s + 11, max(f - 10, 0):f + 11]
        rows.append((ios, float((box - np.median(bg[bg >= 0])).sum())))
    return rows


def report_net_photons(rows: list[tuple[float, float]]) -> None:
    a = np.array(rows).reshape(-1, 2)
    bins = []
    for lo, hi in zip(IOS_BINS[:-1], IOS_BINS[1:]):
        sel = a[(a[:, 0] >= lo) & (a[:, 0] < hi), 1]
        bins.append(f"{lo}-{hi}: {np.median(sel):.0f} (n {len(sel)})" if len(sel) else f"{lo}-{hi}: -")
    print("real reflections, median net photons (5x5) by DIALS I/sigma: " + ", ".join(bins))


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
    shapes, spikes, net = [], [], []
    for i, fr in enumerate(dials):
        photons = read_frame_photons(frames, i)
        spikes.append(isolated_pixels(photons, 3.0))
        if fr.indexed:
            ref = E.dials_reference(fr, fr.wavelength_angstrom, 0.0, 5.0)
            shapes.append(spot_shapes(photons, ref.panel, ref.xy))
            net += net_photons_at(photons, fr)
    report(f"real ({info.n_frames} frames)", np.concatenate(shapes), spikes, eligible_count(photons))
    report_net_photons(net)

    calibration = Path(f"results/matched/{experiment}/calibration.json")
    cut = (json.loads(calibration.read_text())["settings"]["peak_finder"]["score_min_photons"]
           if calibration.exists() else 40.0)
    shard = f"results/matched/{experiment}/shard_0000.h5"
    truth = S.read_truth(shard, ("frame_index", "x_px", "y_px", "photons", "visible"))
    index = S.read_frame_arrays(shard)["frame_index"]
    shapes, spikes = [], []
    for row, frame_index in enumerate(index):
        counts = S.read_images(shard, row).astype(float)[None]
        t = truth[(truth.frame_index == frame_index) & truth.visible & (truth.photons > cut)]
        shapes.append(spot_shapes(counts, np.zeros(len(t), int), t[["x_px", "y_px"]].to_numpy()))
        spikes.append(isolated_pixels(counts, 3.0))
    report(f"matched simulation ({len(index)} frames of {shard})", np.concatenate(shapes), spikes,
           eligible_count(counts))


if __name__ == "__main__":
    main(*sys.argv[1:])
