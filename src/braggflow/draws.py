"""Per-frame random draws for still simulation.

Every frame's draws come from its own generator,
``numpy.random.default_rng(numpy.random.SeedSequence([seed, dataset_index, frame_index]))``, so they
depend only on (seed, dataset_index, frame_index): never on shard size, frame order or global state.
Within a frame the draw order is fixed and the orientation, crystal size, energy jitter and fluence
always consume the same number of variates, so changing e.g. the mosaic settings leaves the
orientation of every frame unchanged. Mosaic rotations are drawn last.

Distributions (documented choices):
* orientation: uniform on SO(3) (Haar), a normalised 4-D Gaussian as a unit quaternion.
* Ncells per axis, from ``ncells`` = {"dist": "fixed", "value": N} | {"dist": "uniform", "low": a,
  "high": b} | {"dist": "lognormal", "median": m, "sigma": s (of ln N)}; rounded to the nearest
  integer >= 1; one value for all three axes unless ``ncells_per_axis``.
* mosaic: domain 0 is the identity; the others rotate about a uniformly random axis by
  spread * (1 - r^2)^(1/3), r ~ U[-1, 1] (nanoBragg's mosaic_rotation_umat, so the angle <= spread),
  or for model "gaussian" by a rotation vector with N(0, spread^2) components.
* spectrum: "tophat": n wavelengths lambda_c (1 + bw (i/(n-1) - 1/2)) with equal weights (nanoBragg's
  -dispersion grid, bw = full width); "gaussian": n points evenly over lambda_c (1 +- bw) (bw = FWHM
  fraction) weighted by the Gaussian of that FWHM. Central energy jitter: E_c = E_0 (1 + j z), z ~ N(0,1).
* fluence: mean * X, X lognormal with mean 1 and relative standard deviation ``fluence_rel_sigma``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NCELLS_DISTS = ("fixed", "uniform", "lognormal")
MOSAIC_MODELS = ("nanobragg", "gaussian")
SPECTRUM_SHAPES = ("tophat", "gaussian")


def _positive(name: str, value: Any) -> float:
    v = float(value)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return v


def _non_negative(name: str, value: Any) -> float:
    v = float(value)
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return v


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_ncells_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(spec, Mapping) or spec.get("dist") not in NCELLS_DISTS:
        raise ValueError(f"ncells must be a mapping with dist in {NCELLS_DISTS}, got {spec!r}")
    dist = spec["dist"]
    if dist == "fixed":
        return {"dist": dist, "value": _positive("ncells.value", spec.get("value"))}
    if dist == "uniform":
        low = _positive("ncells.low", spec.get("low"))
        high = _positive("ncells.high", spec.get("high"))
        if high < low:
            raise ValueError(f"ncells.high ({high}) must be >= ncells.low ({low})")
        return {"dist": dist, "low": low, "high": high}
    return {"dist": dist, "median": _positive("ncells.median", spec.get("median")),
            "sigma": _non_negative("ncells.sigma", spec.get("sigma"))}


@dataclass(frozen=True)
class DrawConfig:
    """What to draw per frame (see module docstring for the distributions)."""

    wavelength_A: float
    ncells: Mapping[str, Any] = field(default_factory=lambda: {"dist": "fixed", "value": 10})
    ncells_per_axis: bool = False
    mosaic_spread_deg: float = 0.0
    mosaic_domains: int = 1
    mosaic_model: str = "nanobragg"
    spectrum_shape: str = "tophat"
    bandwidth_frac: float = 0.0
    spectrum_samples: int = 1
    energy_jitter_rel_sigma: float = 0.0
    fluence_photons_per_m2: float = 1.25932e29
    fluence_rel_sigma: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "wavelength_A", _positive("wavelength_A", self.wavelength_A))
        object.__setattr__(self, "ncells", _check_ncells_spec(self.ncells))
        object.__setattr__(self, "mosaic_spread_deg", _non_negative("mosaic_spread_deg", self.mosaic_spread_deg))
        object.__setattr__(self, "mosaic_domains", _count("mosaic_domains", self.mosaic_domains))
        if self.mosaic_model not in MOSAIC_MODELS:
            raise ValueError(f"mosaic_model must be one of {MOSAIC_MODELS}, got {self.mosaic_model!r}")
        if self.spectrum_shape not in SPECTRUM_SHAPES:
            raise ValueError(f"spectrum_shape must be one of {SPECTRUM_SHAPES}, got {self.spectrum_shape!r}")
        bw = _non_negative("bandwidth_frac", self.bandwidth_frac)
        if bw >= 1:
            raise ValueError(f"bandwidth_frac must be < 1, got {self.bandwidth_frac!r}")
        object.__setattr__(self, "bandwidth_frac", bw)
        object.__setattr__(self, "spectrum_samples", _count("spectrum_samples", self.spectrum_samples))
        jit = _non_negative("energy_jitter_rel_sigma", self.energy_jitter_rel_sigma)
        if jit >= 0.2:
            raise ValueError(f"energy_jitter_rel_sigma must be < 0.2, got {self.energy_jitter_rel_sigma!r}")
        object.__setattr__(self, "energy_jitter_rel_sigma", jit)
        object.__setattr__(self, "fluence_photons_per_m2",
                           _positive("fluence_photons_per_m2", self.fluence_photons_per_m2))
        object.__setattr__(self, "fluence_rel_sigma", _non_negative("fluence_rel_sigma", self.fluence_rel_sigma))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> DrawConfig:
        """From a config mapping with these field names (unknown keys raise ValueError)."""
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown draw settings: {sorted(unknown)}")
        return cls(**values)


@dataclass(frozen=True)
class FrameDraws:
    """One frame's random quantities (host NumPy)."""

    seed: int
    dataset_index: int
    frame_index: int
    orientation: np.ndarray  # U (3,3), lab frame; the crystal's A = U B
    ncells: tuple[int, int, int]
    mosaic_umats: np.ndarray  # (M,3,3), domain m uses U_m A
    central_wavelength_A: float
    wavelengths_A: np.ndarray
    weights: np.ndarray  # sum 1
    fluence_photons_per_m2: float


