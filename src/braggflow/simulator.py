"""Kinematic still-diffraction simulator equivalent to nanoBragg, in the DIALS laboratory frame.

Physics (per pixel, expected photons)::

    I = r_e^2 * fluence * < F_cell(hkl)^2 * F_latt(h,k,l)^2 * P * Omega >

where <> is the mean over oversample^2 sub-pixels, sources (wavelength lambda_i, weight w_i, weights
normalised to 1; nanoBragg's equal weights are the special case) and mosaic domains. Fractional
indices are h = A_m^-1 (s1_hat - s0_hat) / lambda with A_m = U_m A (DIALS A = U B, 1/Angstrom, no 2 pi).
Beam along -z (incident unit vector (0, 0, -1)). Conventions follow nanoBragg.c (summarised with line
references in tests/data/nanobragg/CONVENTIONS.md) with one deliberate choice: the solid angle Omega
and the polarization P are evaluated per sub-pixel (the physically right pixel average), not once per
pixel at the first sub-pixel as nanoBragg does; that differs from nanoBragg by ~1e-4 of a pixel's value
at 100 mm / 75 um / oversample 2 (``first_subpixel_factors=True`` reproduces nanoBragg's caching).

Speed (CPU): pass 1 evaluates every pixel once (pixel centre, reference wavelength and orientation)
together with a rigorous upper bound B of any sample's value in that pixel: the lattice transform's
envelope (square: min(N^2, 1/sin^2(pi x)) per axis, including the 1/N^2 streaks) times the largest
F^2 reachable and the geometric factors, over the spread of the fractional indices across sub-pixels,
sources and domains. Pass 2 computes the full average only where B >= rel_tol * (image max), walking
down bands of B until the threshold is below rel_tol times the largest full average found, so every
pixel left at its single-sample value is off by less than rel_tol * max (default 2e-4). Those pixels
carry a few % of the photons; their single-sample values are slightly low on average (the envelope is
convex), which costs ~1e-4 of the total. With one source, one domain and oversample 1 the single sample
is exact and pass 2 is skipped. Work is done in row blocks / pixel batches, so memory stays ~20 bytes
per pixel plus a few MB.

All array work goes through an array module ``xp`` (NumPy, or CuPy with the same code).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from types import ModuleType
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

R_E_SQ_M2 = 7.94079248018965e-30  # classical electron radius squared (nanoBragg.c L211)
NANOBRAGG_DEFAULT_FLUENCE_PHOTONS_PER_M2 = 1.25932e29  # nanoBragg default: r_e^2 * fluence ~ 1
INCIDENT_UNIT = np.array([0.0, 0.0, -1.0])  # DIALS lab frame: beam propagates along -z
SHAPES = ("square", "round", "gauss", "tophat")
_TINY_ANGLE = np.float32(1e-30)  # sin(N x)/sin(x) -> N as x -> 0: evaluate at x >= 1e-30, no branch
_ROUND_NORM = 0.723601254558268  # nanoBragg's cube/sphere volume correction for ROUND

Shape = Literal["square", "round", "gauss", "tophat"]


# --------------------------------------------------------------------------------------------
# array module
# --------------------------------------------------------------------------------------------
def get_array_module(backend: str = "numpy") -> ModuleType:
    """Array module for ``backend`` in {'numpy', 'cupy', 'auto'}; CuPy is imported only when asked."""
    if backend == "numpy":
        return np
    if backend == "cupy":
        import cupy  # noqa: PLC0415 - only on request

        return cupy
    if backend == "auto":
        try:
            import cupy  # noqa: PLC0415

            if cupy.cuda.runtime.getDeviceCount() > 0:
                return cupy
        except Exception:  # noqa: BLE001 - any CuPy/CUDA failure means: use NumPy
            pass
        return np
    raise ValueError(f"backend must be 'numpy', 'cupy' or 'auto', got {backend!r}")


def to_numpy(array: Any) -> np.ndarray:
    """Host NumPy copy of an xp array (no-op for NumPy)."""
    get = getattr(array, "get", None)
    return np.asarray(get() if callable(get) else array)


# --------------------------------------------------------------------------------------------
# detector
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# structure factors
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# validated setup shared by the image and the truth table
# --------------------------------------------------------------------------------------------
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


def _rotation_distance(rot: np.ndarray) -> float:
    """Spectral norm ||R - I|| (= 2 sin(angle/2) for a rotation)."""
    return float(np.linalg.norm(rot - np.eye(3), ord=2))


@dataclass
class _Setup:
    """Validated inputs and derived constants (host NumPy plus device copies)."""

    xp: ModuleType
    detector: FlatDetector
    A: np.ndarray
    real_space: np.ndarray  # rows a, b, c (Angstrom) = A^-1
    umats: np.ndarray  # (M,3,3)
    kappa: np.ndarray  # 1/lambda (1/Angstrom), (S,)
    weights: np.ndarray  # (S,), sum 1
    kappa_ref: float
    m_ref: np.ndarray  # h = m_ref @ (d - i) * kappa  for the reference sample
    m_dom: np.ndarray  # (M,3,3): h = m_dom[m] @ (d - i) * kappa_s
    ncells: tuple[float, float, float]
    shape: str
    fudge: float
    oversample: int
    scale: float  # r_e^2 * fluence
    kahn: float
    e_in: np.ndarray
    b_in: np.ndarray
    sigma_min_sq: float  # smallest singular value of A, squared (1/A^2)
    metric: np.ndarray  # A^T A, for the gauss/tophat rad*
    eps_rot: float
    dkappa: float
    single_exact: bool
    first_subpixel_factors: bool  # nanoBragg's Omega/P caching (off: per sub-pixel, physically right)
    f2pad: Any = field(repr=False)  # device (nh+2)*(nk+2)*(nl+2) float32, border = default_F^2
    f2max27: Any = field(repr=False)
    f2_global_max: float = 0.0
    f_off: tuple[float, float, float] = (0.0, 0.0, 0.0)
    f_hi: tuple[float, float, float] = (0.0, 0.0, 0.0)
    f_stride: tuple[float, float] = (0.0, 0.0)


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


def _make_setup(
    A_matrix: ArrayLike,
    detector: FlatDetector,
    structure_factors: StructureFactorTable,
    wavelengths_A: ArrayLike,
    weights: ArrayLike | None,
    mosaic_umats: ArrayLike | None,
    ncells: Sequence[float] | float,
    shape: str,
    fluence_photons_per_m2: float,
    oversample: int,
    kahn_factor: float,
    polarization_axis: ArrayLike,
    fudge: float,
    xp: ModuleType,
    first_subpixel_factors: bool = False,
) -> _Setup:
    if not isinstance(detector, FlatDetector):
        raise ValueError("detector must be a FlatDetector")
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    n3 = _check_ncells(ncells, shape)
    A = np.asarray(A_matrix, dtype=np.float64)
    if A.shape != (3, 3) or not np.all(np.isfinite(A)) or abs(np.linalg.det(A)) < 1e-30:
        raise ValueError(f"A_matrix must be an invertible finite 3x3 matrix (1/Angstrom), got {A!r}")
    real_space = np.linalg.inv(A)
    lam = np.atleast_1d(np.asarray(wavelengths_A, dtype=np.float64))
    if lam.ndim != 1 or lam.size == 0 or not np.all(np.isfinite(lam)) or np.any(lam <= 0):
        raise ValueError(f"wavelengths_A must be positive finite numbers, got {wavelengths_A!r}")
    if weights is None:
        w = np.full(lam.size, 1.0 / lam.size)
    else:
        w = np.atleast_1d(np.asarray(weights, dtype=np.float64))
        if w.shape != lam.shape or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be {lam.size} non-negative numbers with a positive sum, got {weights!r}")
        w = w / w.sum()
    if mosaic_umats is None:
        umats = np.eye(3)[None]
    else:
        umats = np.asarray(mosaic_umats, dtype=np.float64).reshape(-1, 3, 3)
        if umats.shape[0] == 0:
            raise ValueError("mosaic_umats is empty")
        err = np.abs(np.einsum("mij,mkj->mik", umats, umats) - np.eye(3)).max()
        if err > 1e-6 or np.any(np.linalg.det(umats) < 0):
            raise ValueError(f"mosaic_umats must be proper rotation matrices (max |U U^T - I| = {err:.2g})")
    if not (fluence_photons_per_m2 > 0 and math.isfinite(fluence_photons_per_m2)):
        raise ValueError(f"fluence_photons_per_m2 must be > 0, got {fluence_photons_per_m2!r}")
    if int(oversample) != oversample or oversample < 1:
        raise ValueError(f"oversample must be a positive integer, got {oversample!r}")
    if not (fudge > 0 and math.isfinite(fudge)):
        raise ValueError(f"fudge must be > 0, got {fudge!r}")
    if not (-1.0 <= kahn_factor <= 1.0):
        raise ValueError(f"kahn_factor must lie in [-1, 1], got {kahn_factor!r}")
    e_in, b_in = polarization_basis(polarization_axis)

    kappa = 1.0 / lam
    kappa_ref = float(np.dot(w, kappa))
    m_dom = np.einsum("ij,mkj->mik", real_space, umats)  # A^-1 U_m^T
    u_ref = umats[0]
    eps_rot = max(_rotation_distance(u @ u_ref.T) for u in umats)
    dkappa = float(np.max(np.abs(kappa - kappa_ref)))
    single_exact = int(oversample) == 1 and lam.size == 1 and umats.shape[0] == 1

    sf = structure_factors
    f2pad, f2max27, f2_global_max = _f2_tables(sf, xp)
    nh, nk, nl = (n + 2 for n in sf.amplitudes.shape)
    f_off = tuple(float(1 - m) for m in sf.hkl_min)

    return _Setup(
        xp=xp, detector=detector, A=A, real_space=real_space, umats=umats, kappa=kappa, weights=w,
        kappa_ref=kappa_ref, m_ref=m_dom[0], m_dom=m_dom, ncells=n3, shape=shape, fudge=float(fudge),
        oversample=int(oversample), scale=R_E_SQ_M2 * float(fluence_photons_per_m2), kahn=float(kahn_factor),
        e_in=e_in, b_in=b_in, sigma_min_sq=float(np.linalg.svd(A, compute_uv=False).min() ** 2),
        metric=A.T @ A, eps_rot=eps_rot, dkappa=dkappa, single_exact=single_exact,
        first_subpixel_factors=bool(first_subpixel_factors),
        f2pad=f2pad,
        f2max27=f2max27,
        f2_global_max=f2_global_max,
        f_off=f_off,  # type: ignore[arg-type]
        f_hi=(float(nh - 1), float(nk - 1), float(nl - 1)),
        f_stride=(float(nk * nl), float(nl)),
    )


# --------------------------------------------------------------------------------------------
# elementwise kernels (xp arrays, any shape)
# --------------------------------------------------------------------------------------------
def _nearest(h: Any, xp: ModuleType) -> tuple[Any, Any]:
    """nanoBragg's nearest index h0 = ceil(h - 0.5) (float64) and dh = h - h0 as float32."""
    h0 = xp.ceil(h - 0.5)
    dh = (h - h0).astype(xp.float32)  # |dh| <= 1/2: float32 keeps ~3e-8 absolute
    return h0, dh


