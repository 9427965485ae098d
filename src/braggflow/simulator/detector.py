"""The flat single-panel detector: DIALS-style geometry (lab frame, mm) and the pixel <-> ray mapping."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


@dataclass(frozen=True)
class FlatDetector:
    """Flat single-panel detector, DIALS style (lab frame, mm).

    ``origin_mm`` is the lab position of the outer corner of pixel (0, 0); pixel (i, j) covers
    continuous coordinates [i, i+1) x [j, j+1), so its centre is (i + 0.5, j + 0.5).
    """

    origin_mm: tuple[float, float, float]
    fast_axis: tuple[float, float, float]
    slow_axis: tuple[float, float, float]
    pixel_size_mm: float
    n_fast: int
    n_slow: int

    def __post_init__(self) -> None:
        for name in ("origin_mm", "fast_axis", "slow_axis"):
            vec = np.asarray(getattr(self, name), dtype=float)
            if vec.shape != (3,) or not np.all(np.isfinite(vec)):
                raise ValueError(f"FlatDetector.{name} must be 3 finite numbers, got {getattr(self, name)!r}")
            object.__setattr__(self, name, tuple(float(v) for v in vec))
        for name in ("fast_axis", "slow_axis"):
            if abs(np.linalg.norm(getattr(self, name)) - 1.0) > 1e-6:
                raise ValueError(f"FlatDetector.{name} must be a unit vector, got {getattr(self, name)!r}")
        if np.linalg.norm(np.cross(self.fast_axis, self.slow_axis)) < 1e-6:
            raise ValueError("FlatDetector.fast_axis and slow_axis are parallel")
        if not (self.pixel_size_mm > 0 and math.isfinite(self.pixel_size_mm)):
            raise ValueError(f"FlatDetector.pixel_size_mm must be > 0, got {self.pixel_size_mm!r}")
        for name in ("n_fast", "n_slow"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"FlatDetector.{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.close_distance_mm <= 0:
            raise ValueError("FlatDetector plane passes through the sample (origin . normal == 0)")

    @classmethod
    def from_beam_center(
        cls,
        distance_mm: float,
        beam_center_px: tuple[float, float],
        pixel_size_mm: float,
        n_fast: int,
        n_slow: int,
    ) -> FlatDetector:
        """Detector normal to the beam: fast=(1,0,0), slow=(0,-1,0), direct beam at (fast, slow) px."""
        if not distance_mm > 0:
            raise ValueError(f"distance_mm must be > 0, got {distance_mm!r}")
        bx, by = (float(v) for v in beam_center_px)
        return cls(
            origin_mm=(-bx * pixel_size_mm, by * pixel_size_mm, -float(distance_mm)),
            fast_axis=(1.0, 0.0, 0.0),
            slow_axis=(0.0, -1.0, 0.0),
            pixel_size_mm=float(pixel_size_mm),
            n_fast=n_fast,
            n_slow=n_slow,
        )

    @property
    def normal(self) -> np.ndarray:
        """Unit normal fast x slow."""
        n = np.cross(self.fast_axis, self.slow_axis)
        return n / np.linalg.norm(n)

    @property
    def close_distance_mm(self) -> float:
        """Perpendicular sample-to-plane distance (nanoBragg's close_distance)."""
        return float(abs(np.dot(self.origin_mm, np.cross(self.fast_axis, self.slow_axis))
                         / np.linalg.norm(np.cross(self.fast_axis, self.slow_axis))))

    def ray_to_px(self, directions: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Continuous (fast, slow) px where rays from the sample along ``directions`` (n,3) hit the
        plane, and a mask of rays that hit it going forward (NumPy, host)."""
        d = np.atleast_2d(np.asarray(directions, dtype=float))
        origin = np.asarray(self.origin_mm)
        n = self.normal
        denom = d @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.dot(origin, n) / denom
        forward = np.isfinite(t) & (t > 0)
        hit = d * np.where(forward, t, np.nan)[:, None] - origin
        basis = np.stack([self.fast_axis, self.slow_axis, n], axis=1)  # columns
        coef = np.linalg.solve(basis, hit.T).T
        return coef[:, 0] / self.pixel_size_mm, coef[:, 1] / self.pixel_size_mm, forward
