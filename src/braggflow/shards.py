"""Simulated shards: Bragg-only expected photons for a run of frames, with everything that made them.

One shard = frames [first, first + n) of one (structure, dataset). Each frame's draws depend only on
(seed, dataset index, frame index), so a frame is identical whatever the shard size.

The file layout is ``braggflow.formats.shards`` (NXmx geometry, so DIALS/silx/albula open it; the image stack
bitshuffle-LZ4): per-frame draws (frame_index, seed, A_matrix in the DIALS lab frame 1/A, U, ncells, mosaic_umats,
wavelengths_angstrom, weights, central_wavelength_angstrom, fluence_photons_per_m2, total_photons, stored_photons
after the min_stored_photons floor), the truth of every frame, and the settings and software versions.
"""

from __future__ import annotations

import importlib.metadata
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .beam import Beam
from .draws import DrawConfig, FrameDraws, draw_frame
from .geometry import Geometry
from .formats.mtz import read_mtz
from .formats.nxmx import nxmx_writer
from .formats.shards import (FRAMES_PATH, IMAGE_COMPRESSION, TABLE_COMPRESSION, TRUTH_COLUMNS, TRUTH_PATH,
                             write_attrs, write_table)
from .settings import canonical
from .detector import Detector
from .sf import dense_amplitude_table
from .simulator import (Crystal, Numerics, Panel, Pulse, Still, StructureFactorTable, apply_psf, panel_candidates,
                        resolve_backend, simulate_still, to_numpy, truth_reflections)

DRAW_KEYS = ("ncells", "ncells_per_axis", "mosaic_spread_deg", "mosaic_domains", "mosaic_model", "spectrum_shape",
             "bandwidth_frac", "spectrum_samples", "energy_jitter_rel_sigma", "fluence_rel_sigma")
DEFAULT_MAX_DETECTOR_BYTES = 4 * 2**30
# A thin sensor (simulation.sensor_layers: 0, no parallax): the files say so, so that DIALS applies no
# sensor-depth correction either: dxtbx needs a positive thickness, and 0.1 um shifts spots < 0.001 px.
THIN_SENSOR_MM = 1e-4


# The simulation keys that make a shard's bytes (the rest of the section, structures, frames_per_dataset,
# frames_per_shard and backend, chooses which jobs run and where, not what a frame holds).
SIMULATION_KEYS = DRAW_KEYS + ("oversample", "crystal_shape", "rel_tol", "min_stored_photons", "psf_fwhm_um",
                               "sensor_layers")


@dataclass(frozen=True)
class SimulationSettings:
    """The config's ``simulation`` block, validated, for one dataset."""

    draws: DrawConfig
    oversample: int
    crystal_shape: str
    rel_tol: float
    min_stored_photons: float  # pixels below are stored as 0: sub-photon tails do not compress
    psf_fwhm_um: float  # detector point-spread (nanoBragg's Gaussian PSF); 0: none
    sensor_layers: int = 0  # the sensor's thickness and absorption in this many layers; 0: a thin sensor

    def sensor_thickness_mm(self, geometry: Geometry) -> float:
        """What the files state: the real thickness where the sensor is simulated, else THIN_SENSOR_MM."""
        return geometry.sensor_thickness_mm if self.sensor_layers else THIN_SENSOR_MM

    def provenance(self) -> dict[str, Any]:
        """What a shard records of how it was simulated."""
        return {"draws": _jsonable(self.draws.__dict__), "oversample": self.oversample,
                "crystal_shape": self.crystal_shape, "rel_tol": self.rel_tol,
                "min_stored_photons": self.min_stored_photons, "psf_fwhm_um": self.psf_fwhm_um,
                "sensor_layers": self.sensor_layers}

    @staticmethod
    def params(sim: dict[str, Any]) -> dict[str, Any]:
        """What a simulating rule records of the section: SIMULATION_KEYS, in that order."""
        return {k: canonical(sim[k]) for k in SIMULATION_KEYS}

    @classmethod
    def from_config(cls, sim: dict[str, Any], geometry: Geometry, beam: Beam) -> "SimulationSettings":
        return cls.at_wavelength(sim, geometry.wavelength_angstrom, beam)

    @classmethod
    def at_wavelength(cls, sim: dict[str, Any], wavelength_angstrom: float, beam: Beam) -> "SimulationSettings":
        try:
            draws = DrawConfig(wavelength_A=wavelength_angstrom,
                               fluence_photons_per_m2=beam.fluence_per_m2, **{k: sim[k] for k in DRAW_KEYS})
        except ValueError as exc:
            raise ValueError(f"config key 'simulation': {exc}") from None
        psf = float(sim["psf_fwhm_um"])
        if not (psf >= 0 and math.isfinite(psf)):
            raise ValueError(f"config key 'simulation.psf_fwhm_um': value {psf!r} must be >= 0")
        return cls(draws, int(sim["oversample"]), sim["crystal_shape"], float(sim["rel_tol"]),
                   float(sim["min_stored_photons"]), psf, int(sim["sensor_layers"]))


