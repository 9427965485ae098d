"""Training frames in an experiment's own geometry (sim-to-real): panels, distance and wavelength come from the
experiment's frames file (the detector and beam models dxtbx read), so a peak finder is trained for that detector.

Each panel of a multi-panel detector is a flat ``FlatDetector`` in a lab frame rotated so that the experiment's
beam runs along the simulator's incident direction (0, 0, -1); the simulator and the truth predictor then run per
panel on one crystal draw. Water photons per pixel follow ``braggflow.water`` (same |F(q)|^2 table, n t r_e^2,
Omega and Kahn polarization), evaluated at each pixel's lab position instead of through pyFAI's single panel.

Training shard (``results/matched/{experiment}/shard_{shard}.h5``): the panels of a frame stacked along slow,
``STACK_GAP_PX`` untrusted rows between them, so the CNN training and the baselines read it like any overlay
shard. Untrusted rows read 0 in every network channel, as the zero padding that surrounds each panel when the
CNN predicts panel by panel; the gap exceeds the U-Net's receptive field, so panels do not see each other.
It is a training file, not a detector image: /braggflow/panels holds the geometry and the truth table gives
every reflection's panel and panel coordinates besides the stacked ones.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from scipy import ndimage

from . import __version__
from .beam import Beam
from .draws import draw_frame
from .errors import InputError
from .io import atomic_path
from .nxmx import DATA_PATH
from .ml.data import LABEL_PATH
from .overlay import OverlaySettings, bad_pixel_mask, frame_conditions, frame_rng, overlay_frame, _visible
from .panels import FramesInfo, Panels
from .shards import (SimulationSettings, TRUTH_COLUMNS, b_matrix, beam_polarization_axis,
                     load_structure_factors, simulate_frame)
from .simulator import INCIDENT_UNIT, FlatDetector, get_array_module, polarization_basis
from .units import R_E_SQUARED_M2, energy_kev
from .water import WATER_NUMBER_DENSITY_PER_M3, load_water_table

STACK_GAP_PX = 32


# ---------------------------------------------------------------- geometry

def beam_rotation(beam_direction: np.ndarray) -> np.ndarray:
    """Proper rotation R with R @ beam = (0, 0, -1): the simulator's incident direction."""
    b = np.asarray(beam_direction, float)
    b = b / np.linalg.norm(b)
    t = INCIDENT_UNIT
    v, c = np.cross(b, t), float(np.dot(b, t))
    if np.linalg.norm(v) < 1e-12:
        if c > 0:
            return np.eye(3)
        return np.diag([1.0, -1.0, -1.0])  # 180 deg about x
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def panel_detectors(panels: Panels, beam_direction: np.ndarray, path: str | Path = "frames file") -> list[FlatDetector]:
    """One FlatDetector per panel, in the lab frame where the beam runs along (0, 0, -1)."""
    ps = np.asarray(panels.pixel_size_mm, float)
    if not np.allclose(ps[:, 0], ps[:, 1], rtol=1e-6):
        raise InputError(path, f"panels with rectangular pixels ({ps[0].tolist()} mm) are not supported by the "
                               "simulator (square pixels only)")
    r = beam_rotation(beam_direction)
    out = []
    for i in range(len(panels)):
        fast, slow = r @ panels.fast_axis[i], r @ panels.slow_axis[i]
        out.append(FlatDetector(origin_mm=tuple(r @ panels.origin_mm[i]), fast_axis=tuple(fast / np.linalg.norm(fast)),
                                slow_axis=tuple(slow / np.linalg.norm(slow)), pixel_size_mm=float(ps[i, 0]),
                                n_fast=int(panels.image_size[i, 0]), n_slow=int(panels.image_size[i, 1])))
    return out


