"""The one detector model: a detector is a tuple of flat panels (a single flat detector is one panel) in the
DIALS / dxtbx lab frame (mm), with the one pixel <-> ray path and the one corner resolution.

Pixel coordinates are DIALS continuous coordinates (x = fast, y = slow; pixel i spans [i, i + 1), its centre at
i + 0.5); a pixel's lab position is origin + x * pixel_fast * fast_axis + y * pixel_slow * slow_axis. The
simulator's beam runs along ``INCIDENT_UNIT``; an experiment's own beam direction is passed where it differs.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from numpy.typing import ArrayLike

INCIDENT_UNIT = np.array([0.0, 0.0, -1.0])  # DIALS lab frame: beam propagates along -z


def _vec3(value, what: str) -> tuple[float, float, float]:
    vec = np.asarray(value, dtype=float)
    if vec.shape != (3,) or not np.all(np.isfinite(vec)):
        raise ValueError(f"{what} must be 3 finite numbers, got {value!r}")
    return tuple(float(v) for v in vec)  # type: ignore[return-value]


def _to_lab(origin, fast, slow, pixel, xy):
    """Lab positions (mm) of continuous pixel coordinates ``xy`` (..., 2) on panels (broadcastable (..., 3);
    ``pixel`` (..., 2) (fast, slow) mm)."""
    return origin + (xy[..., :1] * pixel[..., :1]) * fast + (xy[..., 1:] * pixel[..., 1:]) * slow


def _ray_to_px(origin, fast, slow, pixel, rays, shift_mm=None):
    """(x, y, forward) where rays from the sample meet panel planes (all (n, 3) or broadcastable; ``pixel``
    (n, 2) (fast, slow) mm). Exact for skewed axes: solves origin + a f + b s = t d in the panel's own basis."""
    d = np.asarray(rays, float)
    o = origin if shift_mm is None else origin + np.asarray(shift_mm, float)
    n = np.cross(fast, slow)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.sum(o * n, axis=-1) / np.sum(d * n, axis=-1)
    forward = np.isfinite(t) & (t > 0)
    rel = d * np.where(forward, t, np.nan)[..., None] - o
    c = np.sum(fast * slow, axis=-1)  # 0 for orthogonal axes, then x = rel . f exactly
    rf, rs = np.sum(rel * fast, axis=-1), np.sum(rel * slow, axis=-1)
    det = 1.0 - c * c
    a, b = (rf - c * rs) / det, (rs - c * rf) / det
    return a / pixel[..., 0], b / pixel[..., 1], forward


