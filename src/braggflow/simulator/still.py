"""The still's physical description, validated once: the crystal, the pulse and the numerics of the average, composed
into one ``Still`` that ``simulate_still`` and ``truth_reflections`` both take. Also the lab-frame conventions they
share (incident direction, polarization basis) and nanoBragg's constants."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from ..detector import INCIDENT_UNIT

R_E_SQ_M2 = 7.94079248018965e-30  # classical electron radius squared (nanoBragg.c L211)
NANOBRAGG_DEFAULT_FLUENCE_PHOTONS_PER_M2 = 1.25932e29  # nanoBragg default: r_e^2 * fluence ~ 1
SHAPES = ("square", "round", "gauss", "tophat")

Shape = Literal["square", "round", "gauss", "tophat"]


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _check_ncells(ncells: Sequence[float] | float, shape: str) -> tuple[float, float, float]:
    if np.ndim(ncells) == 0:
        ncells = (ncells, ncells, ncells)  # type: ignore[assignment]
    values = tuple(float(v) for v in ncells)  # type: ignore[union-attr]
    if len(values) != 3:
        raise ValueError(f"ncells must be 3 numbers (Na, Nb, Nc), got {ncells!r}")
    for name, v in zip(("Na", "Nb", "Nc"), values):
        if not (v > 0 and math.isfinite(v)):
            raise ValueError(f"ncells {name}={v!r} must be a positive number of unit cells")
        if shape == "square" and v != round(v):
            raise ValueError(f"ncells {name}={v!r} must be an integer for the square (parallelepiped) shape")
    return values  # type: ignore[return-value]


def polarization_basis(polarization_axis: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(E, B) unit vectors normal to the incident beam: B = axis x beam, E = beam x B (the axis made normal to
    the beam); Kahn's polarization uses (d.E)^2 - (d.B)^2."""
    axis = np.asarray(polarization_axis, dtype=np.float64)
    b_in = np.cross(axis, INCIDENT_UNIT) if axis.shape == (3,) else np.zeros(3)
    if np.linalg.norm(b_in) < 1e-9:
        raise ValueError(f"polarization_axis must be a 3-vector not parallel to the beam, got {polarization_axis!r}")
    b_in /= np.linalg.norm(b_in)
    e_in = np.cross(INCIDENT_UNIT, b_in)
    return e_in / np.linalg.norm(e_in), b_in


# The parts hold NumPy arrays, so they compare by identity (eq=False), not element by element.
@dataclass(frozen=True, eq=False)
class Crystal:
    """The crystal of one still, in the lab frame.

    A_matrix: DIALS A = U B (columns a*, b*, c*, 1/Angstrom), stored as a read-only float64 (3,3) array.
    ncells: (Na, Nb, Nc) unit cells along a, b, c (one number: all three), stored as 3 floats.
    shape: nanoBragg's crystal shape, which sets the lattice transform F_latt.
    mosaic_umats: (M,3,3) lab rotations, domain m uses U_m A; None: one domain, stored as the identity.
    """

    A_matrix: np.ndarray
    ncells: tuple[float, float, float] = (10.0, 10.0, 10.0)
    shape: Shape = "square"
    mosaic_umats: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")
        object.__setattr__(self, "ncells", _check_ncells(self.ncells, self.shape))
        A = np.array(self.A_matrix, dtype=np.float64)
        if A.shape != (3, 3) or not np.all(np.isfinite(A)) or abs(np.linalg.det(A)) < 1e-30:
            raise ValueError(f"A_matrix must be an invertible finite 3x3 matrix (1/Angstrom), got {A!r}")
        object.__setattr__(self, "A_matrix", _read_only(A))
        if self.mosaic_umats is None:
            umats = np.eye(3)[None]
        else:
            umats = np.array(self.mosaic_umats, dtype=np.float64).reshape(-1, 3, 3)
            if umats.shape[0] == 0:
                raise ValueError("mosaic_umats is empty")
            err = np.abs(np.einsum("mij,mkj->mik", umats, umats) - np.eye(3)).max()
            if err > 1e-6 or np.any(np.linalg.det(umats) < 0):
                raise ValueError(f"mosaic_umats must be proper rotation matrices (max |U U^T - I| = {err:.2g})")
        object.__setattr__(self, "mosaic_umats", _read_only(umats))


