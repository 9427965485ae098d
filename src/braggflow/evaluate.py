"""The peak-position evaluator: peaks found on experimental frames by a CNN, by the conventional dispersion finder
and by DIALS' own spot finder, against (a) the truth where the frames are simulated and (b) the spot positions
predicted from the DIALS-indexed crystal of each frame: reference ``dials`` at the geometry DIALS used, and
``dials_predicted_geometry`` at the photon energy and camera length the energy / camera-length model predicts
(so a wrong energy or distance shows up as offsets, as in diffBragg's prediction-offset plots).

Offsets are found minus reference position, in pixels, split in the detector plane into a radial component
(along the direction away from the beam axis, positive outward) and a transverse one (beam x radial);
the tables give signed medians per resolution bin (bins of equal reciprocal-space volume) and overall.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputError
from .panels import FramesInfo, Panels, read_frame_photons, read_frames_info

FINDERS = ("cnn", "dispersion", "dials")


@dataclass
class Found:
    panel: np.ndarray  # (n,)
    xy: np.ndarray  # (n, 2) px


@dataclass
class Reference:
    panel: np.ndarray
    xy: np.ndarray
    d_angstrom: np.ndarray
    ignore_panel: np.ndarray  # positions where an unmatched peak is not counted against the finder
    ignore_xy: np.ndarray


def _empty_found() -> Found:
    return Found(np.zeros(0, int), np.zeros((0, 2)))


def predicted_positions(a_matrix: np.ndarray, hkl: np.ndarray, panel: np.ndarray, panels: Panels,
                        beam_direction: np.ndarray, wavelength_angstrom: float, distance_shift_mm: float = 0.0,
                        parallax: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Stills prediction of reflections hkl (n, 3) on their panels, as DIALS' StillsReflectionPredictor does it:
    q = A h rotated about q x s0 onto the Ewald sphere of the given wavelength (|q| kept), s1 = s0 + q', the ray
    met by the panel planes moved ``distance_shift_mm`` along the beam. ``parallax``: (mu 1/mm, t0 mm) per panel,
    dxtbx's parallax correction (ParallaxCorrectedPxMmStrategy), which DIALS' pixel positions include."""
    b = np.asarray(beam_direction, float) / np.linalg.norm(beam_direction)
    k = 1.0 / wavelength_angstrom
    s0 = b * k
    q = np.asarray(hkl, float) @ np.asarray(a_matrix, float).reshape(3, 3).T
    perp = q - np.outer(q @ b, b)
    qq = np.einsum("ij,ij->i", q, q)
    along = qq / (2 * k)  # |s0 + q'| = |s0|  <=>  q'.b = -|q|^2 / (2 |s0|)
    with np.errstate(invalid="ignore", divide="ignore"):
        s1 = s0 - along[:, None] * b + (np.sqrt(qq - along**2) / np.linalg.norm(perp, axis=1))[:, None] * perp
    p = np.asarray(panel, int)
    xy = panels.intersect(p, s1, b * distance_shift_mm)
    if parallax is None:
        return xy
    mu, t0 = np.asarray(parallax[0], float)[p], np.asarray(parallax[1], float)[p]
    u = s1 / np.linalg.norm(s1, axis=1, keepdims=True)
    normal = panels.normal[p] * np.sign(np.einsum("ij,ij->i", panels.origin_mm[p], panels.normal[p]))[:, None]
    cos = np.einsum("ij,ij->i", u, normal)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(mu > 0, 1 / mu - (t0 / cos + 1 / mu) * np.exp(-mu * t0 / cos), 0.0)
    shift = np.column_stack([np.einsum("ij,ij->i", u, panels.fast_axis[p]),
                             np.einsum("ij,ij->i", u, panels.slow_axis[p])]) * depth[:, None]
    return xy + shift / panels.pixel_size_mm[p]