@dataclass(frozen=True)
class Panel:
    """One flat panel. ``origin_mm`` is the lab position of the outer corner of pixel (0, 0) on the sensor's front
    face; ``pixel_size_mm`` is along fast, ``pixel_size_slow_mm`` along slow (None: square pixels).
    ``thickness_mm`` and ``mu_per_mm``: the sensor's thickness and linear attenuation coefficient (0: a thin
    sensor, every photon counted at the front face; the simulator's default)."""

    origin_mm: tuple[float, float, float]
    fast_axis: tuple[float, float, float]
    slow_axis: tuple[float, float, float]
    pixel_size_mm: float
    n_fast: int
    n_slow: int
    pixel_size_slow_mm: float | None = None
    name: str = "panel0"
    thickness_mm: float = 0.0
    mu_per_mm: float = 0.0

    def __post_init__(self) -> None:
        for field in ("thickness_mm", "mu_per_mm"):
            value = getattr(self, field)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"Panel.{field} must be >= 0, got {value!r}")
            object.__setattr__(self, field, float(value))
        if self.thickness_mm > 0 and self.mu_per_mm <= 0:
            raise ValueError("Panel.mu_per_mm must be > 0 for a sensor of thickness > 0")
        for field in ("origin_mm", "fast_axis", "slow_axis"):
            object.__setattr__(self, field, _vec3(getattr(self, field), f"Panel.{field}"))
        for field in ("fast_axis", "slow_axis"):
            if abs(np.linalg.norm(getattr(self, field)) - 1.0) > 1e-6:
                raise ValueError(f"Panel.{field} must be a unit vector, got {getattr(self, field)!r}")
        if np.linalg.norm(np.cross(self.fast_axis, self.slow_axis)) < 1e-6:
            raise ValueError("Panel.fast_axis and slow_axis are parallel")
        for field in ("pixel_size_mm", "pixel_size_slow_mm"):
            value = getattr(self, field)
            if value is None:
                continue
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"Panel.{field} must be > 0, got {value!r}")
            object.__setattr__(self, field, float(value))
        if self.pixel_size_slow_mm == self.pixel_size_mm:
            object.__setattr__(self, "pixel_size_slow_mm", None)
        for field in ("n_fast", "n_slow"):
            value = getattr(self, field)
            if int(value) != value or value < 1:
                raise ValueError(f"Panel.{field} must be a positive integer, got {value!r}")
            object.__setattr__(self, field, int(value))
        if self.close_distance_mm <= 0:
            raise ValueError("Panel plane passes through the sample (origin . normal == 0)")

    @classmethod
    def from_beam_center(cls, distance_mm: float, beam_center_px: tuple[float, float], pixel_size_mm: float,
                         n_fast: int, n_slow: int, name: str = "panel0") -> Panel:
        """Panel normal to the beam: fast=(1,0,0), slow=(0,-1,0), direct beam at (fast, slow) px."""
        if not distance_mm > 0:
            raise ValueError(f"distance_mm must be > 0, got {distance_mm!r}")
        bx, by = (float(v) for v in beam_center_px)
        return cls(origin_mm=(-bx * pixel_size_mm, by * pixel_size_mm, -float(distance_mm)),
                   fast_axis=(1.0, 0.0, 0.0), slow_axis=(0.0, -1.0, 0.0), pixel_size_mm=float(pixel_size_mm),
                   n_fast=n_fast, n_slow=n_slow, name=name)

    @property
    def pixel_mm(self) -> tuple[float, float]:
        """(fast, slow) pixel size."""
        slow = self.pixel_size_mm if self.pixel_size_slow_mm is None else self.pixel_size_slow_mm
        return self.pixel_size_mm, slow

    @property
    def normal(self) -> np.ndarray:
        """Unit normal fast x slow."""
        n = np.cross(self.fast_axis, self.slow_axis)
        return n / np.linalg.norm(n)

    @property
    def close_distance_mm(self) -> float:
        """Perpendicular sample-to-plane distance (nanoBragg's close_distance)."""
        return float(abs(np.dot(self.origin_mm, self.normal)))

    def to_lab(self, xy_px: ArrayLike) -> np.ndarray:
        """(n, 3) lab positions (mm) of (n, 2) continuous pixel coordinates."""
        return _to_lab(np.asarray(self.origin_mm), np.asarray(self.fast_axis), np.asarray(self.slow_axis),
                       np.asarray(self.pixel_mm), np.asarray(xy_px, float).reshape(-1, 2))

    def pixel_centres_lab(self) -> np.ndarray:
        """(slow, fast, 3) lab positions (mm) of every pixel centre."""
        j, i = np.mgrid[0:self.n_slow, 0:self.n_fast].astype(float) + 0.5
        return _to_lab(np.asarray(self.origin_mm), np.asarray(self.fast_axis), np.asarray(self.slow_axis),
                       np.asarray(self.pixel_mm), np.stack([i, j], axis=-1))

    def corners_lab(self) -> np.ndarray:
        """(4, 3) lab positions of the panel's outer corners."""
        return self.to_lab([[0, 0], [self.n_fast, 0], [0, self.n_slow], [self.n_fast, self.n_slow]])

    def ray_to_px(self, directions: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Continuous (fast, slow) px where rays from the sample along ``directions`` (n, 3) meet the plane, and
        a mask of rays that meet it going forward (NaN coordinates otherwise)."""
        d = np.atleast_2d(np.asarray(directions, dtype=float))
        return _ray_to_px(np.asarray(self.origin_mm), np.asarray(self.fast_axis), np.asarray(self.slow_axis),
                          np.asarray(self.pixel_mm), d)

    def rotated(self, r: np.ndarray) -> Panel:
        """The panel in a lab frame rotated by the proper rotation ``r``."""
        fast, slow = r @ np.asarray(self.fast_axis), r @ np.asarray(self.slow_axis)
        return Panel(tuple(r @ np.asarray(self.origin_mm)), tuple(fast / np.linalg.norm(fast)),
                     tuple(slow / np.linalg.norm(slow)), self.pixel_size_mm, self.n_fast, self.n_slow,
                     self.pixel_size_slow_mm, self.name, self.thickness_mm, self.mu_per_mm)

    @property
    def outward_normal(self) -> np.ndarray:
        """Unit normal pointing away from the sample (into the sensor)."""
        n = self.normal
        return n * np.sign(np.dot(self.origin_mm, n))

    def mean_path_mm(self, rays: ArrayLike) -> np.ndarray:
        """Mean path length in the sensor of photons absorbed along unit ``rays`` (n, 3) (those it stops):
        1/mu - (t/cos + 1/mu) exp(-mu t / cos), cos = ray . outward normal (dxtbx's parallax correction); 0 for
        a thin sensor and for rays that do not enter it."""
        d = np.atleast_2d(np.asarray(rays, float))
        if self.thickness_mm <= 0:
            return np.zeros(len(d))
        cos = d @ self.outward_normal
        c = np.where(cos > 0, cos, 1.0)
        mu, t = self.mu_per_mm, self.thickness_mm
        return np.where(cos > 0, 1.0 / mu - (t / c + 1.0 / mu) * np.exp(-mu * t / c), 0.0)


def two_theta_rad(lab_mm: ArrayLike, beam_direction: ArrayLike = INCIDENT_UNIT) -> np.ndarray:
    """Scattering angle of lab positions (n, 3) seen from the sample (atan2: exact near 0 and 180 deg)."""
    p = np.asarray(lab_mm, float).reshape(-1, 3)
    b = np.asarray(beam_direction, float) / np.linalg.norm(beam_direction)
    return np.arctan2(np.linalg.norm(np.cross(p, b), axis=1), p @ b)


def _stacked(of, dtype=float) -> functools.cached_property:
    """A detector attribute: ``of(panel)`` of every panel stacked into one array."""
    return functools.cached_property(lambda self: np.array([of(p) for p in self.panels], dtype=dtype))


@dataclass(frozen=True)
class Detector:
    """A detector: its panels, and the same geometry as (P, ...) arrays for vectorised use."""

    panels: tuple[Panel, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "panels", tuple(self.panels))
        if not self.panels or not all(isinstance(p, Panel) for p in self.panels):
            raise ValueError("a Detector needs one or more Panel objects")

    @classmethod
    def from_arrays(cls, name, origin_mm, fast_axis, slow_axis, pixel_size_mm, image_size) -> Detector:
        """From per-panel arrays: names (P,), origin / fast / slow (P, 3), pixel size (P, 2) and image size
        (P, 2), both (fast, slow) -- the layout of the frames file and of DIALS exports."""
        ps, size = np.asarray(pixel_size_mm, float).reshape(-1, 2), np.asarray(image_size).reshape(-1, 2)
        return cls(tuple(Panel(o, f, s, float(p[0]), int(n[0]), int(n[1]), float(p[1]), str(nm))
                         for nm, o, f, s, p, n in zip(name, np.asarray(origin_mm, float).reshape(-1, 3),
                                                      np.asarray(fast_axis, float).reshape(-1, 3),
                                                      np.asarray(slow_axis, float).reshape(-1, 3), ps, size)))

    def __len__(self) -> int:
        return len(self.panels)

    def __getitem__(self, i: int) -> Panel:
        return self.panels[i]

    def __iter__(self) -> Iterator[Panel]:
        return iter(self.panels)

    @property
    def name(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.panels)

    # The panels' geometry as (P, ...) arrays, computed once per detector.
    origin_mm = _stacked(lambda p: p.origin_mm)
    fast_axis = _stacked(lambda p: p.fast_axis)
    slow_axis = _stacked(lambda p: p.slow_axis)
    pixel_size_mm = _stacked(lambda p: p.pixel_mm)  # (P, 2) (fast, slow)
    image_size = _stacked(lambda p: (p.n_fast, p.n_slow), np.int64)  # (P, 2) (fast, slow)

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.fast_axis, self.slow_axis)
        return n / np.linalg.norm(n, axis=1, keepdims=True)

    def to_lab(self, panel: ArrayLike, xy_px: ArrayLike) -> np.ndarray:
        """(n, 3) lab positions (mm) of (n, 2) pixel coordinates on the given panels."""
        p = np.asarray(panel, int)
        return _to_lab(self.origin_mm[p], self.fast_axis[p], self.slow_axis[p], self.pixel_size_mm[p],
                       np.asarray(xy_px, float).reshape(-1, 2))

    def intersect(self, panel: ArrayLike, rays: ArrayLike, shift_mm: ArrayLike | None = None) -> np.ndarray:
        """(n, 2) pixel coordinates where rays from the sample (n, 3) meet their panel's plane, the panels moved
        by ``shift_mm`` (3,) first (NaN where the ray runs away from the plane)."""
        p = np.asarray(panel, int)
        x, y, _ = _ray_to_px(self.origin_mm[p], self.fast_axis[p], self.slow_axis[p], self.pixel_size_mm[p],
                             np.asarray(rays, float).reshape(-1, 3), shift_mm)
        return np.stack([x, y], axis=1)

    def distance_mm(self, beam_direction: ArrayLike = INCIDENT_UNIT) -> float:
        """Sample-to-detector distance along the beam: mean over panels of where the beam axis meets each plane."""
        b = np.asarray(beam_direction, float)
        n = self.normal
        return float(np.mean(np.sum(self.origin_mm * n, axis=1) / (n @ b)))

    def beam_center_px(self, beam_direction: ArrayLike = INCIDENT_UNIT, panel: int = 0) -> tuple[float, float]:
        """(fast, slow) px where the direct beam meets ``panel``'s plane (outside the panel for a CSPAD)."""
        x, y = self.intersect(np.array([panel]), np.asarray(beam_direction, float)[None])[0]
        return float(x), float(y)

    def max_two_theta_rad(self, beam_direction: ArrayLike = INCIDENT_UNIT) -> float:
        """Largest scattering angle any pixel records: on a flat rectangle in front of the sample it is at a
        corner (the cone of directions within an angle of the beam cuts the plane in a convex set)."""
        return float(two_theta_rad(np.concatenate([p.corners_lab() for p in self.panels]), beam_direction).max())

    def d_min_angstrom(self, wavelength_angstrom: float, beam_direction: ArrayLike = INCIDENT_UNIT) -> float:
        """Finest resolution the detector records (its farthest corner)."""
        return wavelength_angstrom / (2.0 * math.sin(self.max_two_theta_rad(beam_direction) / 2.0))

    def rotated(self, r: np.ndarray) -> Detector:
        return Detector(tuple(p.rotated(r) for p in self.panels))
