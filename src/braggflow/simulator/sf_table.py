"""Structure factors: the dense amplitude table, nanoBragg's ``h k l F`` text reader, the padded F^2 tables
the kernels look up (with their 3x3x3 neighbourhood maximum for the screening bound), and nanoBragg's tricubic
interpolation of F between the nodes (for crystals of <= 2 cells along an axis)."""

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

    What an unlisted index inside the box holds is the reader's choice: nanoBragg's ``h k l F`` reader
    (``load_hkl_text``) gives it default_F, F000 included, as nanoBragg's -default_F does (no symmetry or Friedel
    expansion); a table made from an MTZ holds 0 there (absences are absent).
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
    """Read nanoBragg's ``h k l F`` text format into a dense table (later duplicates win, as in nanoBragg); every
    unlisted index of the listed range, F000 included, holds ``default_F``, as nanoBragg fills its table."""
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
    table = np.full(shape, float(default_F), dtype=np.float64)
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


def _famp_table(sf: StructureFactorTable, xp: ModuleType) -> Any:
    """The amplitudes, flat float64 on xp (tricubic interpolation reads 4 x 4 x 4 of them); cached on the table."""
    key = ("F", xp.__name__)
    if key not in sf._derived:
        sf._derived[key] = xp.asarray(sf.amplitudes.ravel())
    return sf._derived[key]


def lagrange4(t: Any) -> tuple[Any, Any, Any, Any]:
    """Weights of the cubic through nodes -1, 0, 1, 2 at t (nanoBragg's polint on floor(h) - 1 .. floor(h) + 2)."""
    tm, t1, t2 = t + 1.0, t - 1.0, t - 2.0
    return -t * t1 * t2 / 6.0, tm * t1 * t2 / 2.0, -tm * t * t2 / 2.0, tm * t * t1 / 6.0


def interpolation_safe(h: Any, k: Any, l: Any, sf: StructureFactorTable, xp: ModuleType) -> Any:
    """Where nanoBragg interpolates: the fractional index is at least 2 inside the table's listed range on every
    axis (h_min + 2 <= h <= h_max - 2); elsewhere it takes the nearest node. (nanoBragg then also stops
    interpolating for the rest of the image, a shared flag; here each sample is judged on its own.)"""
    ok = None
    for v, lo, hi in zip((h, k, l), sf.hkl_min, sf.hkl_max):
        inside = (v >= lo + 2.0) & (v <= hi - 2.0)
        ok = inside if ok is None else ok & inside
    return ok


def interpolated_f(h: Any, k: Any, l: Any, sf: StructureFactorTable, xp: ModuleType) -> Any:
    """Tricubic Lagrange interpolation of F at fractional (h, k, l) (float64 arrays, one shape), nanoBragg's
    polin3 over the 4 x 4 x 4 nodes around floor(h, k, l); only valid where ``interpolation_safe``."""
    famp = _famp_table(sf, xp)
    nh, nk, nl = sf.amplitudes.shape
    lo = sf.hkl_min
    out = xp.zeros(h.shape, dtype=xp.float64)
    fl = [xp.floor(v) for v in (h, k, l)]
    w = [lagrange4(v - f) for v, f in zip((h, k, l), fl)]
    # clipped into the table where the caller will not use the value (outside interpolation_safe)
    base = [xp.clip(f - 1.0 - m, 0.0, max(n - 4.0, 0.0)).astype(xp.int64) for f, m, n in zip(fl, lo, (nh, nk, nl))]
    box = [min(n, 4) for n in (nh, nk, nl)]
    for i in range(box[0]):
        for j in range(box[1]):
            row = ((base[0] + i) * nk + (base[1] + j)) * nl + base[2]
            wij = w[0][i] * w[1][j]
            for m in range(box[2]):
                out += wij * w[2][m] * xp.take(famp, row + m)
    return out