def resolution_angstrom(lab_mm: np.ndarray, beam_direction: np.ndarray, wavelength_angstrom: float) -> np.ndarray:
    b = np.asarray(beam_direction, float) / np.linalg.norm(beam_direction)
    u = lab_mm / np.linalg.norm(lab_mm, axis=1, keepdims=True)
    two_theta = np.arccos(np.clip(u @ b, -1.0, 1.0))
    with np.errstate(divide="ignore"):
        return wavelength_angstrom / (2.0 * np.sin(two_theta / 2.0))


def offset_components(panels: Panels, panel: np.ndarray, found_xy: np.ndarray, ref_xy: np.ndarray,
                      beam_direction: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(overall, radial, transverse) offsets in px of found minus reference positions."""
    b = np.asarray(beam_direction, float) / np.linalg.norm(beam_direction)
    ref_lab, found_lab = panels.to_lab(panel, ref_xy), panels.to_lab(panel, found_xy)
    radial = ref_lab - np.outer(ref_lab @ b, b)
    radial /= np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), 1e-12)
    transverse = np.cross(b, radial)
    delta = found_lab - ref_lab
    px = panels.pixel_size_mm[np.asarray(panel, int)].mean(axis=1)
    return np.linalg.norm(delta, axis=1) / px, np.sum(delta * radial, axis=1) / px, \
        np.sum(delta * transverse, axis=1) / px


def match_by_panel(found: Found, ref_panel: np.ndarray, ref_xy: np.ndarray, radius_px: float):
    """Matched (found index, reference index) pairs, one-to-one within each panel."""
    from .ml.metrics import match_peaks

    fi, ri = [], []
    for p in np.unique(np.concatenate([found.panel, ref_panel])) if len(found.panel) + len(ref_panel) else []:
        f_idx, r_idx = np.flatnonzero(found.panel == p), np.flatnonzero(ref_panel == p)
        a, b = match_peaks(found.xy[f_idx], ref_xy[r_idx], radius_px)
        fi.append(f_idx[a])
        ri.append(r_idx[b])
    cat = (lambda v: np.concatenate(v).astype(int) if v else np.zeros(0, int))
    return cat(fi), cat(ri)


def near_any(found: Found, panel: np.ndarray, xy: np.ndarray, radius_px: float) -> np.ndarray:
    """Which found peaks lie within radius of any of the given positions on their panel."""
    from scipy.spatial import cKDTree

    out = np.zeros(len(found.panel), bool)
    for p in np.unique(found.panel):
        sel, ref = found.panel == p, xy[panel == p]
        if len(ref):
            d, _ = cKDTree(ref).query(found.xy[sel])
            out[sel] = d <= radius_px
    return out


def score_frame(found: Found, ref: Reference, radius_px: float, info: FramesInfo, beam_direction: np.ndarray):
    """Counts and matched offsets of one frame: unmatched peaks near an ignore position are not spurious."""
    fi, ri = match_by_panel(found, ref.panel, ref.xy, radius_px)
    unmatched = np.setdiff1d(np.arange(len(found.panel)), fi)
    if len(unmatched) and len(ref.ignore_panel):
        rest = Found(found.panel[unmatched], found.xy[unmatched])
        unmatched = unmatched[~near_any(rest, ref.ignore_panel, ref.ignore_xy, radius_px)]
    counts = {"n_found": len(found.panel), "n_reference": len(ref.panel), "tp": len(fi),
              "fn": len(ref.panel) - len(ri), "spurious": len(unmatched)}
    if len(fi):
        total, radial, transverse = offset_components(info.panels, ref.panel[ri], found.xy[fi], ref.xy[ri],
                                                      beam_direction)
        offsets = pd.DataFrame({"d_angstrom": ref.d_angstrom[ri], "offset_px": total, "radial_px": radial,
                                "transverse_px": transverse})
    else:
        offsets = pd.DataFrame(columns=["d_angstrom", "offset_px", "radial_px", "transverse_px"], dtype=float)
    return counts, offsets


# ---------------------------------------------------------------- finders and references

def cnn_found(prob: np.ndarray, photons: np.ndarray, threshold: float, min_spot_px: int) -> Found:
    from .ml.baselines import spots_from_probability

    panels, xy = [], []
    for j in range(photons.shape[0]):
        s = spots_from_probability(prob[j].astype(np.float32), photons[j], threshold, min_spot_px)
        panels.append(np.full(len(s), j))
        xy.append(s)
    return Found(np.concatenate(panels).astype(int), np.concatenate(xy).reshape(-1, 2))


def dispersion_found(photons: np.ndarray, settings: dict[str, Any]) -> Found:
    from .ml.baselines import DispersionSettings, find_spots

    s = DispersionSettings(**settings)
    panels, xy = [], []
    for j in range(photons.shape[0]):
        spots = find_spots(photons[j], s)
        panels.append(np.full(len(spots), j))
        xy.append(spots)
    return Found(np.concatenate(panels).astype(int), np.concatenate(xy).reshape(-1, 2))


def truth_reference(truth: pd.DataFrame, frame_index: int, info: FramesInfo, frame: int) -> Reference:
    """The truth reflections of one simulated frame (``frame_index``: its number in the overlay's truth table):
    the visible ones are the reference, the others excuse a peak from being spurious."""
    t = truth[truth.frame_index == frame_index]
    vis = t.visible.astype(bool).to_numpy()
    xy = t[["x_px", "y_px"]].to_numpy(float)
    b, wl = info.beam_direction[frame], float(info.wavelength_angstrom[frame])
    lab = info.panels.to_lab(np.zeros(len(xy), int), xy) if len(xy) else np.zeros((0, 3))
    d = resolution_angstrom(lab, b, wl) if len(xy) else np.zeros(0)
    return Reference(np.zeros(int(vis.sum()), int), xy[vis], d[vis], np.zeros(int((~vis).sum()), int), xy[~vis])


@dataclass
class DialsFrame:
    indexed: bool
    a_matrix: np.ndarray
    hkl: np.ndarray
    panel: np.ndarray
    i_over_sigma: np.ndarray
    strong: Found
    panels: Panels | None  # the geometry DIALS used for this frame
    beam_direction: np.ndarray
    wavelength_angstrom: float
    parallax: tuple[np.ndarray, np.ndarray] | None

    @property
    def distance_mm(self) -> float:
        return self.panels.distance_mm(self.beam_direction)


def dials_frames(export_npz: str | Path, n_frames: int) -> list[DialsFrame]:
    """Per frame: DIALS' crystal, integrated reflections, strong spots and geometry (scripts/dials_export.py)."""
    try:
        ex = np.load(export_npz)
    except (OSError, ValueError) as exc:
        raise InputError(export_npz, f"unreadable DIALS export: {exc}") from None
    if len(ex["indexed"]) != n_frames:
        raise InputError(export_npz, f"{len(ex['indexed'])} frames exported; the frames file has {n_frames}")
    out = []
    rf, sf = ex["refl_frame"].astype(int), ex["strong_frame"].astype(int)
    for i in range(n_frames):
        sel, ss = rf == i, sf == i
        hkl = np.column_stack([ex["refl_h"][sel], ex["refl_k"][sel], ex["refl_l"][sel]]).astype(int)
        strong = Found(ex["strong_panel"][ss].astype(int), np.column_stack([ex["strong_x"][ss], ex["strong_y"][ss]]))
        s0 = ex["s0"][i]
        panels = parallax = None
        if np.isfinite(s0).all():
            n = len(ex["panel_origin_mm"][i])
            panels = Panels(tuple(f"panel{j}" for j in range(n)), ex["panel_origin_mm"][i], ex["panel_fast_axis"][i],
                            ex["panel_slow_axis"][i], ex["panel_pixel_size_mm"][i], ex["panel_image_size"][i])
            mu, t0 = ex["panel_parallax_mu_per_mm"][i], ex["panel_parallax_t0_mm"][i]
            parallax = (np.nan_to_num(mu), np.nan_to_num(t0)) if np.isfinite(mu).any() else None
        out.append(DialsFrame(bool(ex["indexed"][i]) and panels is not None, ex["a_matrix"][i].reshape(3, 3), hkl,
                              ex["refl_panel"][sel].astype(int), ex["refl_i_over_sigma"][sel], strong, panels,
                              s0 / np.linalg.norm(s0) if panels is not None else s0,
                              1.0 / np.linalg.norm(s0) if panels is not None else np.nan, parallax))
    return out


def dials_reference(frame: DialsFrame, wavelength_angstrom: float, distance_shift_mm: float,
                    min_i_over_sigma: float) -> Reference:
    """Reflections DIALS integrated on a frame, predicted at the given wavelength and distance shift: those with
    I/sigma >= min_i_over_sigma are the reference, the weaker ones are positions where a peak is not spurious."""
    b = frame.beam_direction
    xy = predicted_positions(frame.a_matrix, frame.hkl, frame.panel, frame.panels, b, wavelength_angstrom,
                             distance_shift_mm, frame.parallax) if len(frame.hkl) else np.zeros((0, 2))
    ok = np.isfinite(xy).all(axis=1)
    strong = ok & (np.nan_to_num(frame.i_over_sigma, nan=-np.inf) >= min_i_over_sigma)
    weak = ok & ~strong
    lab = frame.panels.to_lab(frame.panel[strong], xy[strong]) if strong.any() else np.zeros((0, 3))
    d = resolution_angstrom(lab, b, wavelength_angstrom) if strong.any() else np.zeros(0)
    return Reference(frame.panel[strong], xy[strong], d, frame.panel[weak], xy[weak])


def energy_distance_used(p: dict[str, Any], i: int) -> tuple[float, float, str]:
    """(wavelength A, camera length m, source) for frame i: the most probable classes of the energy /
    camera-length model's prediction ``p`` (``ml.predict.read_prediction``)."""
    from .units import wavelength_angstrom

    e = p["energies_kev"][int(np.argmax(p["energy_probability"][i]))]
    d = p["camera_lengths_m"][int(np.argmax(p["camera_length_probability"][i]))]
    return wavelength_angstrom(e), d, "energy_distance model"


# ---------------------------------------------------------------- the whole evaluation of one prediction file

def evaluate_predictions(*, experiment: str, model: str, frames_path: str, peak_pred: str, baseline_json: str,
                         dials_export: str | None, energy_distance_pred: str | None, truth_source: str | None,
                         cfg: dict[str, Any], log=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-frame counts (finder x reference) and every matched offset, for one (model, input)."""
    import json

    import h5py

    from .ml.predict import read_prediction
    from .overlay import read_overlay_frames, read_overlay_truth

    info = read_frames_info(frames_path)
    settings = json.loads(Path(baseline_json).read_text())["settings"]
    dials = dials_frames(dials_export, info.n_frames) if dials_export else None
    energy_distance = read_prediction(energy_distance_pred) if energy_distance_pred else None
    if truth_source:  # read once: every frame's truth rows come from these tables
        truth_frames, truth = read_overlay_frames(truth_source), read_overlay_truth(truth_source)
    radius = float(cfg.match_radius_px)
    rows, offsets = [], []
    with h5py.File(peak_pred, "r") as pred_file:  # one frame of probabilities in memory at a time
        threshold, min_px = float(pred_file.attrs["threshold"]), int(pred_file.attrs["min_spot_px"])
        for i in range(info.n_frames):
            photons = read_frame_photons(frames_path, i)
            prob = pred_file["pred"][i] if info.n_panels > 1 else pred_file["pred"][i][None]
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
                                 "geometry_source": source, **counts})
                    if len(off):
                        offsets.append(off.assign(experiment=experiment, model=model, finder=finder,
                                                  reference=ref_name, frame=i))
            if log:
                log.info("frame %d: %s", i, {k: len(v.panel) for k, v in finders.items()})
    cols = ["experiment", "model", "finder", "reference", "frame", "d_angstrom", "offset_px", "radial_px",
            "transverse_px"]
    off = pd.concat(offsets, ignore_index=True)[cols] if offsets else pd.DataFrame(columns=cols)
    return pd.DataFrame(rows), off


def _medians(off: pd.DataFrame) -> dict[str, float]:
    if not len(off):
        return {"rmsd_px": np.nan, "median_offset_px": np.nan, "median_radial_px": np.nan,
                "median_transverse_px": np.nan}
    return {"rmsd_px": float(np.sqrt(np.mean(off.offset_px.astype(float) ** 2))),
            "median_offset_px": float(off.offset_px.median()), "median_radial_px": float(off.radial_px.median()),
            "median_transverse_px": float(off.transverse_px.median())}


SUMMARY_KEYS = ["experiment", "model", "finder", "reference"]


def summarize(frames: pd.DataFrame, offsets: pd.DataFrame) -> pd.DataFrame:
    """One row per (experiment, model, finder, reference): precision, recall, F1, spurious peaks per frame,
    RMSD and median offsets of the matched peaks."""
    rows = []
    for key, g in frames.groupby(SUMMARY_KEYS, sort=False):
        tp, fn, spurious, found = int(g.tp.sum()), int(g.fn.sum()), int(g.spurious.sum()), int(g.n_found.sum())
        precision = tp / (tp + spurious) if tp + spurious else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        sel = offsets
        for k, v in zip(SUMMARY_KEYS, key):
            sel = sel[sel[k] == v]
        rows.append({**dict(zip(SUMMARY_KEYS, key)), "frames": int(g.frame.nunique()), "n_found": found,
                     "n_reference": int(g.n_reference.sum()), "tp": tp, "fn": fn, "spurious": spurious,
                     "precision": precision, "recall": recall, "f1": f1,
                     "spurious_per_frame": spurious / max(g.frame.nunique(), 1), **_medians(sel),
                     "geometry_source": ",".join(sorted({str(v) for v in g.geometry_source.dropna()}))})
    return pd.DataFrame(rows)


def resolution_edges(d_angstrom: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin edges in 1/d (ascending) of equal reciprocal-space volume between the lowest and highest 1/d."""
    s = 1.0 / np.asarray(d_angstrom, float)
    s = s[np.isfinite(s)]
    if not len(s):
        return np.array([0.0, 1.0])
    lo, hi = float(s.min()), float(s.max()) * (1 + 1e-9)
    return np.cbrt(np.linspace(lo**3, hi**3, n_bins + 1))


def offsets_by_resolution(offsets: pd.DataFrame, n_bins: int) -> pd.DataFrame:
    """Median offsets per resolution bin, per (experiment, model, finder, reference); the bins are shared by every
    model and finder of an (experiment, reference), so their rows compare bin by bin."""
    rows = []
    for (exp, ref), g in offsets.groupby(["experiment", "reference"], sort=False):
        edges = resolution_edges(g.d_angstrom.to_numpy(), n_bins)
        b = np.clip(np.searchsorted(edges, 1.0 / g.d_angstrom.to_numpy(float), side="right") - 1, 0, n_bins - 1)
        g = g.assign(bin=b)
        for (model, finder), h in g.groupby(["model", "finder"], sort=False):
            for k in range(n_bins):
                sel = h[h.bin == k]
                rows.append({"experiment": exp, "reference": ref, "model": model, "finder": finder, "bin": k,
                             "d_max_angstrom": 1.0 / edges[k] if edges[k] > 0 else np.inf,
                             "d_min_angstrom": 1.0 / edges[k + 1], "n": len(sel), **_medians(sel)})
    return pd.DataFrame(rows)


def rank_models(summary: pd.DataFrame) -> pd.DataFrame:
    """Rank every (model, finder) per (experiment, reference) by F1 (then recall, then fewer spurious peaks)."""
    out = summary.sort_values(["experiment", "reference", "f1", "recall", "spurious_per_frame"],
                              ascending=[True, True, False, False, True]).copy()
    out["rank"] = out.groupby(["experiment", "reference"]).cumcount() + 1
    return out.reset_index(drop=True)


def classifier_table(experiment: str, hit_preds: dict[str, str], energy_distance_pred: str | None,
                     truth_source: str | None, frames_path: str) -> pd.DataFrame:
    """Hit classifiers (accuracy against the truth's hit flags where known) and the energy / camera-length model
    (predicted class against the frames' own wavelength and distance)."""
    from .ml.predict import read_prediction
    from .overlay import read_overlay_frames
    from .units import energy_kev

    info = read_frames_info(frames_path)
    rows = []
    truth_hits = None
    if truth_source:
        fr = read_overlay_frames(truth_source)
        truth_hits = fr.hit.to_numpy()[info.source_index.astype(int)]
    for model, path in hit_preds.items():
        p = read_prediction(path)["pred"]
        pred_hit = (p >= 0.5).astype(int)
        rows.append({"experiment": experiment, "model": model, "frames": len(p), "predicted_hits": int(pred_hit.sum()),
                     "accuracy": float(np.mean(pred_hit == truth_hits)) if truth_hits is not None else np.nan,
                     "reference": "truth hit flags" if truth_hits is not None else "none"})
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
                     "predicted_hits": np.nan,
                     "accuracy": float(np.mean(np.isclose(e_pred, e_near) & np.isclose(d_pred, d_near))),
                     "reference": "nearest matrix class of the file's energy and distance",
                     "energy_kev_file_median": float(np.median(e_true)), "camera_length_m_file_median":
                     float(np.median(d_true)), "energy_kev_predicted": ",".join(f"{v:g}" for v in e_pred),
                     "camera_length_m_predicted": ",".join(f"{v:g}" for v in d_pred)})
    return pd.DataFrame(rows)


def plot_offsets(path: str | Path, bins: pd.DataFrame, title: str) -> None:
    """Median offset per resolution bin (overall, radial, transverse) of every model and finder, per reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .atomicplot import save_figure

    refs = list(dict.fromkeys(bins.reference)) if len(bins) else ["none"]
    fig, axes = plt.subplots(len(refs), 3, figsize=(15, 3.8 * len(refs)), squeeze=False)
    for r, ref in enumerate(refs):
        b = bins[bins.reference == ref] if len(bins) else bins
        for c, (col, label) in enumerate((("median_offset_px", "overall"), ("median_radial_px", "radial"),
                                          ("median_transverse_px", "transverse"))):
            ax = axes[r, c]
            for (model, finder), g in b.groupby(["model", "finder"], sort=False) if len(b) else []:
                x = 0.5 * (1 / g.d_max_angstrom.clip(upper=1e3) + 1 / g.d_min_angstrom)
                ax.plot(x, g[col], marker="o", ls="-" if finder == "cnn" else "--", label=f"{finder} ({model})")
            ax.axhline(0, color="grey", lw=0.5)
            ax.set(xlabel="1/d (1/A)", ylabel=f"median {label} offset (px)", title=f"{label}, against {ref}")
            if r == 0 and c == 0 and len(b):
                ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_summary(path: str | Path, summary: pd.DataFrame) -> None:
    """Recall, precision and spurious peaks per frame of every (experiment, model, finder) per reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .atomicplot import save_figure

    refs = list(dict.fromkeys(summary.reference)) or ["none"]
    fig, axes = plt.subplots(len(refs), 3, figsize=(16, 4.2 * len(refs)), squeeze=False)
    for r, ref in enumerate(refs):
        s = summary[summary.reference == ref]
        labels = [f"{e}\n{m}\n{f}" for e, m, f in zip(s.experiment, s.model, s.finder)]
        x = np.arange(len(s))
        colours = ["tab:red" if f == "cnn" else ("tab:blue" if f == "dispersion" else "tab:green") for f in s.finder]
        for c, (col, label) in enumerate((("recall", "recall"), ("precision", "precision"),
                                          ("spurious_per_frame", "spurious peaks per frame"))):
            ax = axes[r, c]
            ax.bar(x, s[col], color=colours)
            ax.set(xticks=x, ylabel=label, title=f"{label} against {ref} (red CNN, blue dispersion, green DIALS)")
            ax.set_xticklabels(labels, fontsize=6, rotation=90)
    fig.tight_layout()
    save_figure(fig, path)


def read_tables(paths: Sequence[str]) -> pd.DataFrame:
    frames = [pd.read_csv(p, sep="\t") for p in paths]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