def _f2_index(h0: Any, k0: Any, l0: Any, st: _Setup, xp: ModuleType) -> Any:
    """Flat index into the padded F^2 table; indices off the table land on its default_F border."""
    ih = xp.clip(h0 + st.f_off[0], 0.0, st.f_hi[0])
    ik = xp.clip(k0 + st.f_off[1], 0.0, st.f_hi[1])
    il = xp.clip(l0 + st.f_off[2], 0.0, st.f_hi[2])
    ih *= st.f_stride[0]
    ik *= st.f_stride[1]
    ih += ik
    ih += il
    return ih.astype(xp.int64)


def _lattice_sq(dh: Any, dk: Any, dl: Any, st: _Setup, xp: ModuleType) -> Any:
    """F_latt^2 (float32) from float32 offsets to the nearest node, nanoBragg's shapes."""
    na, nb, nc = st.ncells
    if st.shape == "square":
        out = None
        for d, n in ((dh, na), (dk, nb), (dl, nc)):
            if n <= 1:  # nanoBragg: an axis with N <= 1 contributes 1
                continue
            x = xp.abs(d) * np.float32(math.pi)  # sincg^2 is even; x > 0 keeps the ratio finite
            xp.maximum(x, _TINY_ANGLE, out=x)
            r = xp.sin(x * np.float32(n))
            r /= xp.sin(x)
            out = r if out is None else out * r
        if out is None:
            return xp.ones(dh.shape, dtype=xp.float32)
        return out * out
    nnn = np.float32(na * nb * nc)
    if st.shape == "round":
        hrad = xp.square(dh * np.float32(na))
        hrad += xp.square(dk * np.float32(nb))
        hrad += xp.square(dl * np.float32(nc))
        u = xp.sqrt(hrad * np.float32(st.fudge)) * np.float32(math.pi)
        u2 = u * u
        # sinc3 = 3 (sin u - u cos u) / u^3; its Taylor series below u = 0.5 avoids float32 cancellation
        series = 1.0 - u2 * (np.float32(1 / 10) - u2 * (np.float32(1 / 280) - u2 * np.float32(1 / 15120)))
        safe_u = xp.maximum(u, np.float32(0.5))
        closed = 3.0 * (xp.sin(safe_u) - safe_u * xp.cos(safe_u)) / (safe_u * safe_u * safe_u)
        f = xp.where(u < 0.5, series, closed).astype(xp.float32)
        f *= np.float32(nnn * _ROUND_NORM)
        return f * f
    # gauss / tophat: rad* = |dh a* + dk b* + dl c*|^2 (1/A^2) * (Na Nb Nc)^2 (norm is domain-independent)
    g = st.metric.astype(np.float32)
    rad = (dh * dh) * g[0, 0] + (dk * dk) * g[1, 1] + (dl * dl) * g[2, 2]
    rad += (dh * dk) * (2 * g[0, 1]) + (dh * dl) * (2 * g[0, 2]) + (dk * dl) * (2 * g[1, 2])
    rad *= np.float32(nnn * nnn * st.fudge)
    if st.shape == "gauss":
        f = xp.exp(rad * np.float32(-1 / 0.63)) * nnn
        return f * f
    return (rad < np.float32(0.3969)).astype(xp.float32) * np.float32(nnn * nnn)


