"""DIALS stills processing: PHIL from config and structure, and scores of DIALS' results against the truth.

DIALS itself runs in its own environment (Debian's /usr/bin programs, a conda env or a container); this module
writes its input and reads what workflow/scripts/dials_export.py (run with DIALS' Python) exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gemmi
import numpy as np
import pandas as pd

from .formats.dials_export import read_dials_export
from .formats.shards import read_frame_arrays
from .overlay import read_overlay_frames, read_overlay_truth


@dataclass(frozen=True)
class DialsSettings:
    indexing_method: str
    min_spot_size: int
    min_reflections: int
    ewald_proximal_volume_max: float
    cell_sigma_angstrom: float
    extra_phil: tuple[str, ...]

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "DialsSettings":
        """What stills_process is told (``nproc`` and ``container`` choose how it runs: no setting here)."""
        return cls(cfg["indexing_method"], int(cfg["min_spot_size"]), int(cfg["min_reflections"]),
                   float(cfg["ewald_proximal_volume_max"]), float(cfg["cell_sigma_angstrom"]),
                   tuple(cfg["extra_phil"]))


def stills_phil(spacegroup_hm: str, cell: tuple[float, ...], gain_adu_per_photon: float, s: DialsSettings) -> str:
    """PHIL for dials.stills_process: known symmetry and cell (tied to the target so that a ~ c cells cannot
    index with swapped axes), spot finding for photon-counting frames, composite output of every product."""
    sg = gemmi.SpaceGroup(spacegroup_hm).short_name()
    cell_txt = ",".join(f"{v:.4f}" for v in cell)
    sigmas = ",".join([f"{s.cell_sigma_angstrom:g}"] * 6)
    lines = [
        f"dispatch.hit_finder.minimum_number_of_reflections = {s.min_reflections}",
        f"spotfinder.filter.min_spot_size = {s.min_spot_size}",
        f"spotfinder.threshold.dispersion.gain = {gain_adu_per_photon:g}",
        f"indexing.known_symmetry.space_group = {sg}",
        f"indexing.known_symmetry.unit_cell = {cell_txt}",
        f"indexing.method = {s.indexing_method}",
        f"indexing.stills.ewald_proximal_volume_max = {s.ewald_proximal_volume_max:g}",
        "refinement.parameterisation.crystal.unit_cell.restraints.tie_to_target {",
        f"  values = {cell_txt}",
        f"  sigmas = {sigmas}",
        "}",
        f"integration.summation.detector_gain = {gain_adu_per_photon:g}",
        "output.composite_output = True",
        "output.experiments_filename = %s_imported.expt",
        "output.strong_filename = %s_strong.refl",
        "output.integration_pickle = None",
        *s.extra_phil,
    ]
    return "\n".join(lines) + "\n"


def _point_group_hkl_ops(spacegroup_hm: str) -> list[np.ndarray]:
    """Integer matrices M of the point group acting on Miller indices (h' = M h), proper rotations only."""
    ops = []
    for op in gemmi.SpaceGroup(spacegroup_hm).operations().sym_ops:
        rot = np.array(op.rot) // op.DEN
        if round(np.linalg.det(rot)) == 1:
            ops.append(rot.T)  # gemmi: h' = h R, i.e. M = R^T on column vectors
    return ops


def _rotation_angle_deg(r: np.ndarray) -> float:
    # Nearest rotation (polar decomposition) first: refined cells differ a little from the truth.
    u, _, vt = np.linalg.svd(r)
    rot = u @ vt
    return float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0))))


