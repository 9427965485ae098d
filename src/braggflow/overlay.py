"""Detector frames from Bragg-only photons plus water: the images DIALS and the CNNs see, with labels.

counts = round(gain * Poisson(bragg * hit + water * jet_factor * fluence_factor) + N(0, readout_noise)),
clipped to [0, saturation]; module gaps and bad pixels are written as -1 (untrusted) and marked in the
NXmx pixel_mask. ``fluence_factor`` is the frame's drawn fluence over the nominal one (the same draw that
scaled the Bragg photons); ``jet_factor`` is a per-frame lognormal jitter of the jet thickness.

Labels (from the noise-free images):
  peak mask: bragg >= label_nsigma * sqrt(background) and bragg >= label_min_photons, with
             background = water photons of the frame + (readout_noise / gain)^2  (photon units), i.e. a
             pixel is "peak" where the expected Bragg signal stands label_nsigma standard deviations of
             the background noise above it and carries at least label_min_photons;
  truth:     the simulated reflections of hit frames, with visible = a peak pixel within 1 px of the
             predicted position. Blank frames (no crystal) have hit = 0, no peaks and no reflections;
  n_peaks:   visible reflections per frame; n_label_regions: connected regions of the peak mask
             (8-connectivity), which also counts the lattice transform's side maxima where they are strong.

Randomness per frame from SeedSequence([seed, dataset, frame, OVERLAY_STREAM]) (independent of the
simulation's stream and of the shard size); bad pixels, a detector property, from SeedSequence([seed,
BAD_PIXEL_STREAM]) and so the same in every dataset.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from scipy import ndimage

from .errors import InputError
from .geometry import Geometry
from .formats import shards as S
from .formats.nxmx import DEAD_BIT, GAP_BIT, nxmx_writer, read_geometry, read_sensor_thickness_mm
from .settings import Section
from .formats.background import read_background

if TYPE_CHECKING:  # the overlay job runs without pandas (~0.5 CPU-s to import)
    import pandas as pd

OVERLAY_STREAM = 1
BAD_PIXEL_STREAM = 0xBAD
UNTRUSTED_VALUE = -1


@dataclass(frozen=True)
class OverlaySettings(Section):
    """``overlay`` without ``gallery_frames`` (a figure setting): what makes the overlay shards' bytes."""

    KEY: ClassVar[str] = "overlay"
    blank_fraction: float
    jet_thickness_rel_sigma: float
    adu_per_photon: float
    readout_noise_adu: float
    saturation_adu: int
    bad_pixel_fraction: float
    label_nsigma: float
    label_min_photons: float
    outlier_pixels_per_mpx: float
    outlier_photons: tuple[float, float]

    def __post_init__(self):
        # Ranges are the schema's; this is the one relation between keys it cannot state.
        lo, hi = (float(v) for v in self.outlier_photons)
        object.__setattr__(self, "outlier_photons", (lo, hi))
        if not 0 < lo <= hi:
            raise ValueError(f"config key 'overlay.outlier_photons': value {self.outlier_photons!r} is out of range "
                             "(0 < low <= high)")


def bad_pixel_mask(shape: tuple[int, int], fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([seed, BAD_PIXEL_STREAM]))
    return rng.random(shape) < fraction


def frame_rng(seed: int, dataset_index: int, frame_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, dataset_index, frame_index, OVERLAY_STREAM]))


def frame_conditions(s: OverlaySettings, rng: np.random.Generator) -> tuple[bool, float]:
    """(hit, jet_factor) of a frame: a crystal unless a blank is drawn; lognormal jet jitter with mean 1.
    Drawn first from the frame's overlay stream, before the noise."""
    hit = bool(rng.random() >= s.blank_fraction)
    sig = math.sqrt(math.log1p(s.jet_thickness_rel_sigma**2))
    return hit, math.exp(sig * rng.standard_normal() - 0.5 * sig * sig)