def _lattice_bound(xa: Any, xb: Any, xc: Any, st: _Setup, xp: ModuleType) -> Any:
    """Upper bound of F_latt^2 over all points whose per-axis distance to the nearest integer is
    >= (xa, xb, xc) (float32 arrays, >= 0)."""
    na, nb, nc = st.ncells
    nnn = na * nb * nc
    if st.shape == "square":
        out = None
        for x, n in ((xa, na), (xb, nb), (xc, nc)):
            if n <= 1:
                continue
            # |sin(N pi x)/sin(pi x)|^2 <= min(N^2, 1/sin^2(pi x)), decreasing on 0 <= x <= 1/2
            sx = xp.sin(x * np.float32(math.pi))
            env = xp.minimum(np.float32(1.0) / xp.maximum(sx * sx, np.float32(1e-30)), np.float32(n * n))
            out = env if out is None else out * env
        return xp.ones(xa.shape, dtype=xp.float32) if out is None else out
    if st.shape == "round":
        hrad = xp.square(xa * np.float32(na)) + xp.square(xb * np.float32(nb)) + xp.square(xc * np.float32(nc))
        u = xp.maximum(xp.sqrt(hrad * np.float32(st.fudge)) * np.float32(math.pi), np.float32(1e-10))
        env = xp.minimum(np.float32(1.0), np.float32(3.0) * (1.0 + u) / (u * u * u))  # |sinc3(u)| bound
        return xp.square(env) * np.float32((nnn * _ROUND_NORM) ** 2)
    # |A dh|^2 >= sigma_min(A)^2 |dh|^2
    rad = (xa * xa + xb * xb + xc * xc) * np.float32(st.sigma_min_sq * nnn * nnn * st.fudge)
    if st.shape == "gauss":
        return xp.exp(rad * np.float32(-2 / 0.63)) * np.float32(nnn * nnn)
    return (rad < np.float32(0.3969)).astype(xp.float32) * np.float32(nnn * nnn)


def _geometry(px: Any, py: Any, pz: Any, st: _Setup, xp: ModuleType) -> tuple[Any, Any, Any, Any, Any]:
    """From lab positions (mm): unit diffracted direction d and Omega * P (float64)."""
    r2 = px * px
    r2 += py * py
    r2 += pz * pz
    inv_r = 1.0 / xp.sqrt(r2)
    dx = px * inv_r
    dy = py * inv_r
    dz = pz * inv_r
    det = st.detector
    # Omega = pixel^2 / R^2 * close_distance / R  (nanoBragg L2724), per (sub-)pixel position
    g = inv_r * inv_r
    g *= inv_r
    g *= det.pixel_size_mm ** 2 * det.close_distance_mm
    c = -dz  # cos 2theta = d . incident, incident = (0, 0, -1)
    pol = c * c
    pol += 1.0
    if st.kahn != 0.0:
        # Kahn: 0.5 (1 + cos^2 2theta - K cos 2psi sin^2 2theta), cos 2psi sin^2 2theta = (d.E)^2 - (d.B)^2
        de = dx * st.e_in[0] + dy * st.e_in[1] + dz * st.e_in[2]
        db = dx * st.b_in[0] + dy * st.b_in[1] + dz * st.b_in[2]
        pol -= st.kahn * (de * de - db * db)
    g *= pol
    g *= 0.5
    return dx, dy, dz, g, inv_r