def match_setting(a_dials: np.ndarray, a_true: np.ndarray, hkl_ops: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """The point-group operation M with A_dials ~ A_true M (DIALS' choice among equivalent settings), and the
    misorientation angle (deg) left after it."""
    best, best_angle = hkl_ops[0], np.inf
    for m in hkl_ops:
        angle = _rotation_angle_deg(a_dials @ np.linalg.inv(a_true @ m))
        if angle < best_angle:
            best, best_angle = m, angle
    return best, best_angle


def score_shard(export_npz: str | Path, overlay_path: str | Path, spacegroup_hm: str,
                true_cell: tuple[float, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-frame and per-reflection tables of one shard, DIALS against the simulation's truth."""
    frames = read_overlay_frames(overlay_path)
    truth = read_overlay_truth(overlay_path)
    a_true_all = read_frame_arrays(overlay_path)["A_matrix"]
    ex = read_dials_export(export_npz, len(frames))
    ops = _point_group_hkl_ops(spacegroup_hm)
    true_cell = np.asarray(true_cell, float)
    rows, refl_rows = [], []
    r_frame = ex["refl_frame"].astype(int)
    for i, info in frames.iterrows():
        row = {"frame_index": int(info.frame_index), "hit": int(info.hit), "n_visible": int(info.n_peaks),
               "indexed": bool(ex["indexed"][i]), "n_strong": int(ex["n_strong"][i]),
               "n_indexed": int(ex["n_indexed"][i]), "n_integrated": int(ex["n_integrated"][i]),
               "rmsd_obs_cal_px": float(ex["rmsd_px"][i])}
        for j, name in enumerate(("a", "b", "c", "alpha", "beta", "gamma")):
            row[f"cell_{name}"] = float(ex["cell"][i, j])
        row.update(misorientation_deg=np.nan, cell_error_rel=np.nan, rmsd_cal_true_px=np.nan,
                   rmsd_obs_true_px=np.nan, n_matched=0)
        for j in range(9):
            row[f"A{j // 3}{j % 3}"] = float(ex["a_matrix"][i, j])
        if row["indexed"]:
            a_dials = ex["a_matrix"][i].reshape(3, 3)
            m, angle = match_setting(a_dials, a_true_all[i], ops)
            row["misorientation_deg"] = angle
            row["cell_error_rel"] = float(np.max(np.abs(ex["cell"][i, :3] - true_cell[:3]) / true_cell[:3]))
            sel = r_frame == i
            hkl_d = np.column_stack([ex["refl_h"][sel], ex["refl_k"][sel], ex["refl_l"][sel]]).astype(int)
            hkl_t = hkl_d @ m.T
            t = truth[truth.frame_index == info.frame_index].set_index(["h", "k", "l"])
            keys = list(map(tuple, hkl_t))
            found = np.array([k in t.index for k in keys], bool)
            xt = np.full(len(keys), np.nan)
            yt = np.full(len(keys), np.nan)
            if found.any():
                tt = t.loc[[k for k, ok in zip(keys, found) if ok]]
                xt[found], yt[found] = tt.x_px.to_numpy(), tt.y_px.to_numpy()
            refl = pd.DataFrame({
                "frame_index": int(info.frame_index), "h": hkl_d[:, 0], "k": hkl_d[:, 1], "l": hkl_d[:, 2],
                "h_true": hkl_t[:, 0], "k_true": hkl_t[:, 1], "l_true": hkl_t[:, 2],
                "x_obs_px": ex["refl_x_obs"][sel], "y_obs_px": ex["refl_y_obs"][sel],
                "x_cal_px": ex["refl_x_cal"][sel], "y_cal_px": ex["refl_y_cal"][sel],
                "x_true_px": xt, "y_true_px": yt, "intensity": ex["refl_intensity"][sel],
                "sigma": np.sqrt(np.clip(ex["refl_variance"][sel], 0, None)),
                "partiality": ex["refl_partiality"][sel], "d_angstrom": ex["refl_d"][sel]})
            refl_rows.append(refl)
            ok = refl.dropna(subset=["x_true_px"])
            if len(ok):
                row["n_matched"] = len(ok)
                row["rmsd_cal_true_px"] = float(np.sqrt(np.mean((ok.x_cal_px - ok.x_true_px) ** 2
                                                                + (ok.y_cal_px - ok.y_true_px) ** 2)))
                obs = ok[np.isfinite(ok.x_obs_px) & (ok.x_obs_px > 0)]
                if len(obs):
                    row["rmsd_obs_true_px"] = float(np.sqrt(np.mean((obs.x_obs_px - obs.x_true_px) ** 2
                                                                    + (obs.y_obs_px - obs.y_true_px) ** 2)))
        rows.append(row)
    refl_cols = ["frame_index", "h", "k", "l", "h_true", "k_true", "l_true", "x_obs_px", "y_obs_px", "x_cal_px",
                 "y_cal_px", "x_true_px", "y_true_px", "intensity", "sigma", "partiality", "d_angstrom"]
    # Typed empty columns where no frame indexed: an untyped frame would travel through HDF5 as text.
    reflections = (pd.concat(refl_rows, ignore_index=True) if refl_rows
                   else pd.DataFrame({c: np.zeros(0, int if c in ("frame_index", "h", "k", "l", "h_true", "k_true",
                                                                   "l_true") else float) for c in refl_cols}))
    return pd.DataFrame(rows), reflections


def dataset_scores(frames: pd.DataFrame, reflections: pd.DataFrame, structure: str, dataset: str,
                   min_spots_for_bar: int = 15) -> dict[str, Any]:
    """One row of the summary: indexing rate among hits, orientation and cell errors, positional RMSDs."""
    hits, blanks = frames[frames.hit == 1], frames[frames.hit == 0]
    idx = hits[hits.indexed]
    ok = reflections.dropna(subset=["x_true_px"]) if len(reflections) else reflections
    rmsd = (lambda dx, dy: float(np.sqrt(np.mean(dx**2 + dy**2))) if len(dx) else np.nan)
    obs = ok[np.isfinite(ok.x_obs_px) & (ok.x_obs_px > 0)] if len(ok) else ok
    scores = {
        "structure": structure, "dataset": dataset, "frames": len(frames), "hits": len(hits), "blanks": len(blanks),
        "mean_visible_spots_per_hit": float(hits.n_visible.mean()) if len(hits) else 0.0,
        "indexing_rate": float(len(idx) / len(hits)) if len(hits) else np.nan,
        "blank_frames_indexed": int(blanks.indexed.sum()),
        "misorientation_median_deg": float(idx.misorientation_deg.median()) if len(idx) else np.nan,
        "misorientation_max_deg": float(idx.misorientation_deg.max()) if len(idx) else np.nan,
        "cell_error_max_rel": float(idx.cell_error_rel.max()) if len(idx) else np.nan,
        "rmsd_cal_true_px": rmsd(ok.x_cal_px - ok.x_true_px, ok.y_cal_px - ok.y_true_px) if len(ok) else np.nan,
        "rmsd_obs_true_px": rmsd(obs.x_obs_px - obs.x_true_px, obs.y_obs_px - obs.y_true_px) if len(obs) else np.nan,
        "reflections_matched": int(len(ok)),
    }
    in_bar = scores["mean_visible_spots_per_hit"] >= min_spots_for_bar
    scores["bar_applies"] = bool(in_bar)
    scores["bar_met"] = bool(in_bar and scores["indexing_rate"] >= 0.9 and scores["cell_error_max_rel"] <= 0.005
                             and scores["rmsd_cal_true_px"] <= 1.0 and scores["blank_frames_indexed"] == 0) \
        if in_bar else None
    return scores