def frame_rng(seed: int, dataset_index: int, frame_index: int) -> np.random.Generator:
    """The frame's own generator (independent of any other frame)."""
    for name, v in (("seed", seed), ("dataset_index", dataset_index), ("frame_index", frame_index)):
        if isinstance(v, bool) or int(v) != v or int(v) < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(dataset_index), int(frame_index)]))


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrix of a unit quaternion (w, x, y, z)."""
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Haar-uniform rotation: a 4-D standard normal normalised is a uniform unit quaternion."""
    q = rng.standard_normal(4)
    while np.linalg.norm(q) < 1e-12:  # practically never; keeps the map well defined
        q = rng.standard_normal(4)
    return quaternion_to_matrix(q)


def axis_angle_matrix(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rotation by ``angle_rad`` about unit ``axis`` (Rodrigues)."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle_rad) * k + (1 - math.cos(angle_rad)) * (k @ k)


def mosaic_umats(rng: np.random.Generator, spread_deg: float, n_domains: int,
                 model: str = "nanobragg") -> np.ndarray:
    """(n_domains, 3, 3) domain rotations; domain 0 is the identity (as in nanoBragg)."""
    spread = math.radians(_non_negative("mosaic_spread_deg", spread_deg))
    n = _count("mosaic_domains", n_domains)
    if model not in MOSAIC_MODELS:
        raise ValueError(f"mosaic_model must be one of {MOSAIC_MODELS}, got {model!r}")
    out = np.empty((n, 3, 3))
    out[0] = np.eye(3)
    for m in range(1, n):
        if model == "nanobragg":
            r1, r2, r3 = rng.uniform(-1.0, 1.0, 3)
            xy = math.sqrt(1.0 - r2 * r2)
            axis = np.array([xy * math.sin(math.pi * r1), xy * math.cos(math.pi * r1), r2])
            out[m] = axis_angle_matrix(axis, spread * (1.0 - r3 * r3) ** (1.0 / 3.0))
        else:
            vec = rng.standard_normal(3) * spread
            ang = float(np.linalg.norm(vec))
            out[m] = np.eye(3) if ang == 0 else axis_angle_matrix(vec / ang, ang)
    return out


def spectrum(central_wavelength_A: float, shape: str = "tophat", bandwidth_frac: float = 0.0,
             n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Sampled spectrum: (wavelengths_A, weights summing to 1); see module docstring."""
    lam = _positive("central_wavelength_A", central_wavelength_A)
    bw = _non_negative("bandwidth_frac", bandwidth_frac)
    n = _count("spectrum_samples", n_samples)
    if shape not in SPECTRUM_SHAPES:
        raise ValueError(f"spectrum_shape must be one of {SPECTRUM_SHAPES}, got {shape!r}")
    if n == 1 or bw == 0:
        return np.full(n, lam), np.full(n, 1.0 / n)
    if shape == "tophat":
        frac = bw * (np.arange(n) / (n - 1) - 0.5)
        w = np.ones(n)
    else:
        frac = bw * np.linspace(-1.0, 1.0, n)
        sigma = bw / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        w = np.exp(-0.5 * (frac / sigma) ** 2)
    return lam * (1.0 + frac), w / w.sum()


def spectrum_rel_sigma(shape: str = "tophat", bandwidth_frac: float = 0.0, n_samples: int = 1) -> float:
    """Weighted standard deviation of the sampled spectrum over its central wavelength.

    The width the frames were simulated with (a 3-sample Gaussian is narrower than its nominal FWHM / 2.355),
    and what CrystFEL's ``bandwidth`` means: the relative sigma of a Gaussian spectrum.
    """
    lam, w = spectrum(1.0, shape, bandwidth_frac, n_samples)
    return float(np.sqrt(w @ (lam - w @ lam) ** 2))


def _draw_ncells(rng: np.random.Generator, spec: Mapping[str, Any], per_axis: bool) -> tuple[int, int, int]:
    z = rng.standard_normal(3)  # always 3 variates, whatever the distribution
    if spec["dist"] == "fixed":
        vals = np.full(3, spec["value"])
    elif spec["dist"] == "uniform":
        u = np.array([0.5 * (1.0 + math.erf(float(x) / math.sqrt(2.0))) for x in z])  # Phi(z) ~ U(0, 1)
        vals = spec["low"] + (spec["high"] - spec["low"]) * u
    else:
        vals = spec["median"] * np.exp(spec["sigma"] * z)
    if not per_axis:
        vals = np.full(3, vals[0])
    n = np.maximum(np.rint(vals), 1).astype(int)
    return int(n[0]), int(n[1]), int(n[2])


def draw_frame(config: DrawConfig, seed: int, dataset_index: int, frame_index: int) -> FrameDraws:
    """All random quantities of one frame (fixed draw order, see module docstring)."""
    rng = frame_rng(seed, dataset_index, frame_index)
    orientation = random_rotation(rng)
    ncells = _draw_ncells(rng, config.ncells, config.ncells_per_axis)
    z_energy, z_fluence = rng.standard_normal(2)
    lam_c = config.wavelength_A / (1.0 + config.energy_jitter_rel_sigma * float(z_energy))
    wavelengths, weights = spectrum(lam_c, config.spectrum_shape, config.bandwidth_frac, config.spectrum_samples)
    s = math.sqrt(math.log1p(config.fluence_rel_sigma ** 2))
    fluence = config.fluence_photons_per_m2 * math.exp(s * float(z_fluence) - 0.5 * s * s)
    umats = mosaic_umats(rng, config.mosaic_spread_deg, config.mosaic_domains, config.mosaic_model)
    return FrameDraws(seed=int(seed), dataset_index=int(dataset_index), frame_index=int(frame_index),
                      orientation=orientation, ncells=ncells, mosaic_umats=umats, central_wavelength_A=lam_c,
                      wavelengths_A=wavelengths, weights=weights, fluence_photons_per_m2=fluence)


def draw_frames(config: DrawConfig, seed: int, dataset_index: int, frame_indices: Any) -> list[FrameDraws]:
    """Draws for a shard of frames (each frame independent of the shard)."""
    return [draw_frame(config, seed, dataset_index, int(f)) for f in frame_indices]