def pixel_factors(det: FlatDetector, wavelength_angstrom: float, beam: Beam) -> tuple[np.ndarray, np.ndarray]:
    """(q in 1/A, Omega * P) at every pixel centre of a panel, (slow, fast) float64: the simulator's solid angle
    (pixel^2 close_distance / R^3) and Kahn polarization with the beam's E vector."""
    j, i = np.mgrid[0:det.n_slow, 0:det.n_fast].astype(float) + 0.5
    pos = (np.asarray(det.origin_mm)[:, None, None] + np.asarray(det.fast_axis)[:, None, None] * (i * det.pixel_size_mm)
           + np.asarray(det.slow_axis)[:, None, None] * (j * det.pixel_size_mm))
    r = np.sqrt(np.sum(pos * pos, axis=0))
    d = pos / r
    cos2t = -d[2]  # incident (0, 0, -1)
    q = 4.0 * np.pi * np.sqrt(np.clip((1.0 - cos2t) / 2.0, 0.0, None)) / wavelength_angstrom
    omega = det.pixel_size_mm**2 * det.close_distance_mm / r**3
    e_in, b_in = polarization_basis(beam_polarization_axis(beam))
    de, db = np.tensordot(e_in, d, 1), np.tensordot(b_in, d, 1)
    pol = 0.5 * (1.0 + cos2t**2 - beam.kahn_factor * (de * de - db * db))
    return q, omega * pol


def water_panels(detectors: list[FlatDetector], wavelength_angstrom: float, beam: Beam, jet_thickness_m: float,
                 table_path: str | Path, number_density_per_m3: float = WATER_NUMBER_DENSITY_PER_M3) -> np.ndarray:
    """(panels, slow, fast) float32 expected water photons per pixel per pulse (``braggflow.water``'s model)."""
    if not jet_thickness_m > 0:
        raise ValueError(f"jet thickness must be > 0 m, got {jet_thickness_m!r}")
    q_tab, f2_tab = load_water_table(table_path)
    scale = beam.photons_per_pulse * number_density_per_m3 * jet_thickness_m * R_E_SQUARED_M2
    out = []
    for det in detectors:
        q, omega_pol = pixel_factors(det, wavelength_angstrom, beam)
        if q.max() > q_tab[-1]:
            raise InputError(table_path, f"water table ends at q = {q_tab[-1]:g} 1/A but the detector reaches "
                                         f"{q.max():.3f} 1/A")
        out.append(scale * np.interp(q, q_tab, f2_tab) * omega_pol)
    return np.stack(out).astype(np.float32)


def d_min_angstrom(detectors: list[FlatDetector], wavelength_angstrom: float) -> float:
    """Finest d any pixel of the panels records (corners included)."""
    cos_min = 1.0
    for det in detectors:
        for i in (0, det.n_fast):
            for j in (0, det.n_slow):
                p = (np.asarray(det.origin_mm) + i * det.pixel_size_mm * np.asarray(det.fast_axis)
                     + j * det.pixel_size_mm * np.asarray(det.slow_axis))
                cos_min = min(cos_min, float(-p[2] / np.linalg.norm(p)))
    two_theta = math.acos(max(-1.0, min(1.0, cos_min)))
    return wavelength_angstrom / (2.0 * math.sin(two_theta / 2.0))


def experiment_wavelength_angstrom(info: FramesInfo) -> float:
    """The experiment's wavelength: the median over its frames (XFEL pulses jitter)."""
    return float(np.median(info.wavelength_angstrom))


def experiment_beam_direction(info: FramesInfo) -> np.ndarray:
    b = np.mean(np.asarray(info.beam_direction, float), axis=0)
    return b / np.linalg.norm(b)


# ---------------------------------------------------------------- stacking

def stacked_offsets(n_panels: int, n_slow: int) -> np.ndarray:
    """First stacked row of every panel."""
    return np.arange(n_panels) * (n_slow + STACK_GAP_PX)


def stack_panels(a: np.ndarray, fill) -> np.ndarray:
    """(panels, slow, fast) -> (panels * (slow + gap) - gap, fast), ``fill`` in the gaps."""
    p, ny, nx = a.shape
    out = np.full((p * (ny + STACK_GAP_PX) - STACK_GAP_PX, nx), fill, dtype=a.dtype)
    for i, y0 in enumerate(stacked_offsets(p, ny)):
        out[y0:y0 + ny] = a[i]
    return out


