"""The evaluation of one prediction file (every finder against every reference, frame by frame) and the table of
the frame classifiers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..formats.frames import read_frame_photons, read_frames_info
from ..formats.predictions import peak_probabilities, read_out_of_distribution, read_prediction
from .matching import score_frame
from .references import (cnn_found, dials_frames, dials_reference, dispersion_found, energy_distance_used,
                         truth_reference)


FRAME_COLUMNS = ("experiment", "model", "finder", "reference", "frame", "wavelength_angstrom_used",
                 "camera_length_m_used", "geometry_source", "out_of_distribution", "n_found", "n_reference", "tp",
                 "fn", "spurious")


def evaluate_predictions(*, experiment: str, model: str, frames_path: str, peak_pred: str, baseline_json: str,
                         dials_export: str | None, energy_distance_pred: str | None, truth_source: str | None,
                         cfg: dict[str, Any], log=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-frame counts (finder x reference) and every matched offset, for one (model, input)."""
    import json

    from ..overlay import read_overlay_frames, read_overlay_truth

    info = read_frames_info(frames_path)
    settings = json.loads(Path(baseline_json).read_text())["settings"]
    dials = dials_frames(dials_export, info.n_frames) if dials_export else None
    energy_distance = read_prediction(energy_distance_pred) if energy_distance_pred else None
    if truth_source:  # read once: every frame's truth rows come from these tables
        truth_frames, truth = read_overlay_frames(truth_source), read_overlay_truth(truth_source)
    radius = float(cfg.match_radius_px)
    unlike = read_out_of_distribution(peak_pred)  # frames the peak finder extrapolates on (ml.ood)
    rows, offsets = [], []
    with peak_probabilities(peak_pred) as (probability, threshold, min_px):  # one frame in memory at a time
        for i in range(info.n_frames):
            photons = read_frame_photons(frames_path, i)
            prob = probability(i)
            finders = {"cnn": cnn_found(prob, photons, threshold, min_px),
                       "dispersion": dispersion_found(photons, settings)}
            if dials is not None:
                finders["dials"] = dials[i].strong
            refs = {}
            if truth_source:
                frame_index = int(truth_frames.frame_index.iloc[int(info.source_index[i])])
                refs["truth"] = (truth_reference(truth, frame_index, info, i),
                                 float(info.wavelength_angstrom[i]),
                                 info.panels.distance_mm(info.beam_direction[i]) / 1e3, "simulation truth")
            if dials is not None and dials[i].indexed:
                fr, min_ios = dials[i], float(cfg.min_i_over_sigma)
                refs["dials"] = (dials_reference(fr, fr.wavelength_angstrom, 0.0, min_ios), fr.wavelength_angstrom,
                                 fr.distance_mm / 1e3, "DIALS geometry")
                if energy_distance is not None:
                    wl, dist_m, source = energy_distance_used(energy_distance, i)
                    shift_mm = dist_m * 1e3 - fr.distance_mm
                    refs["dials_predicted_geometry"] = (dials_reference(fr, wl, shift_mm, min_ios), wl, dist_m, source)
            for ref_name, (ref, wl, dist_m, source) in refs.items():
                for finder, found in finders.items():
                    counts, off = score_frame(found, ref, radius, info, info.beam_direction[i])
                    rows.append({"experiment": experiment, "model": model, "finder": finder, "reference": ref_name,
                                 "frame": i, "wavelength_angstrom_used": wl, "camera_length_m_used": dist_m,
                                 "geometry_source": source,
                                 "out_of_distribution": bool(unlike[i]) if unlike is not None and finder == "cnn"
                                 else False, **counts})
                    if len(off):
                        offsets.append(off.assign(experiment=experiment, model=model, finder=finder,
                                                  reference=ref_name, frame=i))
            if log:
                log.info("frame %d: %s", i, {k: len(v.panel) for k, v in finders.items()})
    cols = ["experiment", "model", "finder", "reference", "frame", "d_angstrom", "offset_px", "radial_px",
            "transverse_px"]
    off = pd.concat(offsets, ignore_index=True)[cols] if offsets else pd.DataFrame(columns=cols)
    if not rows and log:
        log.warning("%s: no frame has a reference to score against (DIALS indexed none of them%s): the table is "
                    "empty; check the experiment's dials settings (spot finding, cell, indexing method)", experiment,
                    ", and there is no truth" if not truth_source else "")
    return pd.DataFrame(rows, columns=list(FRAME_COLUMNS)), off