def add_outlier_pixels(photons: np.ndarray, untrusted: np.ndarray, s: OverlaySettings,
                       rng: np.random.Generator, amplitudes: np.ndarray | None = None) -> int:
    """Add isolated single-pixel outliers to ``photons`` in place; returns how many.

    Real detectors record lone bright pixels that are no Bragg spot: hot pixels, zingers, charge-injection and
    readout glitches. A diffraction spot always spreads over the point-spread function, so these stay unlabelled:
    a peak finder trained on them learns to tell the two apart. Poisson number per frame
    (outlier_pixels_per_mpx per million trusted pixels), uniform positions, log-uniform amplitudes within
    outlier_photons, or, given ``amplitudes`` (photons measured in an experiment's frames,
    outliers.measure_outlier_pixels), resampled from those. Nothing is drawn when the rate is 0, so frames without
    outliers keep their bytes."""
    if s.outlier_pixels_per_mpx <= 0:
        return 0
    trusted = np.flatnonzero(~untrusted.ravel())
    n = int(rng.poisson(s.outlier_pixels_per_mpx * len(trusted) / 1e6))
    if n == 0:
        return 0
    where = rng.choice(trusted, size=n, replace=False)
    if amplitudes is not None:
        amplitude = np.rint(rng.choice(amplitudes, size=n)).astype(photons.dtype)
    else:
        lo, hi = np.log(s.outlier_photons[0]), np.log(s.outlier_photons[1])
        amplitude = np.rint(np.exp(rng.uniform(lo, hi, size=n))).astype(photons.dtype)
    photons.ravel()[where] += amplitude
    return n


def _same_experiment(peaks: Geometry, water: Geometry, peaks_path, water_path) -> None:
    problems = []
    if (peaks.n_slow, peaks.n_fast) != (water.n_slow, water.n_fast):
        problems.append(f"detector shape {peaks.n_slow}x{peaks.n_fast} vs {water.n_slow}x{water.n_fast}")
    for name, unit in (("energy_kev", "keV"), ("camera_length_m", "m"), ("pixel_size_m", "m")):
        a, b = getattr(peaks, name), getattr(water, name)
        if not math.isclose(a, b, rel_tol=1e-9):
            problems.append(f"{name} {a:g} {unit} vs {b:g} {unit}")
    if not np.allclose(peaks.beam_center_px, water.beam_center_px, atol=1e-9):
        problems.append(f"beam centre {peaks.beam_center_px} vs {water.beam_center_px}")
    if problems:
        raise InputError(peaks_path, f"peaks shard and water background {water_path} describe different "
                                     f"experiments: {'; '.join(problems)}")


@dataclass
class OverlayFrame:
    counts: np.ndarray  # (slow, fast) int32
    label: np.ndarray  # (slow, fast) bool
    water: np.ndarray  # (slow, fast) float32 expected water photons of this frame
    params: dict[str, float]


def overlay_frame(bragg: np.ndarray, water: np.ndarray, untrusted: np.ndarray, hit: bool, jet_factor: float,
                  fluence_factor: float, s: OverlaySettings, rng: np.random.Generator,
                  outlier_amplitudes: np.ndarray | None = None) -> OverlayFrame:
    water_frame = (water * (jet_factor * fluence_factor)).astype(np.float32)
    signal = bragg.astype(np.float64) if hit else np.zeros(bragg.shape)
    photons = rng.poisson(signal + water_frame)
    n_outliers = add_outlier_pixels(photons, untrusted, s, rng, outlier_amplitudes)
    adu = s.adu_per_photon * photons
    if s.readout_noise_adu > 0:
        adu = adu + rng.normal(0.0, s.readout_noise_adu, size=adu.shape)
    counts = np.clip(np.rint(adu), 0, s.saturation_adu).astype(np.int32)
    counts[untrusted] = UNTRUSTED_VALUE
    background = water_frame + (s.readout_noise_adu / s.adu_per_photon) ** 2
    label = (signal >= s.label_nsigma * np.sqrt(background)) & (signal >= s.label_min_photons) & ~untrusted
    params = {"hit": int(hit), "jet_factor": jet_factor, "fluence_factor": fluence_factor, "outlier_pixels": n_outliers,
              "water_photons": float(water_frame[~untrusted].sum(dtype=np.float64)),
              "bragg_photons": float(signal[~untrusted].sum())}
    return OverlayFrame(counts, label, water_frame, params)


