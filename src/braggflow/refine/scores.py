"""The refinement scored against the simulation's truth: DIALS' model (before) and the refined one (after).

Per still: misorientation (against the crystal's A, domain 0 of its mosaic, and, domains' mean orientation
against domains' mean orientation, which is what the spots of a mosaic crystal fix: a refinement of the domains
cannot tell which of them is "the crystal's"), the largest relative cell-edge error, Ncells against
the drawn one, the central photon energy against the drawn one, and the RMSD of predicted against true spot
positions over DIALS' integrated reflections matched to the truth (``dials_tables``), on the panel DIALS used.
Before: DIALS' own prediction (xyzcal, its stills predictor). After: the refined model's, where its spots centre
(``simulator.spot_centroids``, the truth's own definition, with the prior's spectrum and the refined domains). Two more
columns separate the predictor from the crystal model: DIALS' stills predictor with the refined A and wavelength
(``_stills``: what DIALS computes from the refined .expt), and the model's centroids with DIALS' A
(``_dials_model``). Offsets are split into radial (along the line from the direct beam to the true spot) and
transverse components.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ..dials import _point_group_hkl_ops, _rotation_angle_deg, match_setting
from ..evaluate.summary import resolution_edges
from ..simulator import spot_centroids
from ..stills import predicted_positions
from .shard import ENERGY_KEV_ANGSTROM, StillPrior, beam_of, export_detector, mean_orientation, refined_mosaic


def _a(row: pd.Series, prefix: str) -> np.ndarray:
    return np.array([row[f"{prefix}{i}{j}"] for i in range(3) for j in range(3)], float).reshape(3, 3)


def _components(dx: np.ndarray, dy: np.ndarray, radial_unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    radial = dx * radial_unit[:, 0] + dy * radial_unit[:, 1]
    transverse = -dx * radial_unit[:, 1] + dy * radial_unit[:, 0]
    return radial, transverse


def score_refined_shard(stills: pd.DataFrame, dials_frames: pd.DataFrame, dials_refl: pd.DataFrame,
                        export: dict[str, np.ndarray], truth_frames: dict[str, np.ndarray],
                        mosaic: np.ndarray, space_group: str, true_cell: tuple[float, ...], prior: StillPrior
                        ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-still scores, per-reflection offsets) of one shard. ``truth_frames``: the overlay's frame arrays
    (A_matrix, ncells, wavelengths_angstrom, weights, hit); ``mosaic``: the simulated domains (frames, M, 3, 3)."""
    ops = _point_group_hkl_ops(space_group)
    true_cell = np.asarray(true_cell, float)
    rows, offsets = [], []
    for _, s in stills.iterrows():
        i = int(s.frame)
        row: dict[str, Any] = {"frame_index": int(s.frame_index), "status": s.status, "converged": bool(s.converged),
                               "hit": int(truth_frames["hit"][i]), "spots": int(s.spots)}
        a_true = np.asarray(truth_frames["A_matrix"][i], float)
        a_mean = mean_orientation(mosaic[i]) @ a_true
        lam_true = float(np.asarray(truth_frames["wavelengths_angstrom"][i]) @ np.asarray(truth_frames["weights"][i]))
        refined = np.isfinite(s.A00)
        for when, prefix in (("dials", "A0_"), ("refined", "A")):
            a = _a(s, prefix)
            if not np.all(np.isfinite(a)):
                row.update({f"misorientation_{when}_deg": np.nan, f"misorientation_mean_{when}_deg": np.nan,
                            f"cell_error_{when}_rel": np.nan})
                continue
            m, angle = match_setting(a, a_true, ops)
            row[f"misorientation_{when}_deg"] = angle
            # a mosaic crystal's orientation: its domains' mean (the refined model's own domains where it has them;
            # which domain is "the crystal's" the spots cannot tell)
            a_model = mean_orientation(refined_mosaic(s, prior)) @ a if when == "refined" else a
            row[f"misorientation_mean_{when}_deg"] = _rotation_angle_deg(a_model @ np.linalg.inv(a_mean @ m))
            cell = np.array(_cell_lengths(a))
            row[f"cell_error_{when}_rel"] = float(np.max(np.abs(np.sort(cell) - np.sort(true_cell[:3]))
                                                         / np.sort(true_cell[:3])))
        row["ncells_true"] = float(np.mean(truth_frames["ncells"][i]))
        row["ncells_refined"] = float(np.mean([s.ncells_na, s.ncells_nb, s.ncells_nc])) if refined else np.nan
        row["ncells_error_rel"] = row["ncells_refined"] / row["ncells_true"] - 1.0
        energy_true = ENERGY_KEV_ANGSTROM / lam_true
        row["energy_error_dials_rel"] = float(s.energy_start_kev) / energy_true - 1.0
        row["energy_error_refined_rel"] = float(s.energy_kev) / energy_true - 1.0 if refined else np.nan
        row.update(rmsd_dials_px=np.nan, rmsd_refined_px=np.nan, rmsd_refined_stills_px=np.nan,
                   rmsd_dials_model_px=np.nan, n_matched=0)
        sel = dials_refl[(dials_refl.frame_index == s.frame_index) & np.isfinite(dials_refl.x_true_px)]
        det = export_detector(export, i)
        if refined and len(sel) and det is not None:
            direction, lam0 = beam_of(export, i)
            lam = lam0 * float(s.energy_start_kev) / float(s.energy_kev)
            hkl = sel[["h", "k", "l"]].to_numpy(int)
            panel = np.zeros(len(hkl), int)
            parallax = (np.nan_to_num(export["panel_parallax_mu_per_mm"][i]),
                        np.nan_to_num(export["panel_parallax_t0_mm"][i]))
            stills_xy = predicted_positions(_a(s, "A"), hkl, panel, det, direction, lam, parallax=parallax)
            ncells = (float(s.ncells_na), float(s.ncells_nb), float(s.ncells_nc))
            xy = spot_centroids(prior.still(_a(s, "A"), lam, ncells, refined_mosaic(s, prior)), det[0], hkl)
            dials_model_xy = spot_centroids(prior.still(_a(s, "A0_"), lam0), det[0], hkl)
            true = sel[["x_true_px", "y_true_px"]].to_numpy(float)
            bx, by, _ = det[0].ray_to_px(direction[None, :])
            centre = np.array([float(bx[0]), float(by[0])])
            r = true - centre
            unit = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-9)
            d_b = sel[["x_cal_px", "y_cal_px"]].to_numpy(float) - true
            d_a = xy - true
            rb, tb = _components(d_b[:, 0], d_b[:, 1], unit)
            ra, ta = _components(d_a[:, 0], d_a[:, 1], unit)
            ok = np.isfinite(d_a).all(axis=1) & np.isfinite(d_b).all(axis=1)
            off = pd.DataFrame({"frame_index": int(s.frame_index), "h": hkl[:, 0], "k": hkl[:, 1], "l": hkl[:, 2],
                                "d_angstrom": sel.d_angstrom.to_numpy(float), "dx_dials_px": d_b[:, 0],
                                "dy_dials_px": d_b[:, 1], "radial_dials_px": rb, "transverse_dials_px": tb,
                                "dx_refined_px": d_a[:, 0], "dy_refined_px": d_a[:, 1], "radial_refined_px": ra,
                                "transverse_refined_px": ta})[ok]
            offsets.append(off)
            if ok.any():
                row["n_matched"] = int(ok.sum())
                rms = (lambda d: float(np.sqrt(np.nanmean(np.sum(d[ok] ** 2, axis=1)))))
                row["rmsd_dials_px"] = rms(d_b)
                row["rmsd_refined_px"] = rms(d_a)
                row["rmsd_refined_stills_px"] = rms(stills_xy - true)
                row["rmsd_dials_model_px"] = rms(dials_model_xy - true)
        rows.append(row)
    cols = ["frame_index", "h", "k", "l", "d_angstrom", "dx_dials_px", "dy_dials_px", "radial_dials_px",
            "transverse_dials_px", "dx_refined_px", "dy_refined_px", "radial_refined_px", "transverse_refined_px"]
    return pd.DataFrame(rows), (pd.concat(offsets, ignore_index=True) if offsets
                                else pd.DataFrame({c: np.zeros(0) for c in cols}))