def _unlike(pred: dict) -> float:
    """Frames a model extrapolates on (NaN for a prediction made without a training envelope)."""
    flags = pred.get("out_of_distribution")
    return float(np.sum(flags)) if flags is not None else np.nan


def hit_labels(experiment: str, n_frames: int, truth_source: str | None, hit_frames, dials_export: str | None
               ) -> tuple[np.ndarray | None, str]:
    """(hit flag per frame or None, where the flags come from): a simulation's truth (per frame of the overlay the
    frames came from); else the config's ``hit_frames`` (frame indices, or ``dials_indexed``: DIALS' indexing)."""
    from ..config import ConfigError
    from ..formats.dials_export import read_dials_export
    from ..overlay import read_overlay_frames

    if truth_source:
        return read_overlay_frames(truth_source).hit.to_numpy(), "truth hit flags"
    if hit_frames is None:
        return None, "none"
    if hit_frames == "dials_indexed":
        return read_dials_export(dials_export, n_frames)["indexed"].astype(int), "frames DIALS indexed"
    idx = np.asarray(list(hit_frames), int)
    if len(idx) and (idx.min() < 0 or idx.max() >= n_frames):
        raise ConfigError(f"config key 'experiments.{experiment}.hit_frames': frame {int(idx.max())} is beyond the "
                          f"{n_frames} frames of the input (0-based)")
    flags = np.zeros(n_frames, int)
    flags[idx] = 1
    return flags, "hit_frames (config)"


def classifier_table(experiment: str, hit_preds: dict[str, str], energy_distance_pred: str | None,
                     truth_source: str | None, frames_path: str, hit_frames=None,
                     dials_export: str | None = None) -> pd.DataFrame:
    """Hit classifiers (accuracy against hit labels where known: a simulation's truth, or a file input's
    ``hit_frames``) and the energy / camera-length model (predicted class against the frames' own wavelength and
    distance)."""
    from ..units import energy_kev

    info = read_frames_info(frames_path)
    rows = []
    labels, source = hit_labels(experiment, info.n_frames, truth_source, hit_frames, dials_export)
    truth_hits = None if labels is None else (labels[info.source_index.astype(int)] if truth_source else labels)
    for model, path in hit_preds.items():
        pred = read_prediction(path)
        p = pred["pred"]
        pred_hit = (p >= 0.5).astype(int)
        rows.append({"experiment": experiment, "model": model, "frames": len(p), "predicted_hits": int(pred_hit.sum()),
                     "accuracy": float(np.mean(pred_hit == truth_hits)) if truth_hits is not None else np.nan,
                     "reference": source, "out_of_distribution_frames": _unlike(pred)})
    if energy_distance_pred:
        p = read_prediction(energy_distance_pred)
        e_true = [energy_kev(w) for w in info.wavelength_angstrom]
        d_true = [info.panels.distance_mm(b) / 1e3 for b in info.beam_direction]
        e_pred = np.asarray(p["energies_kev"])[np.argmax(p["energy_probability"], 1)]
        d_pred = np.asarray(p["camera_lengths_m"])[np.argmax(p["camera_length_probability"], 1)]
        e_near = np.asarray(p["energies_kev"])[[int(np.argmin(np.abs(np.asarray(p["energies_kev"]) - e)))
                                                for e in e_true]]
        d_near = np.asarray(p["camera_lengths_m"])[[int(np.argmin(np.abs(np.asarray(p["camera_lengths_m"]) - d)))
                                                    for d in d_true]]
        rows.append({"experiment": experiment, "model": "energy_distance", "frames": len(e_pred),
                     "predicted_hits": np.nan, "out_of_distribution_frames": _unlike(p),
                     "accuracy": float(np.mean(np.isclose(e_pred, e_near) & np.isclose(d_pred, d_near))),
                     "reference": "nearest matrix class of the file's energy and distance",
                     "energy_kev_file_median": float(np.median(e_true)), "camera_length_m_file_median":
                     float(np.median(d_true)), "energy_kev_predicted": ",".join(f"{v:g}" for v in e_pred),
                     "camera_length_m_predicted": ",".join(f"{v:g}" for v in d_pred)})
    return pd.DataFrame(rows)
