"""What limits the prediction of real stills' spot positions: the offsets of DIALS' and the refined model's
predictions from the observed centroids (results/refined/experiments/<experiment>/offsets.tsv, written by the
rule experiment_refinement_scores), split by how far a relative change of the photon energy moves each spot.

A spot at Bragg angle theta on a detector at distance L moves radially by L 2 tan(theta) / cos^2(2 theta) px per
unit relative change of the wavelength (g below). A per-shot spectrum of spikes excites each partial reflection
at its own wavelength: a smooth spectrum model cannot place it, and the error shows as a radial offset growing
with g while the transverse one does not. The script prints RMSD radial and transverse per quartile of g, and the
per-reflection wavelength scatter (rms, relative) that the radial excess over the transverse implies,
radial^2 - transverse^2 = delta^2 g^2 (least squares). Also the photon-noise floor of the observed centroids
(3 x 3 and 5 x 5 pixels around each, Poisson, the frame's median background subtracted).

Run:  PYTHONPATH=src python benchmarks/real_still_residuals.py [--experiment thermolysin_lcls_cspad]
          [--results results]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from braggflow.formats.frames import read_frame_photons, read_frames_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="thermolysin_lcls_cspad")
    ap.add_argument("--results", default="results", type=Path)
    args = ap.parse_args()
    off = pd.read_csv(args.results / f"refined/experiments/{args.experiment}/offsets.tsv", sep="\t")
    frames = args.results / f"experiments/{args.experiment}/frames.h5"
    info = read_frames_info(frames)
    panel = info.panels[0]
    distance_px = abs(float(np.dot(panel.origin_mm, np.cross(panel.fast_axis, panel.slow_axis)))) / panel.pixel_size_mm
    lam = float(np.median(info.wavelength_angstrom))
    theta = np.arcsin(lam / (2 * off.d_angstrom.to_numpy(float)))
    g = distance_px * 2 * np.tan(theta) / np.cos(2 * theta) ** 2
    print(f"{args.experiment}: {len(off)} spots, {lam:.5f} A, {distance_px * panel.pixel_size_mm:.1f} mm")
    quartile = pd.qcut(g, 4, labels=False)
    for when in ("dials", "refined"):
        rad, tra = off[f"radial_{when}_px"].to_numpy(float), off[f"transverse_{when}_px"].to_numpy(float)
        delta2 = float(((rad ** 2 - tra ** 2) * g ** 2).sum() / (g ** 4).sum())
        print(f"{when}: RMSD {np.sqrt(np.mean(rad ** 2 + tra ** 2)):.3f} px; implied wavelength scatter "
              f"{np.sqrt(max(delta2, 0.0)):.2e} (rms, relative)")
        for q in range(4):
            s = quartile == q
            print(f"  g {np.median(g[s]):6.0f} px per unit: radial {np.sqrt(np.mean(rad[s] ** 2)):.3f}, "
                  f"transverse {np.sqrt(np.mean(tra[s] ** 2)):.3f} px ({int(s.sum())} spots)")
    images = {f: read_frame_photons(frames, f).astype(float) for f in sorted(set(off.frame))}
    for half in (1, 2):
        var = []
        for r in off.itertuples():
            img = images[r.frame][r.panel]
            bg = float(np.median(img[img >= 0]))
            x0, y0 = int(np.floor(r.x_obs_px)), int(np.floor(r.y_obs_px))
            ys, xs = np.mgrid[y0 - half:y0 + half + 1, x0 - half:x0 + half + 1]
            inside = (ys >= 0) & (ys < img.shape[0]) & (xs >= 0) & (xs < img.shape[1])
            c = np.where(inside, img[np.clip(ys, 0, img.shape[0] - 1), np.clip(xs, 0, img.shape[1] - 1)], 0.0)
            c = np.clip(c, 0.0, None)
            net = max(float((c - bg).sum()), 1.0)
            var.append(float((c * ((xs + 0.5 - r.x_obs_px) ** 2 + (ys + 0.5 - r.y_obs_px) ** 2)).sum()) / net ** 2)
        print(f"photon-noise floor of the observed centroids ({2 * half + 1} x {2 * half + 1} px): "
              f"{np.sqrt(np.mean(var)):.3f} px rms")


if __name__ == "__main__":
    main()