def _miller(m: np.ndarray, kappa: float, dx: Any, dy: Any, dz: Any) -> tuple[Any, Any, Any]:
    """Fractional indices h = m @ (d - incident) * kappa (incident = (0,0,-1))."""
    qz = dz + 1.0
    out = []
    for row in m * kappa:
        h = dx * row[0]
        h += dy * row[1]
        h += qz * row[2]
        out.append(h)
    return out[0], out[1], out[2]


# --------------------------------------------------------------------------------------------
# pass 1: one sample per pixel + bound; pass 2: full average where the bound says it matters
# --------------------------------------------------------------------------------------------
def _single_pass_block(
    st: _Setup, j0: int, j1: int, want_bound: bool
) -> tuple[Any, Any | None]:
    """Rows [j0, j1): value at the pixel centre for the reference sample (float64), and the bound."""
    xp = st.xp
    det = st.detector
    o = np.asarray(det.origin_mm)
    f = np.asarray(det.fast_axis) * det.pixel_size_mm
    s = np.asarray(det.slow_axis) * det.pixel_size_mm
    u = xp.arange(det.n_fast, dtype=xp.float64) + 0.5
    v = xp.arange(j0, j1, dtype=xp.float64) + 0.5
    pos = [(o[c] + u * f[c])[None, :] + (v * s[c])[:, None] for c in range(3)]
    dx, dy, dz, g, inv_r = _geometry(pos[0], pos[1], pos[2], st, xp)
    hkl = _miller(st.m_ref, st.kappa_ref, dx, dy, dz)
    near = [_nearest(h, xp) for h in hkl]
    idx = _f2_index(near[0][0], near[1][0], near[2][0], st, xp)
    f2 = xp.take(st.f2pad, idx)
    lat = _lattice_sq(near[0][1], near[1][1], near[2][1], st, xp)
    value = (lat * f2).astype(xp.float64)
    value *= g
    value *= st.scale
    if not want_bound:
        return value, None
    # Spread of any sample's fractional index around the reference one, per axis i:
    #   h_psm - h_ref = kappa_s (M_m q_p - M_ref q_c) + h_ref (kappa_s / kappa_ref - 1)
    # |row_i(M_m - M_ref) q_p| <= max_m |row_i(M_m - M_ref)| |q_p|, |row_i(M_ref)(q_p - q_c)| <= |a_i| |d_p - d_c|,
    # |d_p - d_c| <= x (1.001 + x^2), x = |dp| / R (chord of the angle asin(x) subtended by the offset dp).
    os_ = st.oversample
    fs = abs(float(np.dot(det.fast_axis, det.slow_axis)))
    dp = det.pixel_size_mm * (os_ - 1) / (2 * os_) * math.sqrt(2.0 + 2.0 * fs)  # max |sub-pixel offset| (mm)
    e = dp * inv_r
    e *= 1.001 + e * e
    q = xp.sqrt(xp.maximum(2.0 + 2.0 * dz, 0.0))  # |d - incident|
    kmax = float(st.kappa.max())
    rho = float(np.max(np.abs(st.kappa / st.kappa_ref - 1.0)))
    q_e = ((q + e) * (kmax * (1.0 + 1e-6))).astype(xp.float32)
    e = (e * (kmax * (1.0 + 1e-6))).astype(xp.float32)
    rows = np.linalg.norm(st.real_space, axis=1)  # |a_i|
    rows_rot = np.linalg.norm(st.m_dom - st.m_ref[None], axis=2).max(axis=0)  # max_m |row_i(M_m - M_ref)|
    xs, unsafe, dmax = [], None, None
    for c in range(3):
        delta = e * np.float32(rows[c])
        delta += np.float32(1e-6)  # covers float32 rounding of dh and delta
        if rows_rot[c] > 0:
            delta += q_e * np.float32(rows_rot[c])
        if rho > 0:
            delta += (xp.abs(hkl[c]) * (rho * (1.0 + 1e-6))).astype(xp.float32)
        ad = xp.abs(near[c][1])
        x = ad - delta
        xs.append(xp.maximum(x, np.float32(0.0)))
        over = (ad + delta) >= np.float32(0.4999)
        unsafe = over if unsafe is None else (unsafe | over)
        dmax = delta if dmax is None else xp.maximum(dmax, delta)
    bound = _lattice_bound(xs[0], xs[1], xs[2], st, xp)
    # nearest node may change within the spread: use the 3x3x3 neighbourhood max (or global max)
    f2b = xp.where(unsafe, xp.take(st.f2max27, idx), f2)
    if float(xp.max(dmax)) >= 0.5:
        f2b = xp.where(dmax >= 0.5, np.float32(st.f2_global_max), f2b)
    # Omega * P over sub-pixels: Omega ~ R^-3, |grad P| <= 2 per radian of d
    rmin = det.close_distance_mm
    om_fac = (rmin / max(rmin - dp, 1e-9)) ** 3
    pol_abs = 3.0 * (dp / rmin) * (1.001 + (dp / rmin) ** 2)
    # max over sub-pixels of Omega * P <= Omega * om_fac * (P + pol_abs) = g * om_fac + Omega * om_fac * pol_abs
    omega = inv_r * inv_r * inv_r * (det.pixel_size_mm ** 2 * det.close_distance_mm)
    gb = g * om_fac + omega * (om_fac * pol_abs)
    b = (bound * f2b).astype(xp.float64)
    b *= gb
    b *= st.scale * 1.001  # float32 rounding margin
    return value, b.astype(xp.float32)


