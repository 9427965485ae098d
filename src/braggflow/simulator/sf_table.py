"""Structure factors: the dense amplitude table, nanoBragg's ``h k l F`` text reader, and the padded F^2 tables
the kernels look up (with their 3x3x3 neighbourhood maximum for the screening bound)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike


@dataclass(frozen=True)
class StructureFactorTable:
    """Dense amplitude table F[h-hmin, k-kmin, l-lmin] (electrons); outside it, ``default_F``.

    Inside the box unlisted indices are 0, as in nanoBragg (no symmetry or Friedel expansion).
    """

    amplitudes: np.ndarray
    hkl_min: tuple[int, int, int]
    default_F: float = 0.0
    # derived lookup tables per array module, built once per table (the amplitudes are read-only)
    _derived: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        amps = np.array(self.amplitudes, dtype=np.float64)  # own copy, made read-only below
        if amps.ndim != 3 or min(amps.shape) < 1:
            raise ValueError(f"amplitudes must be a non-empty 3-D array, got shape {amps.shape}")
        if not np.all(np.isfinite(amps)):
            raise ValueError("amplitudes contain non-finite values")
        amps.flags.writeable = False
        object.__setattr__(self, "amplitudes", amps)
        object.__setattr__(self, "hkl_min", tuple(int(v) for v in self.hkl_min))
        if not math.isfinite(self.default_F):
            raise ValueError(f"default_F must be finite, got {self.default_F!r}")

    @property
    def hkl_max(self) -> tuple[int, int, int]:
        return tuple(int(m + s - 1) for m, s in zip(self.hkl_min, self.amplitudes.shape))  # type: ignore[return-value]

    def lookup(self, hkl: ArrayLike) -> np.ndarray:
        """Amplitudes for integer indices (n,3) (host NumPy)."""
        hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
        rel = hkl - np.asarray(self.hkl_min)
        inside = np.all((rel >= 0) & (rel < np.asarray(self.amplitudes.shape)), axis=1)
        out = np.full(len(hkl), float(self.default_F))
        r = rel[inside]
        out[inside] = self.amplitudes[r[:, 0], r[:, 1], r[:, 2]]
        return out


def load_hkl_text(path: str | Path, default_F: float = 0.0) -> StructureFactorTable:
    """Read nanoBragg's ``h k l F`` text format into a dense table (later duplicates win, as in nanoBragg)."""
    path = Path(path)
    try:
        data = np.loadtxt(path, ndmin=2, usecols=(0, 1, 2, 3))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read 'h k l F' columns: {exc}") from exc
    if data.size == 0:
        raise ValueError(f"{path}: no reflections")
    hkl = np.rint(data[:, :3]).astype(np.int64)
    if np.any(np.abs(data[:, :3] - hkl) > 1e-6):
        raise ValueError(f"{path}: non-integer Miller indices")
    lo = hkl.min(axis=0)
    shape = tuple(int(v) for v in hkl.max(axis=0) - lo + 1)
    table = np.zeros(shape, dtype=np.float64)
    rel = hkl - lo
    table[rel[:, 0], rel[:, 1], rel[:, 2]] = data[:, 3]
    return StructureFactorTable(table, tuple(int(v) for v in lo), float(default_F))


def _f2_tables(sf: StructureFactorTable, xp: ModuleType) -> tuple[Any, Any, float]:
    """F^2 padded by one default_F layer (flat, float32, on xp), its 3x3x3 neighbourhood maximum
    (for the screening bound) and the global maximum; cached on the table."""
    key = xp.__name__
    if key not in sf._derived:
        d2 = float(sf.default_F) ** 2
        f2pad = np.pad(np.square(sf.amplitudes), 1, constant_values=d2)
        f2pp = np.pad(f2pad, 1, constant_values=d2)
        nh, nk, nl = f2pad.shape
        f2max = np.full_like(f2pad, d2)
        for dh in range(3):
            for dk in range(3):
                for dl in range(3):
                    np.maximum(f2max, f2pp[dh:dh + nh, dk:dk + nk, dl:dl + nl], out=f2max)
        sf._derived[key] = (xp.asarray(f2pad.ravel().astype(np.float32)),
                            xp.asarray(f2max.ravel().astype(np.float32)), float(f2pad.max()))
    return sf._derived[key]
