"""Training frames in an experiment's own geometry (sim-to-real): panels, distance and wavelength come from the
experiment's frames file (the detector and beam models dxtbx read), so a peak finder is trained for that detector.

The experiment's detector (``braggflow.detector``) is rotated so that its beam runs along the simulator's incident
direction (0, 0, -1); the simulator and the truth predictor then run per panel on one crystal draw, and the water
photons per pixel are ``braggflow.water``'s one model on the same panels.

Training shard (``results/matched/{experiment}/shard_{shard}.h5``): the panels of a frame stacked along slow,
``STACK_GAP_PX`` untrusted rows between them, so the CNN training and the baselines read it like any overlay
shard. Untrusted rows read 0 in every network channel, as the zero padding that surrounds each panel when the
CNN predicts panel by panel; the gap exceeds the U-Net's receptive field, so panels do not see each other.
It is a training file, not a detector image: /braggflow/panels holds the geometry and the truth table gives
every reflection's panel and panel coordinates besides the stacked ones.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import __version__
from .beam import Beam
from .draws import draw_frame
from .errors import InputError
from .formats import shards as S
from .overlay import OverlaySettings, bad_pixel_mask, frame_conditions, frame_rng, overlay_frame, _visible
from .formats.frames import FramesInfo, read_untrusted_pixels
from .shards import SimulationSettings, b_matrix, load_structure_factors, simulate_panels
from .detector import INCIDENT_UNIT, Detector
from .simulator import resolve_backend
from .units import energy_kev
from .water import water_photons

STACK_GAP_PX = 32
MATCHED_TRUTH = ("panel", "panel_x_px", "panel_y_px", "visible")  # truth columns beside TRUTH_COLUMNS


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


def panel_detectors(panels: Detector, beam_direction: np.ndarray, path: str | Path = "frames file") -> Detector:
    """The experiment's detector in the lab frame where its beam runs along (0, 0, -1), the simulator's."""
    ps = np.asarray(panels.pixel_size_mm, float)
    if not np.allclose(ps[:, 0], ps[:, 1], rtol=1e-6):
        raise InputError(path, f"panels with rectangular pixels ({ps[0].tolist()} mm) are not supported by the "
                               "simulator (square pixels only)")
    return panels.rotated(beam_rotation(beam_direction))


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
    water = water_photons(dets, beam.at_wavelength(wavelength), jet_thickness_m, water_table)[0].astype(np.float32)
    sf, cell = load_structure_factors(mtz_path)
    b = b_matrix(cell)
    xp, backend_line = resolve_backend(backend)
    if log:
        log.info(backend_line)
    untrusted = read_untrusted_pixels(info.path) | bad_pixel_mask(water.shape, overlay.bad_pixel_fraction, seed)
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
    with S.create_shard(path) as f:
        data = S.create_images(f, (n, *shape), np.int32)
        labels = S.create_labels(f, (n, *shape))
        for row, frame_index in enumerate(frames):
            t0 = time.perf_counter()
            d = draw_frame(simulation.draws, seed, dataset_index, frame_index)
            images, rows = [], []
            for p, (image, truth) in enumerate(simulate_panels(d, b, sf, dets, simulation, beam, xp)):
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
            t = t.assign(visible=_visible(t.x_px.to_numpy(), t.y_px.to_numpy(), fr.label))
            truth_tables.append(t)
            per_frame.append({"frame_index": frame_index, **fr.params, "n_peaks": int(t.visible.sum()),
                              "wavelength_angstrom": d.central_wavelength_A, "ncells": float(np.mean(d.ncells))})
            seconds.append(time.perf_counter() - t0)
            if log:
                log.info("frame %d: hit=%d, N=%s, %d reflections (%d visible) on %d panels, water %.3g photons, "
                         "%.1f s", frame_index, hit, d.ncells, len(t), int(t.visible.sum()), n_panels,
                         fr.params["water_photons"], seconds[-1])
        S.write_geometry(f, geometry)
        S.write_attrs(f, {
            "structure": structure, "dataset": dataset, "kind": "matched training shard",
            "frames_file": Path(info.path).name,
            "simulation": {**simulation.provenance(), "beam": beam.as_dict(), "jet_thickness_m": jet_thickness_m},
            "overlay": asdict(overlay),
            "outlier_source": (f"{len(outlier_amplitudes)} lone-pixel amplitudes measured in {Path(info.path).name}"
                               if outlier_amplitudes is not None else "log-uniform within overlay.outlier_photons"),
            "versions": {"braggflow": __version__, "numpy": np.__version__}})
        S.write_panels(f, info.panels, y_offsets)
        S.write_water(f, water)
        table = pd.DataFrame(per_frame)
        S.write_table(f, S.FRAMES_PATH, {c: table[c].to_numpy() for c in table.columns})
        all_truth = pd.concat(truth_tables, ignore_index=True)
        S.write_table(f, S.TRUTH_PATH, {c: all_truth[c].to_numpy() for c in (*S.TRUTH_COLUMNS, *MATCHED_TRUTH)},
                      S.TABLE_COMPRESSION)
    return {"frames": n, "hits": int(table.hit.sum()) if n else 0,
            "mean_visible_per_hit": float(table.n_peaks[table.hit == 1].mean()) if n and table.hit.any() else 0.0,
            "seconds_per_frame": float(np.mean(seconds)) if seconds else 0.0}


def experiment_energy_and_d_min(info: FramesInfo, d_min_margin: float) -> tuple[float, float]:
    """(photon energy in keV, d_min in A) for the structure factors of an experiment: its wavelength, and the finest
    d its panels record times ``d_min_margin`` (reflections a little beyond a corner still light up pixels)."""
    wavelength = experiment_wavelength_angstrom(info)
    dets = panel_detectors(info.panels, experiment_beam_direction(info), info.path)
    return energy_kev(wavelength), round(d_min_margin * dets.d_min_angstrom(wavelength), 4)