def unstack_panels(a: np.ndarray, n_panels: int, n_slow: int) -> np.ndarray:
    return np.stack([a[y0:y0 + n_slow] for y0 in stacked_offsets(n_panels, n_slow)])


# ---------------------------------------------------------------- the shard

def untrusted_pixels(info: FramesInfo) -> np.ndarray:
    """(panels, slow, fast) bool: pixels the experiment marks untrusted (-1) in every frame."""
    with h5py.File(info.path, "r") as f:
        data = f["data"]
        out = np.ones(data.shape[1:], bool)
        for i in range(data.shape[0]):
            out &= data[i] < 0
    return out


def write_matched_shard(path: str | Path, *, info: FramesInfo, mtz_path: str | Path, water_table: str | Path,
                        beam: Beam, simulation: SimulationSettings, overlay: OverlaySettings, jet_thickness_m: float,
                        seed: int, dataset: str, dataset_index: int, frames: range, structure: str,
                        outlier_amplitudes: np.ndarray | None = None, backend: str = "numpy",
                        log=None) -> dict[str, Any]:
    """Simulate ``frames`` in the experiment's geometry and write one stacked training shard atomically.
    ``outlier_amplitudes``: lone-pixel photons measured in the experiment's frames (outliers.py) to draw outliers
    from, at ``overlay.outlier_pixels_per_mpx``; None draws them log-uniformly within overlay.outlier_photons."""
    wavelength = experiment_wavelength_angstrom(info)
    beam_dir = experiment_beam_direction(info)
    dets = panel_detectors(info.panels, beam_dir, info.path)
    n_panels, (n_slow, n_fast) = len(dets), info.shape
    water = water_panels(dets, wavelength, beam, jet_thickness_m, water_table)
    sf, cell = load_structure_factors(mtz_path)
    b = b_matrix(cell)
    xp = get_array_module(backend)
    untrusted = untrusted_pixels(info) | bad_pixel_mask(water.shape, overlay.bad_pixel_fraction, seed)
    stacked_untrusted = stack_panels(untrusted, True)
    stacked_water = stack_panels(water, np.float32(0.0))
    y_offsets = stacked_offsets(n_panels, n_slow)
    n = len(frames)
    shape = stacked_water.shape
    per_frame, truth_tables, seconds = [], [], []
    geometry = {"energy_kev": energy_kev(wavelength), "camera_length_m": info.panels.distance_mm(beam_dir) / 1e3,
                "wavelength_angstrom": wavelength, "beam_center_px": [math.nan, math.nan],
                "layout": "panels stacked along slow", "n_panels": n_panels, "panel_shape": [n_slow, n_fast],
                "stack_gap_px": STACK_GAP_PX}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        data = f.create_dataset(DATA_PATH, shape=(n, *shape), dtype=np.int32, chunks=(1, *shape),
                                compression="gzip", compression_opts=4)
        labels = f.create_dataset(LABEL_PATH, shape=(n, *shape), dtype=np.uint8, chunks=(1, *shape),
                                  compression="gzip", compression_opts=4)
        for row, frame_index in enumerate(frames):
            t0 = time.perf_counter()
            d = draw_frame(simulation.draws, seed, dataset_index, frame_index)
            images, rows = [], []
            for p, det in enumerate(dets):
                image, truth = simulate_frame(d, b, sf, det, simulation, beam, xp)
                images.append(image)
                rows.append(pd.DataFrame({"frame_index": frame_index, "h": truth.hkl[:, 0], "k": truth.hkl[:, 1],
                                          "l": truth.hkl[:, 2], "d_angstrom": truth.d_A, "panel": p,
                                          "panel_x_px": truth.x_px, "panel_y_px": truth.y_px,
                                          "x_px": truth.x_px, "y_px": truth.y_px + y_offsets[p],
                                          "photons": truth.photons, "peak_fraction": truth.peak_fraction}))
            bragg = stack_panels(np.stack(images), np.float32(0.0))
            rng = frame_rng(seed, dataset_index, frame_index)
            hit, jet_factor = frame_conditions(overlay, rng)
            fluence_factor = d.fluence_photons_per_m2 / beam.fluence_per_m2
            fr = overlay_frame(bragg, stacked_water, stacked_untrusted, hit, jet_factor, fluence_factor, overlay, rng,
                               outlier_amplitudes)
            data[row] = fr.counts
            labels[row] = fr.label.astype(np.uint8)
            t = pd.concat(rows, ignore_index=True)
            if not hit:
                t = t.iloc[0:0]
            t = t.assign(visible=_visible(t, fr.label))
            truth_tables.append(t)
            per_frame.append({"frame_index": frame_index, **fr.params, "n_peaks": int(t.visible.sum()),
                              "wavelength_angstrom": d.central_wavelength_A, "ncells": float(np.mean(d.ncells))})
            seconds.append(time.perf_counter() - t0)
            if log:
                log.info("frame %d: hit=%d, N=%s, %d reflections (%d visible) on %d panels, water %.3g photons, "
                         "%.1f s", frame_index, hit, d.ncells, len(t), int(t.visible.sum()), n_panels,
                         fr.params["water_photons"], seconds[-1])
        f.create_dataset("entry/braggflow_geometry", data=json.dumps(geometry))
        g = f["braggflow"]
        g.attrs["structure"], g.attrs["dataset"] = structure, dataset
        g.attrs["kind"] = "matched training shard"
        g.attrs["frames_file"] = Path(info.path).name
        g.attrs["simulation"] = json.dumps({**simulation.provenance(), "beam": beam.as_dict(),
                                            "jet_thickness_m": jet_thickness_m}, sort_keys=True)
        g.attrs["overlay"] = json.dumps(asdict(overlay), sort_keys=True)
        g.attrs["outlier_source"] = (f"{len(outlier_amplitudes)} lone-pixel amplitudes measured in "
                                     f"{Path(info.path).name}" if outlier_amplitudes is not None
                                     else "log-uniform within overlay.outlier_photons")
        g.attrs["versions"] = json.dumps({"braggflow": __version__, "numpy": np.__version__})
        pg = g.create_group("panels")
        pg["name"] = np.array(info.panels.name, dtype=h5py.string_dtype())
        pg["stacked_row_offset"] = y_offsets
        for key in ("origin_mm", "fast_axis", "slow_axis", "pixel_size_mm", "image_size"):
            pg[key] = np.asarray(getattr(info.panels, key))
        g.create_dataset("water_photons", data=water, compression="gzip", compression_opts=4)
        table = pd.DataFrame(per_frame)
        fg = g.create_group("frames")
        for col in table.columns:
            fg[col] = table[col].to_numpy()
        tg = g.create_group("truth")
        all_truth = pd.concat(truth_tables, ignore_index=True)
        for col in (*TRUTH_COLUMNS, "panel", "panel_x_px", "panel_y_px", "visible"):
            tg.create_dataset(col, data=all_truth[col].to_numpy(), compression="gzip")
    return {"frames": n, "hits": int(table.hit.sum()) if n else 0,
            "mean_visible_per_hit": float(table.n_peaks[table.hit == 1].mean()) if n and table.hit.any() else 0.0,
            "seconds_per_frame": float(np.mean(seconds)) if seconds else 0.0}


def experiment_energy_and_d_min(info: FramesInfo, d_min_margin: float) -> tuple[float, float]:
    """(photon energy in keV, d_min in A) for the structure factors of an experiment: its wavelength, and the finest
    d its panels record times ``d_min_margin`` (reflections a little beyond a corner still light up pixels)."""
    wavelength = experiment_wavelength_angstrom(info)
    dets = panel_detectors(info.panels, experiment_beam_direction(info), info.path)
    return energy_kev(wavelength), round(d_min_margin * d_min_angstrom(dets, wavelength), 4)