def _full_average(st: _Setup, flat_idx: Any) -> Any:
    """Full mean over sub-pixels, sources and domains for pixels ``flat_idx`` (float64)."""
    xp = st.xp
    det = st.detector
    nf = det.n_fast
    jv = (flat_idx // nf).astype(xp.float64)
    iu = (flat_idx % nf).astype(xp.float64)
    o = np.asarray(det.origin_mm)
    f = np.asarray(det.fast_axis) * det.pixel_size_mm
    s = np.asarray(det.slow_axis) * det.pixel_size_mm
    kap = xp.asarray(st.kappa[:, None])
    w = xp.asarray(st.weights.astype(np.float32))
    acc = xp.zeros(flat_idx.shape, dtype=xp.float64)
    os_ = st.oversample
    g_first = None
    for b in range(os_):  # slow sub-pixel index, as nanoBragg's subS
        for a in range(os_):
            u = iu + (a + 0.5) / os_
            v = jv + (b + 0.5) / os_
            pos = [u * f[c] + v * s[c] + o[c] for c in range(3)]
            dx, dy, dz, g, _ = _geometry(pos[0], pos[1], pos[2], st, xp)
            if st.first_subpixel_factors:  # nanoBragg: Omega and P once per pixel, at sub-pixel (0, 0)
                g_first = g if g_first is None else g_first
                g = g_first
            sub = xp.zeros(flat_idx.shape, dtype=xp.float32)
            for m in range(st.m_dom.shape[0]):
                base = _miller(st.m_dom[m], 1.0, dx, dy, dz)
                near = [_nearest(h[None, :] * kap, xp) for h in base]  # (S, P)
                idx = _f2_index(near[0][0], near[1][0], near[2][0], st, xp)
                val = _lattice_sq(near[0][1], near[1][1], near[2][1], st, xp)
                val *= xp.take(st.f2pad, idx)
                sub += w @ val
            acc += sub * g
    acc *= st.scale / (os_ * os_ * st.m_dom.shape[0])
    return acc


def _block_rows(st: _Setup, block_pixels: int) -> int:
    return max(1, min(st.detector.n_slow, block_pixels // st.detector.n_fast))


def _sample_chunk(st: _Setup, block_pixels: int) -> int:
    """Pixels per full-average batch: (sources x pixels) arrays stay ~block_pixels elements."""
    return max(1024, block_pixels // st.kappa.size)


def simulate_still(
    A_matrix: ArrayLike,
    detector: FlatDetector,
    structure_factors: StructureFactorTable,
    wavelengths_A: ArrayLike,
    weights: ArrayLike | None = None,
    mosaic_umats: ArrayLike | None = None,
    ncells: Sequence[float] | float = (10, 10, 10),
    shape: Shape = "square",
    fluence_photons_per_m2: float = NANOBRAGG_DEFAULT_FLUENCE_PHOTONS_PER_M2,
    oversample: int = 1,
    kahn_factor: float = 0.0,
    polarization_axis: ArrayLike = (1.0, 0.0, 0.0),
    fudge: float = 1.0,
    rel_tol: float = 2e-4,
    max_background_share: float = 0.02,
    exhaustive: bool = False,
    first_subpixel_factors: bool = False,
    xp: ModuleType | None = None,
    block_pixels: int | None = None,
    max_memory_bytes: int = 4 * 2**30,
) -> Any:
    """Expected photons per pixel, float64 array (n_slow, n_fast) on ``xp`` (NumPy by default).

    A_matrix: DIALS A = U B (columns a*, b*, c*, 1/Angstrom, lab frame). mosaic_umats: (M,3,3) lab
    rotations, domain m uses U_m A. weights: source weights (normalised here). kahn_factor: K in
    nanoBragg's polarization (0 = unpolarized); polarization_axis: E-vector direction (made normal to
    the beam). rel_tol: pixels whose bound is below rel_tol * max keep the single-sample value
    (|error| < rel_tol * max), and more are refined until those left hold at most
    max_background_share of the photons; exhaustive=True averages every pixel over every sample.
    first_subpixel_factors=True reproduces nanoBragg's evaluation of Omega and P once per pixel at
    the first sub-pixel (default False: per sub-pixel, the physically right average).
    """
    xp = np if xp is None else xp
    st = _make_setup(A_matrix, detector, structure_factors, wavelengths_A, weights, mosaic_umats, ncells,
                     shape, fluence_photons_per_m2, oversample, kahn_factor, polarization_axis, fudge, xp,
                     first_subpixel_factors)
    if not (0 < rel_tol < 1):
        raise ValueError(f"rel_tol must lie in (0, 1), got {rel_tol!r}")
    if not (0 < max_background_share <= 1):
        raise ValueError(f"max_background_share must lie in (0, 1], got {max_background_share!r}")
    n_pix = detector.n_fast * detector.n_slow
    need = n_pix * (8 + 4 + 8)  # image, bound, candidate indices
    if need > max_memory_bytes:
        raise ValueError(
            f"detector {detector.n_fast}x{detector.n_slow} pixels needs ~{need / 2**20:.0f} MiB, "
            f"more than max_memory_bytes={max_memory_bytes}")
    if block_pixels is None:
        block_pixels = 1 << 15 if xp is np else 1 << 22
    image = xp.empty((detector.n_slow, detector.n_fast), dtype=xp.float64)
    flat = image.reshape(-1)
    chunk = _sample_chunk(st, block_pixels)
    if exhaustive:
        for start in range(0, n_pix, chunk):
            idx = xp.arange(start, min(start + chunk, n_pix), dtype=xp.int64)
            flat[start:start + idx.size] = _full_average(st, idx)
        return image
    want_bound = not st.single_exact
    bound = xp.empty((detector.n_slow, detector.n_fast), dtype=xp.float32) if want_bound else None
    rows = _block_rows(st, block_pixels)
    for j0 in range(0, detector.n_slow, rows):
        j1 = min(j0 + rows, detector.n_slow)
        value, b = _single_pass_block(st, j0, j1, want_bound)
        image[j0:j1] = value
        if want_bound:
            bound[j0:j1] = b
    if not want_bound:
        return image
    _refine(st, flat, bound.reshape(-1), rel_tol, chunk, max_background_share)
    return image


def _refine(st: _Setup, flat: Any, bound: Any, rel_tol: float, chunk: int, max_background_share: float) -> None:
    """Replace single-sample values by the full average, in descending bands of the bound, until
    (1) every pixel left has bound < rel_tol * (max of the full averages so far) <= rel_tol * true max,
    and (2) the pixels left hold at most ``max_background_share`` of the image's photons (their
    single-sample values are good to a few % on average, so this caps the error of the total)."""
    xp = st.xp
    b_max = float(xp.max(bound))
    if b_max <= 0.0:
        return
    m_best = 0.0
    upper = math.inf  # every pixel with bound >= upper is done
    lower = b_max / 10.0
    while True:
        sel = (bound >= lower) if math.isinf(upper) else ((bound >= lower) & (bound < upper))
        idx = xp.flatnonzero(sel)
        for start in range(0, int(idx.size), chunk):
            part = idx[start:start + chunk]
            vals = _full_average(st, part)
            flat[part] = vals
            m_best = max(m_best, float(xp.max(vals)))
        left = (bound < lower) & (bound > 0)
        if not bool(xp.any(left)):
            return
        if lower <= rel_tol * m_best:
            total = float(xp.sum(flat))
            step = 1 << 20  # chunked masked sum: no full-frame temporary
            left_sum = sum(float(xp.sum(flat[i:i + step][left[i:i + step]])) for i in range(0, flat.size, step))
            if total <= 0 or left_sum <= max_background_share * total:
                return
            upper, lower = lower, lower / 4.0  # background share too large: go further down
        else:
            upper, lower = lower, max(lower / 10.0, rel_tol * m_best)


# --------------------------------------------------------------------------------------------
# detector point-spread function
# --------------------------------------------------------------------------------------------
PSF_TAIL = 1e-7  # share of a pixel's photons the truncated kernel may leave out (per axis)


def gauss_psf_kernel_1d(fwhm_px: float) -> np.ndarray:
    """nanoBragg's Gaussian PSF (unit volume, integrated over each pixel), one axis of it.

    A 2-D Gaussian integrated over a square pixel is the product of two such 1-D integrals, so the
    nanoBragg kernel ``integrate_gauss_over_pixel(dx, dy, fwhm, 1)`` equals ``outer(k, k)``. The kernel reaches
    out to where less than PSF_TAIL of the photons are left beyond it."""
    if not (fwhm_px > 0 and math.isfinite(fwhm_px)):
        raise ValueError(f"PSF FWHM must be > 0 px, got {fwhm_px!r}")
    gauss = NormalDist(0.0, fwhm_px / (2.0 * math.sqrt(2.0 * math.log(2.0))))
    radius = max(1, math.ceil(gauss.inv_cdf(1.0 - PSF_TAIL) - 0.5))
    return np.diff([gauss.cdf(e) for e in np.arange(-radius, radius + 2) - 0.5])


def apply_psf(image: Any, fwhm_px: float, xp: ModuleType = np) -> Any:
    """Blur an expected-photon image (slow, fast) with nanoBragg's Gaussian PSF of ``fwhm_px``.

    Applied to expected photons before counting noise, as nanoBragg does. Photons spread past the panel edge
    are lost (on a tiled detector they land in the gap); nanoBragg instead spreads its lost photons evenly
    over the image, which moves no spot. Separable: two 1-D passes, on NumPy or CuPy arrays alike."""
    k = gauss_psf_kernel_1d(fwhm_px)
    r = len(k) // 2
    image = xp.asarray(image)
    out = image.astype(xp.float64)
    for axis in (0, 1):
        n = out.shape[axis]
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        padded = xp.pad(out, pad)
        acc = xp.zeros_like(out)
        for i, w in enumerate(k):  # out[j] = sum_i k[i] * in[j + r - i]: photons at j spread to j + d
            sl = [slice(None), slice(None)]
            sl[axis] = slice(2 * r - i, 2 * r - i + n)
            acc += float(w) * padded[tuple(sl)]
        out = acc
    return out.astype(image.dtype)


# --------------------------------------------------------------------------------------------
# truth reflection table
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TruthTable:
    """Reflections of one simulated frame (host NumPy arrays, one row per reflection).

    x_px / y_px: DIALS continuous (fast, slow) pixel coordinates of the predicted spot centre;
    photons: expected photons summed over the spot's pixels (pixels whose pixel-centre reference
    sample is nearest to this hkl); peak_fraction: max over sources/domains of F_latt^2 at the
    best point of that Ewald sphere / F_latt^2(0).
    """

    hkl: np.ndarray
    d_A: np.ndarray
    x_px: np.ndarray
    y_px: np.ndarray
    photons: np.ndarray
    peak_fraction: np.ndarray

    def __len__(self) -> int:
        return int(self.hkl.shape[0])


def _lattice_sq_np(dhkl: np.ndarray, st: _Setup) -> np.ndarray:
    """Host float64 F_latt^2 for offsets dhkl (...,3) (|offsets| <= 1/2)."""
    na, nb, nc = st.ncells
    d = dhkl
    if st.shape == "square":
        out = np.ones(d.shape[:-1])
        for c, n in enumerate((na, nb, nc)):
            if n > 1:
                x = np.pi * d[..., c]
                with np.errstate(invalid="ignore", divide="ignore"):
                    r = np.where(x == 0, n, np.sin(n * x) / np.sin(x))
                out *= r * r
        return out
    nnn = na * nb * nc
    if st.shape == "round":
        u = np.pi * np.sqrt(st.fudge * ((d[..., 0] * na) ** 2 + (d[..., 1] * nb) ** 2 + (d[..., 2] * nc) ** 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            s3 = np.where(u < 1e-4, 1.0 - u * u / 10, 3 * (np.sin(u) - u * np.cos(u)) / u ** 3)
        return (nnn * _ROUND_NORM * s3) ** 2
    rad = np.einsum("...i,ij,...j->...", d, st.metric, d) * nnn * nnn * st.fudge
    if st.shape == "gauss":
        return (nnn * np.exp(-rad / 0.63)) ** 2
    return np.where(rad < 0.3969, nnn * nnn, 0.0)


def _profile_metric(st: _Setup, m: int) -> np.ndarray:
    """Quadratic form P (lab, Angstrom^2) of -ln(F_latt^2/F_latt^2(0)) near a node (Gaussian approx.)."""
    na, nb, nc = st.ncells
    rs = st.m_dom[m]  # rows: real-space axes of domain m
    if st.shape == "square":
        c = [max((n * n - 1.0) * math.pi ** 2 / 3.0, 1e-3) for n in (na, nb, nc)]
    elif st.shape == "round":
        c = [math.pi ** 2 * st.fudge * n * n / 5.0 for n in (na, nb, nc)]
    else:  # gauss / tophat: isotropic in the lab frame
        return np.eye(3)
    return sum(ci * np.outer(r, r) for ci, r in zip(c, rs))


def _candidate_hkl(st: _Setup) -> np.ndarray:
    """hkl within the detector's resolution whose reciprocal cell can touch any Ewald sphere used."""
    det = st.detector
    corners = np.array([[0, 0], [det.n_fast, 0], [0, det.n_slow], [det.n_fast, det.n_slow]], dtype=float)
    pos = (np.asarray(det.origin_mm)[None] + corners[:, :1] * det.pixel_size_mm * np.asarray(det.fast_axis)
           + corners[:, 1:] * det.pixel_size_mm * np.asarray(det.slow_axis))
    d = pos / np.linalg.norm(pos, axis=1, keepdims=True)
    # on a flat rectangle in front of the sample the largest 2theta is at a corner (the cone of
    # directions within a given angle of the beam cuts the plane in a convex set)
    cos2t = np.clip(d @ INCIDENT_UNIT, -1, 1)
    smax = np.sqrt(max(2.0 - 2.0 * float(cos2t.min()), 0.0)) if cos2t.min() > 0 else 2.0
    kmin, kmax = float(st.kappa.min()), float(st.kappa.max())
    qmax = (smax + 0.05) * kmax * (1 + st.eps_rot) + 1e-6
    cell_reach = 0.5 * float(np.linalg.norm(st.A, axis=0).sum())  # node to the far corner of its cell
    lim = np.ceil(np.linalg.norm(st.real_space, axis=1) * qmax).astype(int)
    kk, ll = np.meshgrid(np.arange(-lim[1], lim[1] + 1), np.arange(-lim[2], lim[2] + 1), indexing="ij")
    kk, ll = kk.ravel(), ll.ravel()
    out = []
    for h in range(-lim[0], lim[0] + 1):  # one h-slice at a time keeps memory small for big cells
        hkl = np.stack([np.full(kk.size, h), kk, ll], axis=1)
        r = hkl @ st.A.T
        q = np.linalg.norm(r, axis=1)
        # distance of the node to the nearest sphere |r + kappa s0_hat| = kappa, kappa in [kmin, kmax]
        # (|r + kappa s0_hat| - kappa decreases with kappa, zero at the node's Bragg kappa)
        rs = r @ INCIDENT_UNIT
        dist = np.minimum(np.abs(np.linalg.norm(r + kmin * INCIDENT_UNIT, axis=1) - kmin),
                          np.abs(np.linalg.norm(r + kmax * INCIDENT_UNIT, axis=1) - kmax))
        with np.errstate(divide="ignore", invalid="ignore"):
            k_bragg = np.where(rs < 0, -q * q / (2 * rs), np.inf)
        dist = np.where((k_bragg >= kmin) & (k_bragg <= kmax), 0.0, dist)
        keep = (q > 0) & (q <= qmax) & (dist <= cell_reach + st.eps_rot * q + 1e-9)
        out.append(hkl[keep])
    return np.concatenate(out) if out else np.zeros((0, 3), dtype=np.int64)


def _reference_node_ids(st: _Setup, hkl_lo: np.ndarray, dims: np.ndarray, block_pixels: int) -> np.ndarray:
    """Per pixel (flat), linear id of the nearest node of the pixel-centre reference sample within the
    box [hkl_lo, hkl_lo + dims), -1 outside (host int64)."""
    xp = st.xp
    det = st.detector
    out = np.empty(det.n_fast * det.n_slow, dtype=np.int64)
    o = np.asarray(det.origin_mm)
    f = np.asarray(det.fast_axis) * det.pixel_size_mm
    s = np.asarray(det.slow_axis) * det.pixel_size_mm
    rows = _block_rows(st, block_pixels)
    u = xp.arange(det.n_fast, dtype=xp.float64) + 0.5
    for j0 in range(0, det.n_slow, rows):
        j1 = min(j0 + rows, det.n_slow)
        v = xp.arange(j0, j1, dtype=xp.float64) + 0.5
        pos = [(o[c] + u * f[c])[None, :] + (v * s[c])[:, None] for c in range(3)]
        dx, dy, dz, _, _ = _geometry(pos[0], pos[1], pos[2], st, xp)
        hkl = _miller(st.m_ref, st.kappa_ref, dx, dy, dz)
        ids = None
        inside = None
        for c in range(3):
            rel = (xp.ceil(hkl[c] - 0.5) - float(hkl_lo[c])).astype(xp.int64)
            ok = (rel >= 0) & (rel < int(dims[c]))
            inside = ok if inside is None else inside & ok
            ids = rel if ids is None else ids * int(dims[c]) + rel
        out[j0 * det.n_fast:j1 * det.n_fast] = to_numpy(xp.where(inside, ids, -1)).ravel()
    return out


def truth_reflections(
    A_matrix: ArrayLike,
    detector: FlatDetector,
    structure_factors: StructureFactorTable,
    wavelengths_A: ArrayLike,
    weights: ArrayLike | None = None,
    mosaic_umats: ArrayLike | None = None,
    ncells: Sequence[float] | float = (10, 10, 10),
    shape: Shape = "square",
    fluence_photons_per_m2: float = NANOBRAGG_DEFAULT_FLUENCE_PHOTONS_PER_M2,
    oversample: int = 1,
    kahn_factor: float = 0.0,
    polarization_axis: ArrayLike = (1.0, 0.0, 0.0),
    fudge: float = 1.0,
    image: Any | None = None,
    min_peak_fraction: float = 1e-3,
    min_photons: float = 1.0,
    xp: ModuleType | None = None,
    block_pixels: int | None = None,
    **simulate_kwargs: Any,
) -> TruthTable:
    """Truth table of a frame: reflections predicted on the detector with peak_fraction >=
    min_peak_fraction or at least min_photons expected photons in their spot. ``image``: the frame from simulate_still with the same arguments (simulated
    here when None).

    Position: for each source s and domain m, the point of that Ewald sphere where the lattice
    transform of the node peaks (the node moved along the sphere normal, through the profile's
    quadratic metric; for isotropic profiles the ray s0 + r), projected onto the detector; the spot
    centre is the mean of those points weighted by w_s * F_latt^2 there (the spot's centroid).
    """
    xp = np if xp is None else xp
    st = _make_setup(A_matrix, detector, structure_factors, wavelengths_A, weights, mosaic_umats, ncells,
                     shape, fluence_photons_per_m2, oversample, kahn_factor, polarization_axis, fudge, xp)
    if block_pixels is None:
        block_pixels = 1 << 15 if xp is np else 1 << 22
    if image is None:
        image = simulate_still(A_matrix, detector, structure_factors, wavelengths_A, weights, mosaic_umats,
                               ncells, shape, fluence_photons_per_m2, oversample, kahn_factor,
                               polarization_axis, fudge, xp=xp, block_pixels=block_pixels, **simulate_kwargs)
    img = to_numpy(image).reshape(-1)
    if img.size != detector.n_fast * detector.n_slow:
        raise ValueError(f"image has {img.size} pixels, detector has {detector.n_fast * detector.n_slow}")

    hkl = _candidate_hkl(st)
    peak0 = _lattice_sq_np(np.zeros((1, 3)), st)[0]
    sum_w = np.zeros(len(hkl))
    sum_x = np.zeros(len(hkl))
    sum_y = np.zeros(len(hkl))
    best = np.zeros(len(hkl))
    s0_hat = INCIDENT_UNIT
    for m in range(st.m_dom.shape[0]):
        r = hkl @ (st.umats[m] @ st.A).T  # lab reciprocal vectors r = U_m A hkl
        pinv = np.linalg.inv(_profile_metric(st, m))
        for s, kap in enumerate(st.kappa):
            c = r + kap * s0_hat  # s0 + r: from the sphere centre (-s0) to the node
            cn = np.linalg.norm(c, axis=1)
            n = c / cn[:, None]
            eps = kap - cn  # move along n by eps to reach the sphere
            pn = n @ pinv  # P^-1 n (P symmetric)
            t = (eps / np.einsum("ij,ij->i", n, pn))[:, None] * pn  # argmin t^T P t with n.t = eps
            s1 = c + t
            s1 /= np.linalg.norm(s1, axis=1, keepdims=True)
            dfrac = (s1 * kap - kap * s0_hat - r) @ st.m_dom[m].T  # (h,k,l) offset at that point
            frac = _lattice_sq_np(dfrac, st) / peak0
            x, y, fwd = detector.ray_to_px(s1)
            wgt = np.where(fwd, st.weights[s] * frac, 0.0)
            sum_w += wgt
            sum_x += wgt * np.nan_to_num(x)
            sum_y += wgt * np.nan_to_num(y)
            best = np.maximum(best, np.where(fwd, frac, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        x_px = sum_x / sum_w
        y_px = sum_y / sum_w
    on_detector = ((sum_w > 0) & (x_px >= 0) & (x_px < detector.n_fast) & (y_px >= 0) & (y_px < detector.n_slow))
    hkl, x_px, y_px, best = hkl[on_detector], x_px[on_detector], y_px[on_detector], best[on_detector]
    photons = np.zeros(len(hkl))
    if len(hkl):
        lo = hkl.min(axis=0)
        dims = hkl.max(axis=0) - lo + 1
        ids = _reference_node_ids(st, lo, dims, block_pixels)
        rel = hkl - lo
        table_ids = (rel[:, 0] * dims[1] + rel[:, 1]) * dims[2] + rel[:, 2]
        order = np.argsort(table_ids)
        sorted_ids = table_ids[order]
        pos = np.searchsorted(sorted_ids, ids)
        pos_c = np.minimum(pos, len(sorted_ids) - 1)
        hit = (ids >= 0) & (sorted_ids[pos_c] == ids)
        sums = np.bincount(pos_c[hit], weights=img[hit], minlength=len(hkl))
        photons[order] = sums
    # A strong reflection far from the Ewald sphere (tiny peak fraction) can still put photons on the detector:
    # it belongs in the truth when its own peak -- r_e^2 fluence F^2 F_latt^2(best point) Omega, not the tails of
    # bright neighbours that its cell of pixels collects -- reaches min_photons.
    own_peak = np.zeros(len(hkl))
    if len(hkl):
        f2 = structure_factors.lookup(hkl) ** 2
        ray = (np.asarray(detector.origin_mm)[None] + x_px[:, None] * detector.pixel_size_mm * np.asarray(detector.fast_axis)
               + y_px[:, None] * detector.pixel_size_mm * np.asarray(detector.slow_axis))
        r_mm = np.linalg.norm(ray, axis=1)
        omega = detector.pixel_size_mm**2 * detector.close_distance_mm / r_mm**3
        own_peak = st.scale * f2 * peak0 * best * omega
    keep = (best >= min_peak_fraction) | (own_peak >= min_photons)
    hkl, x_px, y_px, best, photons = hkl[keep], x_px[keep], y_px[keep], best[keep], photons[keep]
    d_A = 1.0 / np.linalg.norm(hkl @ st.A.T, axis=1)
    return TruthTable(hkl=hkl.astype(np.int64), d_A=d_A, x_px=x_px, y_px=y_px, photons=photons,
                      peak_fraction=best)
