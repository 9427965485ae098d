"""What is scored: the peaks each finder finds on a frame, and the reference positions (the simulation's truth,
the DIALS-indexed crystal's predictions at DIALS' geometry or at the energy / camera-length model's)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..detector import Detector
from ..formats.dials_export import read_dials_export
from ..formats.frames import FramesInfo
from ..stills import predicted_positions, resolution_angstrom
from .matching import Found, Reference


def cnn_found(prob: np.ndarray, photons: np.ndarray, threshold: float, min_spot_px: int) -> Found:
    from ..ml.baselines import spots_from_probability

    panels, xy = [], []
    for j in range(photons.shape[0]):
        s = spots_from_probability(prob[j].astype(np.float32), photons[j], threshold, min_spot_px)
        panels.append(np.full(len(s), j))
        xy.append(s)
    return Found(np.concatenate(panels).astype(int), np.concatenate(xy).reshape(-1, 2))


def dispersion_found(photons: np.ndarray, settings: dict[str, Any]) -> Found:
    from ..ml.baselines import DispersionSettings, find_spots

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
    panels: Detector | None  # the geometry DIALS used for this frame
    beam_direction: np.ndarray
    wavelength_angstrom: float
    parallax: tuple[np.ndarray, np.ndarray] | None

    @property
    def distance_mm(self) -> float:
        return self.panels.distance_mm(self.beam_direction)


def dials_frames(export_npz: str | Path, n_frames: int) -> list[DialsFrame]:
    """Per frame: DIALS' crystal, integrated reflections, strong spots and geometry (scripts/dials_export.py)."""
    ex = read_dials_export(export_npz, n_frames)
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
            panels = Detector.from_arrays(tuple(f"panel{j}" for j in range(n)), ex["panel_origin_mm"][i], ex["panel_fast_axis"][i],
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
    from ..units import wavelength_angstrom

    e = p["energies_kev"][int(np.argmax(p["energy_probability"][i]))]
    d = p["camera_lengths_m"][int(np.argmax(p["camera_length_probability"][i]))]
    return wavelength_angstrom(e), d, "energy_distance model"