def _cell_lengths(a: np.ndarray) -> tuple[float, float, float]:
    real = np.linalg.inv(a)
    return tuple(float(np.linalg.norm(real[k])) for k in range(3))


def _rms(v: pd.Series | np.ndarray) -> float:
    v = np.asarray(v, float)
    return float(np.sqrt(np.mean(v ** 2))) if len(v) else math.nan


def dataset_summary(frames: pd.DataFrame, offsets: pd.DataFrame, structure: str, dataset: str,
                    detector: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row of the summary: before / after figures over the dataset's refined stills."""
    done = frames[np.isfinite(frames.misorientation_refined_deg)] if len(frames) else frames
    med = (lambda c: float(done[c].median()) if len(done) else math.nan)
    top = (lambda c: float(done[c].abs().max()) if len(done) else math.nan)
    row = {"structure": structure, "dataset": dataset, "stills": len(frames), "refined": len(done),
           "converged": int(done.converged.sum()) if len(done) else 0,
           "not_converged": int((~done.converged.astype(bool)).sum()) if len(done) else 0,
           "misorientation_dials_median_deg": med("misorientation_dials_deg"),
           "misorientation_refined_median_deg": med("misorientation_refined_deg"),
           "misorientation_dials_max_deg": top("misorientation_dials_deg"),
           "misorientation_refined_max_deg": top("misorientation_refined_deg"),
           "misorientation_mean_dials_median_deg": med("misorientation_mean_dials_deg"),
           "misorientation_mean_refined_median_deg": med("misorientation_mean_refined_deg"),
           "misorientation_mean_refined_max_deg": top("misorientation_mean_refined_deg"),
           "cell_error_dials_max_rel": top("cell_error_dials_rel"),
           "cell_error_refined_max_rel": top("cell_error_refined_rel"),
           "ncells_error_median_rel": float(done.ncells_error_rel.abs().median()) if len(done) else math.nan,
           "energy_error_dials_max_rel": top("energy_error_dials_rel"),
           "energy_error_refined_max_rel": top("energy_error_refined_rel"),
           "rmsd_dials_px": _rms(np.hypot(offsets.dx_dials_px, offsets.dy_dials_px)) if len(offsets) else math.nan,
           "rmsd_refined_px": _rms(np.hypot(offsets.dx_refined_px, offsets.dy_refined_px)) if len(offsets)
           else math.nan,
           "reflections": len(offsets)}
    if detector is not None:
        row["detector_distance_shift_mm"] = detector.get("distance_shift_mm", math.nan)
        shift = detector.get("beam_shift_px") or [math.nan, math.nan]
        row["detector_beam_shift_fast_px"], row["detector_beam_shift_slow_px"] = shift
        row["detector_converged"] = bool(detector.get("converged", False))
    return row


def offsets_by_resolution(offsets: pd.DataFrame, n_bins: int) -> pd.DataFrame:
    """RMSD of the prediction offsets (overall, radial, transverse), before and after, per dataset and resolution
    bin (equal reciprocal-space volumes over the dataset's reflections), and over all datasets ("all")."""
    rows = []
    groups = [("all", offsets)] + list(offsets.groupby("dataset", sort=False)) if len(offsets) else []
    for dataset, g in groups:
        edges = resolution_edges(g.d_angstrom.to_numpy(), n_bins)
        b = np.clip(np.searchsorted(edges, 1.0 / g.d_angstrom.to_numpy(float), side="right") - 1, 0, n_bins - 1)
        for k in range(n_bins):
            sel = g[b == k]
            row = {"dataset": dataset, "bin": k, "d_max_angstrom": 1.0 / edges[k] if edges[k] > 0 else np.inf,
                   "d_min_angstrom": 1.0 / edges[k + 1], "n": len(sel)}
            for when in ("dials", "refined"):
                row[f"rmsd_{when}_px"] = _rms(np.hypot(sel[f"dx_{when}_px"], sel[f"dy_{when}_px"]))
                row[f"rmsd_radial_{when}_px"] = _rms(sel[f"radial_{when}_px"])
                row[f"rmsd_transverse_{when}_px"] = _rms(sel[f"transverse_{when}_px"])
            rows.append(row)
    return pd.DataFrame(rows)