@dataclass(frozen=True, eq=False)
class Pulse:
    """The X-ray pulse of one still.

    wavelengths_A: the sources' wavelengths (Angstrom), stored as a read-only float64 1-D array.
    weights: the sources' weights, stored normalised to sum 1; None: equal (nanoBragg's case).
    fluence_photons_per_m2: photons per m^2 at the crystal.
    kahn_factor: K in nanoBragg's polarization (0 = unpolarized); polarization_axis: the E-vector direction (made
    normal to the beam where it is used), stored as 3 floats.
    directions: each source's incident unit vector (S, 3) (beam divergence, ``divergent_directions``); None: all
    along the beam, (0, 0, -1).
    """

    wavelengths_A: np.ndarray
    weights: np.ndarray | None = None
    fluence_photons_per_m2: float = NANOBRAGG_DEFAULT_FLUENCE_PHOTONS_PER_M2
    kahn_factor: float = 0.0
    polarization_axis: tuple[float, float, float] = (1.0, 0.0, 0.0)
    directions: np.ndarray | None = None

    def __post_init__(self) -> None:
        lam = np.atleast_1d(np.array(self.wavelengths_A, dtype=np.float64))
        if lam.ndim != 1 or lam.size == 0 or not np.all(np.isfinite(lam)) or np.any(lam <= 0):
            raise ValueError(f"wavelengths_A must be positive finite numbers, got {self.wavelengths_A!r}")
        if self.weights is None:
            w = np.full(lam.size, 1.0 / lam.size)
        else:
            w = np.atleast_1d(np.asarray(self.weights, dtype=np.float64))
            if w.shape != lam.shape or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
                raise ValueError(
                    f"weights must be {lam.size} non-negative numbers with a positive sum, got {self.weights!r}")
            w = w / w.sum()
        object.__setattr__(self, "wavelengths_A", _read_only(lam))
        object.__setattr__(self, "weights", _read_only(w))
        fluence = self.fluence_photons_per_m2
        if not (fluence > 0 and math.isfinite(fluence)):
            raise ValueError(f"fluence_photons_per_m2 must be > 0, got {fluence!r}")
        object.__setattr__(self, "fluence_photons_per_m2", float(fluence))
        if not (-1.0 <= self.kahn_factor <= 1.0):
            raise ValueError(f"kahn_factor must lie in [-1, 1], got {self.kahn_factor!r}")
        object.__setattr__(self, "kahn_factor", float(self.kahn_factor))
        polarization_basis(self.polarization_axis)  # raises for an axis that is no direction normal to the beam
        axis = np.asarray(self.polarization_axis, dtype=np.float64)
        object.__setattr__(self, "polarization_axis", tuple(float(v) for v in axis))
        if self.directions is not None:
            d = np.array(self.directions, dtype=np.float64).reshape(-1, 3) if np.size(self.directions) else None
            if d is None or d.shape != (lam.size, 3) or not np.all(np.isfinite(d)) \
                    or np.any(np.abs(np.linalg.norm(d, axis=1) - 1.0) > 1e-9) or np.any(d @ INCIDENT_UNIT < 0.5):
                raise ValueError(f"directions must be {lam.size} unit vectors within 60 deg of the beam (0, 0, -1), "
                                 f"got {self.directions!r}")
            object.__setattr__(self, "directions", _read_only(d))

    @property
    def divergent(self) -> bool:
        return self.directions is not None and bool(np.any(self.directions != INCIDENT_UNIT))

    def incident(self) -> np.ndarray:
        """(S, 3) every source's incident unit vector."""
        return np.tile(INCIDENT_UNIT, (self.wavelengths_A.size, 1)) if self.directions is None else self.directions


