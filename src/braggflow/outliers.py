"""Lone bright pixels of a real detector, measured in an experiment's own frames for its matched training frames.

Hot pixels, zingers and readout glitches light one pixel, while a Bragg spot always spreads over the
point-spread function. A peak finder learns to tell them apart only from training frames that hold lone pixels
of the kinds and brightnesses the experiment's detector records, so the matched workflow measures them:

- isolated pixel: net photons (above the 7x7 local median) >= ``min_photons`` while all 8 neighbours stay below
  15 % of that, away from untrusted pixels;
- rate: isolated pixels per million pixels that could be seen to be isolated (trusted, with 8 trusted
  neighbours), per frame; amplitudes: their net photons, resampled by ``overlay.add_outlier_pixels``.

Real Bragg spots are seldom isolated (a median 42 % of a CSPAD spot's photons fall in its brightest pixel), so the
few that pass are a small share of the sample.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .errors import InputError
from .io import write_text_atomic
from .formats.frames import read_frame_photons, read_frames_info

MEDIAN_BOX_PX = 7
NEIGHBOUR_FRACTION = 0.15  # well below a spot's second pixel (>= 25 % of its first in most real CSPAD spots)
# A median background of a photon per pixel or more (photon-counting detectors at XFEL fluences): Poisson noise
# makes lone pixels as often as hot pixels do (3 photons/pixel: ~400 per Mpx at min_photons 5), so the count
# says little about the detector and the measurement warns.
NOISY_BACKGROUND_PHOTONS = 1.0


RING = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], bool)  # the 8 neighbours


def eligible_pixels(panel: np.ndarray) -> np.ndarray:
    """Pixels whose 8 neighbours are all trusted, on the panel: the only ones that can be seen to be isolated."""
    trusted = panel >= 0
    return trusted & ndimage.binary_erosion(trusted, RING, border_value=0)


def eligible_count(photons: np.ndarray) -> int:
    """Eligible pixels of a (panels, slow, fast) frame: the denominator of an isolated-pixel rate."""
    return int(sum(eligible_pixels(a).sum() for a in photons))


def isolated_pixels(photons: np.ndarray, min_photons: float) -> np.ndarray:
    """Net photons of every isolated pixel >= ``min_photons`` of a (panels, slow, fast) frame (-1 untrusted)."""
    out = []
    for a in np.asarray(photons, np.float64):
        eligible = eligible_pixels(a)
        a = np.where(a >= 0, a, 0.0)
        med = ndimage.median_filter(a, size=MEDIAN_BOX_PX)
        net = a - med
        neighbours = ndimage.maximum_filter(a, footprint=RING) - med
        out.append(net[(net >= min_photons) & (neighbours < NEIGHBOUR_FRACTION * net) & eligible])
    return np.concatenate(out) if out else np.zeros(0)


def measure_outlier_pixels(frames_path: str | Path, min_photons: float) -> dict[str, Any]:
    """Rate (per Mpx of eligible pixels per frame: the overlay draws as densely on every trusted pixel) and sorted
    net photons of the isolated pixels of every frame."""
    if not min_photons > 0:
        raise ValueError(f"min_photons {min_photons!r} must be > 0")
    info = read_frames_info(frames_path)
    amplitudes, per_frame, eligible, backgrounds = [], [], 0, []
    for i in range(info.n_frames):
        photons = read_frame_photons(frames_path, i)
        backgrounds.append(float(np.median(photons[photons >= 0])) if (photons >= 0).any() else 0.0)
        v = isolated_pixels(photons, min_photons)
        amplitudes.append(v)
        per_frame.append(len(v))
        eligible += eligible_count(photons)
    if eligible == 0:
        raise InputError(frames_path, "no pixel with 8 trusted neighbours in any frame: cannot measure lone-pixel "
                                      "outliers")
    photons = np.sort(np.concatenate(amplitudes)) if amplitudes else np.zeros(0)
    level = float(np.median(backgrounds))
    warning = None
    if level >= NOISY_BACKGROUND_PHOTONS:
        warning = (f"{Path(frames_path).name}: the frames' background is {level:.2f} photons per pixel; at that level "
                   f"Poisson noise alone makes pixels {min_photons:g} photons above their neighbourhood, so the "
                   "lone pixels counted here are mostly noise, not hot pixels (a photon-counting detector?): "
                   "the calibration (matched.calibrate) draws only their excess over simulated noise; without it, "
                   "set experiments.<name>.matched.outliers_from_frames: false")
    return {"frames_file": Path(frames_path).name, "frames": info.n_frames, "min_photons": float(min_photons),
            "neighbour_fraction": NEIGHBOUR_FRACTION, "median_box_px": MEDIAN_BOX_PX,
            "per_mpx": len(photons) / eligible * 1e6, "per_frame": per_frame,
            "background_photons_per_px": round(level, 4), "warning": warning,
            "photons": [round(float(v), 4) for v in photons]}


def write_outlier_pixels(path: str | Path, stats: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(stats, indent=1) + "\n")


def read_outlier_pixels(path: str | Path) -> tuple[float, np.ndarray]:
    """(rate per Mpx per frame, amplitude sample in photons) of a measurement file."""
    try:
        stats = json.loads(Path(path).read_text())
        rate, photons = float(stats["per_mpx"]), np.asarray(stats["photons"], np.float64)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f"unreadable outlier-pixel measurement: {exc}") from None
    if not (np.isfinite(rate) and rate >= 0) or photons.ndim != 1 or not np.all(np.isfinite(photons) & (photons > 0)):
        raise InputError(path, f"outlier-pixel measurement out of range (per_mpx {rate!r}, {photons.size} "
                               "amplitudes must be finite and > 0)")
    if rate > 0 and photons.size == 0:
        raise InputError(path, f"per_mpx {rate:g} but no amplitude to draw from")
    return rate, photons
