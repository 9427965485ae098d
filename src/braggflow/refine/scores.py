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


def observed_offsets(export: dict[str, np.ndarray], stills: pd.DataFrame, prior: StillPrior,
                     match_px: float = 2.0) -> pd.DataFrame:
    """Predicted minus observed spot centroids of real stills, per spot: DIALS' own prediction (xyzcal of its
    integrated reflections) and the refined model's (``simulator.spot_centroids`` of the same Miller index, with
    the prior's spectrum and the refined crystal and domains), against DIALS' strong-spot centroids
    (xyzobs.px.value). A strong spot is paired with the DIALS prediction nearest it on its panel within
    ``match_px`` (each prediction once, nearest pairs first): the spots DIALS' model accounts for. Offsets in px
    and um, split into radial (in the lab, away from the beam axis, within the panel's plane) and transverse."""
    from ..detector import Detector

    cols = ["frame", "panel", "h", "k", "l", "d_angstrom", "x_obs_px", "y_obs_px"]
    rows = []
    for _, s in stills.iterrows():
        i = int(s.frame)
        if not np.isfinite(s.A00):
            continue
        det = export_detector(export, i)
        direction, lam0 = beam_of(export, i)
        lam = lam0 * float(s.energy_start_kev) / float(s.energy_kev)
        ncells = (float(s.ncells_na), float(s.ncells_nb), float(s.ncells_nc))
        still = prior.still(_a(s, "A"), lam, ncells, refined_mosaic(s, prior))
        sel_s = export["strong_frame"] == i
        sel_r = export["refl_frame"] == i
        for k, panel in enumerate(det.panels):
            obs = np.column_stack([export["strong_x"][sel_s & (export["strong_panel"] == k)],
                                   export["strong_y"][sel_s & (export["strong_panel"] == k)]]).astype(float)
            on = sel_r & (export["refl_panel"] == k)
            cal = np.column_stack([export["refl_x_cal"][on], export["refl_y_cal"][on]]).astype(float)
            if not len(obs) or not len(cal):
                continue
            dist = np.hypot(obs[:, None, 0] - cal[None, :, 0], obs[:, None, 1] - cal[None, :, 1])
            pairs, used_o, used_c = [], set(), set()
            for flat in np.argsort(dist, axis=None, kind="stable"):
                o, c = np.unravel_index(flat, dist.shape)
                if dist[o, c] > match_px:
                    break
                if o in used_o or c in used_c:
                    continue
                used_o.add(o), used_c.add(c), pairs.append((o, c))
            if not pairs:
                continue
            o_idx, c_idx = np.array(pairs).T
            hkl = np.column_stack([export[f"refl_{a}"][on][c_idx] for a in "hkl"]).astype(int)
            refined = spot_centroids(still, Detector((panel,))[0], hkl)
            xy_obs = obs[o_idx]
            pix = float(panel.pixel_size_mm)
            lab = (np.asarray(panel.origin_mm) + xy_obs[:, :1] * pix * np.asarray(panel.fast_axis)
                   + xy_obs[:, 1:] * pix * np.asarray(panel.slow_axis))
            radial = lab - (lab @ direction)[:, None] * direction
            radial /= np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), 1e-12)
            transverse = np.cross(direction, radial)
            row = {"frame": i, "panel": k, "h": hkl[:, 0], "k": hkl[:, 1], "l": hkl[:, 2],
                   "d_angstrom": export["refl_d"][on][c_idx].astype(float), "x_obs_px": xy_obs[:, 0],
                   "y_obs_px": xy_obs[:, 1]}
            for when, xy in (("dials", cal[c_idx]), ("refined", refined)):
                d = xy - xy_obs
                off_mm = (d[:, :1] * pix * np.asarray(panel.fast_axis) + d[:, 1:] * pix * np.asarray(panel.slow_axis))
                row[f"dx_{when}_px"], row[f"dy_{when}_px"] = d[:, 0], d[:, 1]
                row[f"radial_{when}_px"] = (off_mm * radial).sum(1) / pix
                row[f"transverse_{when}_px"] = (off_mm * transverse).sum(1) / pix
                row[f"radial_{when}_um"] = row[f"radial_{when}_px"] * pix * 1e3
                row[f"transverse_{when}_um"] = row[f"transverse_{when}_px"] * pix * 1e3
            row["pixel_um"] = pix * 1e3
            rows.append(pd.DataFrame(row))
    if not rows:
        return pd.DataFrame({c: np.zeros(0) for c in cols})
    out = pd.concat(rows, ignore_index=True)
    return out[np.isfinite(out[["dx_refined_px", "dy_refined_px"]]).all(axis=1)].reset_index(drop=True)


def observed_by_resolution(offsets: pd.DataFrame, n_bins: int) -> pd.DataFrame:
    """RMSD of predicted against observed centroids (overall, radial, transverse; px and um), DIALS' and the
    refined model's, per resolution bin of equal reciprocal-space volume and over all spots (bin "all"), with the
    refined model's RMSD relative to DIALS' (``change_rel``: -0.3 is 30 % lower)."""
    def row_of(sel: pd.DataFrame, name, d_max, d_min) -> dict[str, Any]:
        row = {"bin": name, "d_max_angstrom": d_max, "d_min_angstrom": d_min, "n": len(sel)}
        for unit in ("px", "um"):
            f = 1.0 if unit == "px" else sel.pixel_um.to_numpy(float)
            for when in ("dials", "refined"):
                row[f"rmsd_{when}_{unit}"] = _rms(np.hypot(sel[f"dx_{when}_px"], sel[f"dy_{when}_px"]) * f)
                row[f"rmsd_radial_{when}_{unit}"] = _rms(sel[f"radial_{when}_px"] * f)
                row[f"rmsd_transverse_{when}_{unit}"] = _rms(sel[f"transverse_{when}_px"] * f)
        row["change_rel"] = row["rmsd_refined_px"] / row["rmsd_dials_px"] - 1.0 if len(sel) else math.nan
        return row

    if not len(offsets):
        return pd.DataFrame([row_of(offsets, "all", math.nan, math.nan)])
    d = offsets.d_angstrom.to_numpy(float)
    edges = resolution_edges(d, n_bins)
    b = np.clip(np.searchsorted(edges, 1.0 / d, side="right") - 1, 0, n_bins - 1)
    rows = [row_of(offsets[b == k], str(k), 1.0 / edges[k] if edges[k] > 0 else np.inf, 1.0 / edges[k + 1])
            for k in range(n_bins)]
    rows.append(row_of(offsets, "all", float(d.max()), float(d.min())))
    return pd.DataFrame(rows)