def b_matrix(cell: tuple[float, float, float, float, float, float]) -> np.ndarray:
    """DIALS/cctbx B: the transposed fractionalization matrix (columns a*, b*, c*, 1/A)."""
    import gemmi

    return np.array(gemmi.UnitCell(*cell).frac.mat).T


def load_structure_factors(mtz_path: str | Path) -> tuple[StructureFactorTable, tuple]:
    dense, lo = dense_amplitude_table(mtz_path)
    mtz = read_mtz(mtz_path)[0]
    return StructureFactorTable(dense, lo, 0.0), tuple(mtz.cell.parameters)


def frame_indices(shard: int, frames_per_shard: int, frames_per_dataset: int) -> range:
    first = shard * frames_per_shard
    if not 0 <= first < frames_per_dataset:
        raise ValueError(f"shard {shard} is outside the {frames_per_dataset} frames of this dataset")
    return range(first, min(first + frames_per_shard, frames_per_dataset))


def frame_still(draws: FrameDraws, b: np.ndarray, settings: SimulationSettings, beam: Beam) -> Still:
    lam, w, directions = beam.sources(draws.wavelengths_A, draws.weights)  # a divergent beam: more sources
    return Still(
        Crystal(A_matrix=draws.orientation @ b, ncells=draws.ncells, shape=settings.crystal_shape,
                mosaic_umats=draws.mosaic_umats),
        Pulse(lam, weights=w, directions=directions, fluence_photons_per_m2=draws.fluence_photons_per_m2,
              kahn_factor=beam.kahn_factor, polarization_axis=beam.polarization_axis),
        Numerics(oversample=settings.oversample, sensor_layers=max(settings.sensor_layers, 1)))


def simulate_frame(draws: FrameDraws, b: np.ndarray, sf: StructureFactorTable, detector: Panel,
                   settings: SimulationSettings, beam: Beam, xp, min_truth_photons: float = 1.0,
                   candidates: np.ndarray | None = None) -> tuple[np.ndarray, Any]:
    """One panel's float32 image (PSF applied) and truth table; ``candidates``: from ``panel_candidates``."""
    still = frame_still(draws, b, settings, beam)
    image, nodes = simulate_still(still, detector, sf, rel_tol=settings.rel_tol, xp=xp, return_nodes=True)
    # spot photons before the detector spreads them
    truth = truth_reflections(still, detector, sf, image=image, xp=xp, min_photons=min_truth_photons,
                              candidates=candidates, nodes=nodes)
    if settings.psf_fwhm_um > 0:
        image = apply_psf(image, settings.psf_fwhm_um / (detector.pixel_size_mm * 1e3), xp)
    return to_numpy(image).astype(np.float32), truth


def simulate_panels(draws: FrameDraws, b: np.ndarray, sf: StructureFactorTable, detector: Detector,
                    settings: SimulationSettings, beam: Beam, xp, min_truth_photons: float = 1.0):
    """simulate_frame for every panel of a multi-panel detector, the truth table's panel-independent geometry
    computed once (``panel_candidates``); yields (image, truth) per panel."""
    cands = panel_candidates(frame_still(draws, b, settings, beam), detector, sf) if len(detector) > 1 \
        else [None]
    for det, c in zip(detector.panels, cands):
        yield simulate_frame(draws, b, sf, det, settings, beam, xp, min_truth_photons, candidates=c)