@dataclass(frozen=True)
class Numerics:
    """How the pixel average is taken.

    oversample: sub-pixels per pixel edge (oversample^2 per pixel). fudge: nanoBragg's -fudge, a factor on the
    round/gauss/tophat profile's radius^2. first_subpixel_factors: True evaluates Omega and P once per pixel at
    the first sub-pixel, as nanoBragg caches them (default False: per sub-pixel, the physically right average).
    interpolate: F between the nodes by nanoBragg's tricubic interpolation (True), or F of the nearest node (False);
    None: as nanoBragg decides, on when any of Na, Nb, Nc is <= 2 (a crystal that small samples F between nodes).
    sensor_layers: layers a thick sensor (``Panel.thickness_mm`` > 0) is averaged over, each of thickness
    t / layers and weighted by the photons it absorbs, exp(-mu z_i / cos) - exp(-mu z_(i+1) / cos).
    layer_depth: where in its layer a layer's sample sits: "mean", the mean depth of the photons it absorbs
    (so that the spots' centroids carry the sensor's parallax exactly, whatever the layer count), or "front", the
    layer's front face, as nanoBragg's -detector_thicksteps (with -oversample_thick) puts it.
    """

    oversample: int = 1
    fudge: float = 1.0
    first_subpixel_factors: bool = False
    interpolate: bool | None = None
    sensor_layers: int = 1
    layer_depth: str = "mean"

    def __post_init__(self) -> None:
        if int(self.oversample) != self.oversample or self.oversample < 1:
            raise ValueError(f"oversample must be a positive integer, got {self.oversample!r}")
        object.__setattr__(self, "oversample", int(self.oversample))
        if not (self.fudge > 0 and math.isfinite(self.fudge)):
            raise ValueError(f"fudge must be > 0, got {self.fudge!r}")
        object.__setattr__(self, "fudge", float(self.fudge))
        object.__setattr__(self, "first_subpixel_factors", bool(self.first_subpixel_factors))
        if self.interpolate is not None:
            object.__setattr__(self, "interpolate", bool(self.interpolate))
        if int(self.sensor_layers) != self.sensor_layers or self.sensor_layers < 1:
            raise ValueError(f"sensor_layers must be a positive integer, got {self.sensor_layers!r}")
        object.__setattr__(self, "sensor_layers", int(self.sensor_layers))
        if self.layer_depth not in ("mean", "front"):
            raise ValueError(f"layer_depth must be 'mean' or 'front', got {self.layer_depth!r}")

    def interpolates(self, ncells: tuple[float, float, float]) -> bool:
        """Whether F is interpolated for a crystal of ``ncells`` (nanoBragg: when any axis is <= 2 cells)."""
        return bool(self.interpolate) if self.interpolate is not None else min(ncells) <= 2


@dataclass(frozen=True, eq=False)
class Still:
    """One still's physical description: the crystal, the pulse that lights it and the numerics of the average."""

    crystal: Crystal
    pulse: Pulse
    numerics: Numerics = field(default_factory=Numerics)

    def __post_init__(self) -> None:
        for name, cls in (("crystal", Crystal), ("pulse", Pulse), ("numerics", Numerics)):
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"Still.{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")


def _rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Right-handed rotation of ``v`` about unit ``axis`` by ``angle`` rad (Rodrigues)."""
    return (v * math.cos(angle) + np.cross(axis, v) * math.sin(angle)
            + axis * np.dot(axis, v) * (1.0 - math.cos(angle)))


def divergent_directions(h_range_rad: float, v_range_rad: float, h_steps: int, v_steps: int,
                         polarization_axis: ArrayLike = (1.0, 0.0, 0.0), round_div: bool = True) -> np.ndarray:
    """Incident unit vectors of a divergent beam as nanoBragg lays them out (-hdivrange/-vdivrange,
    -hdivsteps/-vdivsteps, -round_div): angles step * i - range / 2 (step = range / (steps - 1)) in the
    horizontal plane (about the vertical, beam x E) and the vertical one (about the E-vector), the beam rotated
    about E by the vertical angle and then about the vertical by the horizontal one; with round_div the grid's
    corners beyond the ellipse are dropped (nanoBragg's test, test * 4 > 1.1). (S, 3), equal weights."""
    e_in, b_in = polarization_basis(polarization_axis)
    beam = INCIDENT_UNIT
    vert = np.cross(beam, e_in)
    vert /= np.linalg.norm(vert)
    grid = []
    for rng, steps in ((h_range_rad, h_steps), (v_range_rad, v_steps)):
        if rng < 0 or not math.isfinite(rng):
            raise ValueError(f"divergence range must be >= 0 rad, got {rng!r}")
        if int(steps) != steps or steps < 1:
            raise ValueError(f"divergence steps must be a positive integer, got {steps!r}")
        steps = int(steps)
        if rng == 0 or steps == 1:
            grid.append((np.zeros(1), 0.0, 1))
        else:
            step = rng / (steps - 1)
            grid.append((step * np.arange(steps) - rng / 2.0, step, steps))
    (hs, hstep, hn), (vs, vstep, vn) = grid
    out = []
    for h in hs:
        for v in vs:
            if round_div and h_range_rad > 0 and v_range_rad > 0:
                test = (h * h - hstep * hstep / 4.0 * (1 - hn % 2)) / h_range_rad ** 2
                test += (v * v - vstep * vstep / 4.0 * (1 - vn % 2)) / v_range_rad ** 2
                if test * 4.0 > 1.1:
                    continue
            d = _rotate(_rotate(beam, e_in, v), vert, h)
            out.append(d / np.linalg.norm(d))
    return np.array(out)