def write_overlay(path: str | Path, *, peaks_path: str | Path, water_path: str | Path, settings: OverlaySettings,
                  seed: int, dataset_index: int, nominal_fluence_per_m2: float, log=None) -> dict[str, Any]:
    peaks_path, water_path = Path(peaks_path), Path(water_path)
    bg = read_background(water_path)
    peaks_geometry = read_geometry(peaks_path)
    n_frames = S.n_frames(peaks_path)
    attrs = S.read_attrs(peaks_path)
    structure, dataset = attrs["structure"], attrs["dataset"]
    _same_experiment(peaks_geometry, bg.geometry, peaks_path, water_path)
    frames = S.read_frame_arrays(peaks_path)
    truth = S.read_truth_arrays(peaks_path)
    bad = bad_pixel_mask(bg.photons.shape, settings.bad_pixel_fraction, seed)
    pixel_mask = bg.mask.astype(np.int32) * GAP_BIT + (bad & ~bg.mask).astype(np.int32) * DEAD_BIT
    untrusted = pixel_mask != 0
    per_frame: dict[str, list] = {}
    visible_truth: list[dict[str, np.ndarray]] = []
    geometry = peaks_geometry
    with nxmx_writer(path, geometry, n_frames, np.int32, frames["central_wavelength_angstrom"], mask=pixel_mask,
                     saturation_value=settings.saturation_adu,
                     sensor_thickness_mm=read_sensor_thickness_mm(peaks_path)) as (f, data):
        label_ds = S.create_labels(f, data.shape)
        for i in range(n_frames):
            frame_index = int(frames["frame_index"][i])
            rng = frame_rng(seed, dataset_index, frame_index)
            hit, jet_factor = frame_conditions(settings, rng)
            fluence_factor = float(frames["fluence_photons_per_m2"][i]) / nominal_fluence_per_m2
            fr = overlay_frame(S.read_images(peaks_path, i), bg.photons, untrusted, hit, jet_factor, fluence_factor,
                               settings, rng)
            data[i] = fr.counts
            label_ds[i] = fr.label.astype(np.uint8)
            n_regions = int(ndimage.label(fr.label, structure=np.ones((3, 3)))[1])
            rows = (truth["frame_index"] == frame_index) & hit  # a blank frame keeps no reflections
            t = {c: v[rows] for c, v in truth.items()}
            t["visible"] = _visible(t["x_px"], t["y_px"], fr.label)
            visible_truth.append(t)
            row = {"frame_index": frame_index, **fr.params, "n_peaks": int(t["visible"].sum()),
                   "n_label_regions": n_regions}
            for key, value in row.items():
                per_frame.setdefault(key, []).append(value)
            if log:
                log.info("frame %d: hit=%d, %d visible reflections, %d label regions, water %.3g photons, "
                         "jet x%.3f, fluence x%.3f", frame_index, hit, row["n_peaks"], n_regions,
                         fr.params["water_photons"], jet_factor, fluence_factor)
        S.write_attrs(f, {"structure": structure, "dataset": dataset, "overlay": asdict(settings)})
        S.write_water(f, bg.photons, shuffle=True)
        S.write_attrs(f, {"sources": {"peaks": peaks_path.name, "water": water_path.name},
                          "label_rule": "peak where bragg >= label_nsigma * sqrt(water + (readout_noise/gain)^2) and "
                                        "bragg >= label_min_photons (photons, noise-free)"})
        table = {k: np.asarray(v) for k, v in per_frame.items()}
        S.write_table(f, S.FRAMES_PATH, {**table, **{k: frames[k] for k in ("A_matrix", "ncells", "wavelengths_angstrom",
                                                                            "weights", "fluence_photons_per_m2",
                                                                            "seed")}})
        S.write_table(f, S.TRUTH_PATH, {c: np.concatenate([t[c] for t in visible_truth]) if visible_truth
                                        else truth[c][:0] for c in (*S.TRUTH_COLUMNS, "visible")},
                      S.TABLE_COMPRESSION)
    hits = table["hit"] == 1 if n_frames else np.zeros(0, bool)
    return {"frames": n_frames, "hits": int(hits.sum()),
            "mean_peaks_per_hit": float(table["n_peaks"][hits].mean()) if hits.any() else 0.0}


def _visible(x_px: np.ndarray, y_px: np.ndarray, label: np.ndarray) -> np.ndarray:
    """A reflection is visible when a peak pixel lies within 1 px (3x3) of its predicted position's pixel (that
    pixel clipped into the image). Looks at the 9 pixels of each reflection, not a dilated frame."""
    x = np.clip(np.floor(np.asarray(x_px)).astype(int), 0, label.shape[1] - 1)
    y = np.clip(np.floor(np.asarray(y_px)).astype(int), 0, label.shape[0] - 1)
    seen = np.zeros(x.shape, dtype=bool)
    for dy in (-1, 0, 1):  # a neighbour clipped back onto the edge is a pixel of the same 3x3 window
        yy = np.clip(y + dy, 0, label.shape[0] - 1)
        for dx in (-1, 0, 1):
            seen |= label[yy, np.clip(x + dx, 0, label.shape[1] - 1)]
    return seen


def read_overlay_frames(path: str | Path) -> pd.DataFrame:
    return S.read_frame_table(path)


def read_overlay_truth(path: str | Path) -> pd.DataFrame:
    return S.read_truth(path, (*S.TRUTH_COLUMNS, "visible"))