def write_shard(path: str | Path, *, mtz_path: str | Path, geometry: Geometry, beam: Beam, settings: SimulationSettings,
                seed: int, dataset: str, dataset_index: int, frames: range, structure: str, backend: str = "numpy",
                max_detector_bytes: int = DEFAULT_MAX_DETECTOR_BYTES, log=None) -> dict[str, float]:
    """Simulate ``frames`` and write the shard atomically; returns timing figures. ``backend``: where the
    arithmetic runs (numpy, cupy or auto); the bytes do not depend on it."""
    if geometry.n_fast * geometry.n_slow * 20 > max_detector_bytes:
        raise ValueError(f"detector {geometry.n_fast}x{geometry.n_slow} px needs more than the memory limit of "
                         f"{max_detector_bytes / 2**30:.1f} GiB per frame")
    xp, backend_line = resolve_backend(backend)
    if log:
        log.info(backend_line)
    sf, cell = load_structure_factors(mtz_path)
    b = b_matrix(cell)
    det = geometry.panel(sensor=settings.sensor_layers > 0)
    draws = [draw_frame(settings.draws, seed, dataset_index, i) for i in frames]
    n = len(draws)
    truth_rows: dict[str, list[np.ndarray]] = {c: [] for c in TRUTH_COLUMNS}
    totals = np.zeros(n)
    stored = np.zeros(n)
    seconds = []
    with nxmx_writer(path, geometry, n, np.float32, [d.central_wavelength_A for d in draws],
                     mask=geometry.gap_mask().astype(np.int32), compression=IMAGE_COMPRESSION,
                     sensor_thickness_mm=settings.sensor_thickness_mm(geometry)) as (f, data):
        for i, d in enumerate(draws):
            t0 = time.perf_counter()
            image, truth = simulate_frame(d, b, sf, det, settings, beam, xp)
            seconds.append(time.perf_counter() - t0)
            totals[i] = float(image.sum(dtype=np.float64))
            image[image < settings.min_stored_photons] = 0.0
            stored[i] = float(image.sum(dtype=np.float64))
            data[i] = image
            m = len(truth)
            truth_rows["frame_index"].append(np.full(m, d.frame_index, np.int64))
            for j, c in enumerate("hkl"):
                truth_rows[c].append(truth.hkl[:, j])
            truth_rows["d_angstrom"].append(truth.d_A)
            truth_rows["x_px"].append(truth.x_px)
            truth_rows["y_px"].append(truth.y_px)
            truth_rows["photons"].append(truth.photons)
            truth_rows["peak_fraction"].append(truth.peak_fraction)
            if log:
                log.info("frame %d: N=%s, %d sources, %d domains, fluence %.3g /m^2: %.4g photons, %d reflections, "
                         "%.2f s", d.frame_index, d.ncells, len(d.wavelengths_A), len(d.mosaic_umats),
                         d.fluence_photons_per_m2, totals[i], m, seconds[-1])
        write_attrs(f, {"structure": structure, "dataset": dataset,
                        "simulation": {**settings.provenance(), "beam": beam.as_dict()},
                        "versions": {"braggflow": __version__, "numpy": np.__version__, "h5py": importlib.metadata.version("h5py")},
                        "units": "expected photons per pixel (no noise, no background)"})
        write_table(f, FRAMES_PATH, {
            "frame_index": np.array([d.frame_index for d in draws], np.int64),
            "seed": np.array([[d.seed, d.dataset_index, d.frame_index] for d in draws], np.int64),
            "U": np.stack([d.orientation for d in draws]),
            "A_matrix": np.stack([d.orientation @ b for d in draws]),
            "ncells": np.array([d.ncells for d in draws], np.int64),
            "mosaic_umats": np.stack([d.mosaic_umats for d in draws]),
            "wavelengths_angstrom": np.stack([d.wavelengths_A for d in draws]),
            "weights": np.stack([d.weights for d in draws]),
            "central_wavelength_angstrom": np.array([d.central_wavelength_A for d in draws]),
            "fluence_photons_per_m2": np.array([d.fluence_photons_per_m2 for d in draws]),
            "total_photons": totals, "stored_photons": stored})
        write_table(f, TRUTH_PATH, {c: np.concatenate(truth_rows[c]) if n else np.zeros(0) for c in TRUTH_COLUMNS},
                    TABLE_COMPRESSION)
    return {"frames": n, "seconds_per_frame": float(np.mean(seconds)) if seconds else 0.0, "backend": xp.__name__}


def _jsonable(d: dict) -> dict:
    return {k: (dict(v) if hasattr(v, "items") else v) for k, v in d.items()}
