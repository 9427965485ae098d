"""Both peak finders at every setting they were tuned over, scored on an experiment's real frames.

The evaluator scores each finder at the one setting tuned on simulated frames (threshold and minimum spot size
of the CNN; sigma_strong and minimum spot size of the dispersion finder). Where two settings score alike on
simulation, that choice can land either finder anywhere on its recall / spurious-peak curve, so this prints the
whole curve of each on the real frames, against the DIALS-indexed reflections with I/sigma >= the evaluator's
cut (3 px). The tuned setting is marked with *. Nothing here is used to choose a setting.

usage: python benchmarks/real_operating_points.py [experiment] [--replace-workflow-config] [--configfile my.yaml ...]
(after the workflow has run it; the config options as given to snakemake). Single- and multi-panel inputs alike.
"""

import argparse
import itertools
import json
from pathlib import Path

from braggflow import evaluate as E
from braggflow.config import workflow_config
from braggflow.formats.frames import read_frame_photons, read_frames_info
from braggflow.formats.predictions import peak_probabilities


ROOT = Path(__file__).resolve().parents[1]


def main(experiment: str, cfg: dict) -> None:
    radius, min_ios = float(cfg["match_radius_px"]), float(cfg["min_i_over_sigma"])
    frames = f"results/experiments/{experiment}/frames.h5"
    info = read_frames_info(frames)
    dials = E.dials_frames(f"results/experiments/{experiment}/dials/export.npz", info.n_frames)
    use = [i for i, fr in enumerate(dials) if fr.indexed]
    refs = {i: E.dials_reference(dials[i], dials[i].wavelength_angstrom, 0.0, min_ios) for i in use}
    photons = {i: read_frame_photons(frames, i) for i in use}
    pred_path = f"results/predictions/{experiment}/peak_finder-matched/{experiment}_probability_pred.h5"
    with peak_probabilities(pred_path) as (probability, threshold, min_spot_px):
        prob = {i: probability(i) for i in use}
        tuned_cnn = (threshold, min_spot_px)
    card = json.loads(Path(f"results/matched/{experiment}/peak_finder.json").read_text())
    baseline = json.loads(Path(f"results/matched/{experiment}/baseline_peaks.json").read_text())

    def score(found) -> tuple[float, float]:
        tp = n = spurious = 0
        for i in use:
            c, _ = E.score_frame(found(i), refs[i], radius, info, info.beam_direction[i])
            tp, n, spurious = tp + c["tp"], n + c["n_reference"], spurious + c["spurious"]
        return tp / max(n, 1), spurious / len(use)

    print(f"{experiment}: {len(use)} indexed frames, {sum(len(r.panel) for r in refs.values())} reflections "
          f"with I/sigma >= {min_ios:g}; recall / spurious peaks per frame (* = tuned on simulated frames)")
    grid = card["metrics"]["tuning_grid"]
    for thr, min_px in sorted({(g["threshold"], g["min_spot_px"]) for g in grid}):
        r, s = score(lambda i: E.cnn_found(prob[i], photons[i], thr, min_px))
        mark = "*" if (thr, min_px) == tuned_cnn else " "
        print(f"{mark} cnn        threshold {thr:<5g} min {min_px} px   recall {r:.3f}   spurious {s:6.2f}")
    tuned = baseline["settings"]
    for sigma, min_px in itertools.product(sorted({g["sigma_strong"] for g in baseline["tuning_grid"]}),
                                           sorted({g["min_spot_px"] for g in baseline["tuning_grid"]})):
        s_ = dict(tuned, sigma_strong=sigma, min_spot_px=min_px)
        r, s = score(lambda i: E.dispersion_found(photons[i], s_))
        mark = "*" if (sigma, min_px) == (tuned["sigma_strong"], tuned["min_spot_px"]) else " "
        print(f"{mark} dispersion sigma_strong {sigma:<4g} min {min_px} px   recall {r:.3f}   spurious {s:6.2f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", nargs="?", default="thermolysin_lcls_cspad")
    ap.add_argument("--configfile", nargs="+", default=[])
    ap.add_argument("--replace-workflow-config", action="store_true")
    args = ap.parse_args()
    config = workflow_config(args.configfile, ROOT, args.replace_workflow_config)
    main(args.experiment, config["evaluation"])
