"""What the kernels read: a still on a detector with its structure factors, resolved once into derived constants
(reciprocal and real-space matrices per domain, 1/lambda per source, the spreads the screening bound needs, the F^2
tables on the array module). Shared by the image and the truth table."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from ..detector import Panel
from .sf_table import StructureFactorTable, _f2_tables
from .still import R_E_SQ_M2, Still, polarization_basis


def _rotation_distance(rot: np.ndarray) -> float:
    """Spectral norm ||R - I|| (= 2 sin(angle/2) for a rotation)."""
    return float(np.linalg.norm(rot - np.eye(3), ord=2))


@dataclass
class _Setup:
    """Validated inputs and derived constants (host NumPy plus device copies)."""

    xp: ModuleType
    detector: Panel
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
    interpolate: bool  # F by tricubic interpolation between nodes (nanoBragg for N <= 2)
    layers: int  # 0: thin sensor; else the layers of a thick one (Panel.thickness_mm, mu_per_mm)
    layer_mean_depth: bool  # a layer's sample at its absorbed photons' mean depth (else its front face)
    n_out: np.ndarray  # the panel's unit normal away from the sample
    incident: np.ndarray  # (S, 3) each source's incident unit vector
    inc_ref: np.ndarray  # (3,) the reference sample's: the sources' weighted mean direction
    inc_pol: np.ndarray  # (3,) the one polarization is evaluated with (nanoBragg's caching: the first source's)
    divergent: bool
    dinc: float  # max |incident_s - inc_ref|
    sf: StructureFactorTable = field(repr=False)
    f2pad: Any = field(repr=False)  # device (nh+2)*(nk+2)*(nl+2) float32, border = default_F^2
    f2max27: Any = field(repr=False)
    f2_global_max: float = 0.0
    f_off: tuple[float, float, float] = (0.0, 0.0, 0.0)
    f_hi: tuple[float, float, float] = (0.0, 0.0, 0.0)
    f_stride: tuple[float, float] = (0.0, 0.0)


def _make_setup(still: Still, detector: Panel, structure_factors: StructureFactorTable,
                xp: ModuleType) -> _Setup:
    """Constants of ``still`` on ``detector`` with ``structure_factors``, device arrays on ``xp``."""
    if not isinstance(still, Still):
        raise ValueError(f"still must be a Still, got {type(still).__name__}")
    if not isinstance(detector, Panel):
        raise ValueError("detector must be a Panel")
    if detector.pixel_size_slow_mm is not None:
        raise ValueError(f"the simulator needs square pixels, got {detector.pixel_mm} mm")
    crystal, pulse, numerics = still.crystal, still.pulse, still.numerics
    A = crystal.A_matrix
    real_space = np.linalg.inv(A)
    umats = crystal.mosaic_umats
    lam = pulse.wavelengths_A
    w = pulse.weights
    e_in, b_in = polarization_basis(pulse.polarization_axis)

    kappa = 1.0 / lam
    kappa_ref = float(np.dot(w, kappa))
    incident = pulse.incident()
    inc_ref = w @ incident
    inc_ref = inc_ref / np.linalg.norm(inc_ref)
    m_dom = np.einsum("ij,mkj->mik", real_space, umats)  # A^-1 U_m^T
    u_ref = umats[0]
    eps_rot = max(_rotation_distance(u @ u_ref.T) for u in umats)
    dkappa = float(np.max(np.abs(kappa - kappa_ref)))
    # one sample per pixel is the whole average (a thick sensor's one layer is that sample too)
    single_exact = (numerics.oversample == 1 and lam.size == 1 and umats.shape[0] == 1
                    and (detector.thickness_mm == 0 or numerics.sensor_layers == 1))

    sf = structure_factors
    f2pad, f2max27, f2_global_max = _f2_tables(sf, xp)
    nh, nk, nl = (n + 2 for n in sf.amplitudes.shape)
    f_off = tuple(float(1 - m) for m in sf.hkl_min)

    return _Setup(
        xp=xp, detector=detector, A=A, real_space=real_space, umats=umats, kappa=kappa, weights=w,
        kappa_ref=kappa_ref, m_ref=m_dom[0], m_dom=m_dom, ncells=crystal.ncells, shape=crystal.shape,
        fudge=numerics.fudge, oversample=numerics.oversample, scale=R_E_SQ_M2 * pulse.fluence_photons_per_m2,
        kahn=pulse.kahn_factor, e_in=e_in, b_in=b_in,
        sigma_min_sq=float(np.linalg.svd(A, compute_uv=False).min() ** 2),
        metric=A.T @ A, eps_rot=eps_rot, dkappa=dkappa, single_exact=single_exact,
        first_subpixel_factors=numerics.first_subpixel_factors,
        interpolate=numerics.interpolates(crystal.ncells),
        layers=numerics.sensor_layers if detector.thickness_mm > 0 else 0,
        layer_mean_depth=numerics.layer_depth == "mean",
        n_out=detector.outward_normal,
        incident=incident, inc_ref=inc_ref,
        inc_pol=incident[0] if numerics.first_subpixel_factors else inc_ref,
        divergent=pulse.divergent, dinc=float(np.max(np.linalg.norm(incident - inc_ref, axis=1))),
        sf=sf,
        f2pad=f2pad,
        f2max27=f2max27,
        f2_global_max=f2_global_max,
        f_off=f_off,  # type: ignore[arg-type]
        f_hi=(float(nh - 1), float(nk - 1), float(nl - 1)),
        f_stride=(float(nk * nl), float(nl)),
    )
