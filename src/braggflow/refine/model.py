"""The simulator's physics in PyTorch, differentiable in every continuous parameter of a still on a panel.

Expected photons at chosen pixels (the shoeboxes a refinement looks at), in the conventions of
``braggflow.simulator`` (its kernels are the reference; a test holds the two to float32 agreement on the nanoBragg
cases and on simulated frames): the mean over oversample^2 sub-pixels, spectrum samples and mosaic domains of

    r_e^2 fluence F(h0)^2 F_latt^2(h - h0) Omega P,    h = A^-1 U_m^T (d - incident) / lambda_s,

h0 the nearest node (nanoBragg's ceil(h - 1/2)), F from the same padded table (its default_F border off the table),
the four lattice transforms, Omega = pixel^2 close_distance / R^3 and Kahn's polarization, per sub-pixel (or once
per pixel at the first sub-pixel, ``first_subpixel_factors``). F is looked up at the nearest node, so it is
piecewise constant: gradients flow through the lattice transform, Omega, P and the scale; where the still
interpolates F (nanoBragg's tricubic interpolation, ``Numerics.interpolate``, on for N <= 2) F is smooth in h and
the gradient flows through it too.

Differentiable: the A matrix, the domain rotations, Ncells (continuous; the square transform sin(N pi x)/sin(pi x)
is smooth in N), the sources' 1/lambda and weights, the fluence scale, and the panel's origin and axes.
Float64 by default, on any device: the same code on CPU and CUDA. Imports torch; the simulator never does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..detector import Panel
from ..simulator import R_E_SQ_M2, Still, StructureFactorTable, polarization_basis

ROUND_NORM = 0.723601254558268  # nanoBragg's cube/sphere volume correction for ROUND (simulator/kernels.py)
_SMALL_X = 1e-6  # below this |pi x| the square transform's ratio is replaced by its Taylor series


@dataclass(frozen=True)
class F2Table:
    """|F|^2 on the simulator's padded hkl box (one default_F layer around the table), flat, on a device."""

    values: torch.Tensor  # (nh+2)*(nk+2)*(nl+2)
    offset: tuple[int, int, int]  # index = clip(h0 + offset, 0, hi) per axis
    hi: tuple[int, int, int]
    strides: tuple[int, int]
    amplitudes: torch.Tensor | None = None  # nh*nk*nl, for the tricubic interpolation
    hkl_min: tuple[int, int, int] = (0, 0, 0)
    shape: tuple[int, int, int] = (0, 0, 0)

    @classmethod
    def from_table(cls, sf: StructureFactorTable, dtype=torch.float64, device=None) -> "F2Table":
        d2 = float(sf.default_F) ** 2
        pad = np.pad(np.square(sf.amplitudes), 1, constant_values=d2)
        nh, nk, nl = pad.shape
        return cls(torch.as_tensor(pad.ravel(), dtype=dtype, device=device),
                   tuple(1 - int(m) for m in sf.hkl_min), (nh - 1, nk - 1, nl - 1), (nk * nl, nl),
                   torch.as_tensor(np.array(sf.amplitudes.ravel()), dtype=dtype, device=device), tuple(sf.hkl_min),
                   tuple(sf.amplitudes.shape))

    def interpolated(self, h: torch.Tensor, k: torch.Tensor, l: torch.Tensor, h0: torch.Tensor, k0: torch.Tensor,
                     l0: torch.Tensor) -> torch.Tensor:
        """F^2 at fractional (h, k, l): nanoBragg's tricubic interpolation of F (the simulator's
        ``sf_table.interpolated_f``) where it is safe (h_min + 2 <= h <= h_max - 2 on every axis), else the nearest
        node's (h0, k0, l0); differentiable in h, k, l."""
        from ..simulator.sf_table import lagrange4

        safe = None
        fl, base = [], []
        for v, lo, n in zip((h, k, l), self.hkl_min, self.shape):
            inside = (v >= lo + 2.0) & (v <= lo + n - 3.0)
            safe = inside if safe is None else safe & inside
            f = torch.floor(v.detach())
            fl.append(f)
            base.append(torch.clamp(f - 1.0 - lo, 0.0, max(n - 4.0, 0.0)).to(torch.int64))
        w = [lagrange4(v - f) for v, f in zip((h, k, l), fl)]
        nh, nk, nl = self.shape
        out = torch.zeros_like(h)
        for i in range(min(nh, 4)):
            for j in range(min(nk, 4)):
                row = ((base[0] + i) * nk + (base[1] + j)) * nl + base[2]
                for m in range(min(nl, 4)):
                    out = out + w[0][i] * w[1][j] * w[2][m] * self.amplitudes[(row + m).reshape(-1)].reshape(h.shape)
        return torch.where(safe, out * out, self.lookup(h0, k0, l0))

    def lookup(self, h0: torch.Tensor, k0: torch.Tensor, l0: torch.Tensor) -> torch.Tensor:
        """F^2 at integer-valued nodes (float tensors of any shape); nodes off the table get default_F^2."""
        idx = [torch.clamp(v.to(torch.int64) + o, 0, m) for v, o, m in zip((h0, k0, l0), self.offset, self.hi)]
        return self.values[(idx[0] * self.strides[0] + idx[1] * self.strides[1] + idx[2]).reshape(-1)].reshape(h0.shape)


@dataclass(frozen=True)
class TorchStill:
    """A still on one panel as tensors (what ``expected_photons`` reads). Build it with ``torch_still`` and swap
    fields with ``dataclasses.replace`` to evaluate the model at other parameters."""

    A: torch.Tensor  # (3, 3) DIALS A = U B, columns a*, b*, c* (1/Angstrom)
    umats: torch.Tensor  # (M, 3, 3) domain rotations (lab)
    ncells: torch.Tensor  # (3,) Na, Nb, Nc
    kappa: torch.Tensor  # (S,) 1/lambda (1/Angstrom)
    weights: torch.Tensor  # (S,) sum 1
    scale: torch.Tensor  # () r_e^2 * fluence (m^2 * photons / m^2)
    # the panel: (3,) each, or (P, 3) per pixel of ``expected_photons`` (the pixels' own panels of a multi-panel
    # detector; one pixel size and sensor for all)
    origin_mm: torch.Tensor  # outer corner of pixel (0, 0)
    fast_axis: torch.Tensor  # unit
    slow_axis: torch.Tensor  # unit
    pixel_mm: float
    shape: str
    fudge: float
    oversample: int
    first_subpixel_factors: bool
    kahn: float
    interpolate: bool
    incident: torch.Tensor  # (S, 3) each source's incident unit vector (beam divergence)
    inc_pol: torch.Tensor  # (3,) the direction polarization is evaluated with (the simulator's _Setup.inc_pol)
    thickness_mm: float  # the sensor (0: thin); Numerics.sensor_layers layers, as the simulator takes them
    mu_per_mm: float
    layers: int
    layer_mean_depth: bool
    e_in: torch.Tensor  # (3,) polarization basis (E, B)
    b_in: torch.Tensor


def _mean_direction(p) -> np.ndarray:
    d = p.weights @ p.incident()
    return d / np.linalg.norm(d)


def torch_still(still: Still, panel: Panel, dtype=torch.float64, device=None) -> TorchStill:
    """The tensors of ``still`` on ``panel`` (the simulator's objects), as the simulator reads them."""
    if panel.pixel_size_slow_mm is not None:
        raise ValueError(f"the model needs square pixels, got {panel.pixel_mm} mm")
    c, p, n = still.crystal, still.pulse, still.numerics
    e_in, b_in = polarization_basis(p.polarization_axis)

    def t(x: Any) -> torch.Tensor:
        return torch.as_tensor(np.array(x, dtype=np.float64), dtype=dtype, device=device)  # a writable copy

    return TorchStill(A=t(c.A_matrix), umats=t(c.mosaic_umats), ncells=t(c.ncells), kappa=t(1.0 / p.wavelengths_A),
                      weights=t(p.weights), scale=t(R_E_SQ_M2 * p.fluence_photons_per_m2), origin_mm=t(panel.origin_mm),
                      fast_axis=t(panel.fast_axis), slow_axis=t(panel.slow_axis), pixel_mm=float(panel.pixel_size_mm),
                      shape=c.shape, fudge=float(n.fudge), oversample=int(n.oversample),
                      first_subpixel_factors=bool(n.first_subpixel_factors), kahn=float(p.kahn_factor),
                      interpolate=n.interpolates(c.ncells), incident=t(p.incident()),
                      inc_pol=t(p.incident()[0] if n.first_subpixel_factors else _mean_direction(p)),
                      thickness_mm=float(panel.thickness_mm),
                      mu_per_mm=float(panel.mu_per_mm), layers=n.sensor_layers if panel.thickness_mm > 0 else 0,
                      layer_mean_depth=n.layer_depth == "mean",
                      e_in=t(e_in), b_in=t(b_in))


def lattice_sq(dh: torch.Tensor, dk: torch.Tensor, dl: torch.Tensor, ts: TorchStill) -> torch.Tensor:
    """F_latt^2 for offsets from the nearest node (|offsets| <= 1/2), nanoBragg's four shapes, differentiable in
    the offsets and in Ncells (square: an axis with N <= 1 contributes 1, as in nanoBragg)."""
    na, nb, nc = ts.ncells[0], ts.ncells[1], ts.ncells[2]
    if ts.shape == "square":
        out = torch.ones_like(dh)
        for d, n in ((dh, na), (dk, nb), (dl, nc)):
            if float(n.detach()) <= 1.0:  # nanoBragg skips the axis (its transform is 1 there)
                continue
            x = math.pi * d
            small = x.abs() < _SMALL_X
            xs = torch.where(small, torch.full_like(x, 0.5), x)  # a safe argument where the series is used
            ratio = torch.sin(n * xs) / torch.sin(xs)
            series = n * (1.0 - (n * n - 1.0) * x * x / 6.0)  # sin(N x)/sin(x) near 0
            r = torch.where(small, series, ratio)
            out = out * r * r
        return out
    nnn = na * nb * nc
    if ts.shape == "round":
        u2 = (math.pi ** 2 * ts.fudge) * ((dh * na) ** 2 + (dk * nb) ** 2 + (dl * nc) ** 2)
        small = u2 < 0.25  # u < 0.5: the simulator's series (no sqrt, so the gradient at the node is finite)
        series = 1.0 - u2 * (1 / 10 - u2 * (1 / 280 - u2 / 15120))
        u = torch.sqrt(torch.where(small, torch.ones_like(u2), u2))
        closed = 3.0 * (torch.sin(u) - u * torch.cos(u)) / (u * u * u)
        f = torch.where(small, series, closed) * (nnn * ROUND_NORM)
        return f * f
    g = ts.A.T @ ts.A  # metric of the reciprocal cell: |dh a* + dk b* + dl c*|^2
    rad = (dh * dh * g[0, 0] + dk * dk * g[1, 1] + dl * dl * g[2, 2]
           + 2 * (dh * dk * g[0, 1] + dh * dl * g[0, 2] + dk * dl * g[1, 2])) * (nnn * nnn * ts.fudge)
    if ts.shape == "gauss":
        f = torch.exp(-rad / 0.63) * nnn
        return f * f
    if ts.shape == "tophat":
        return (rad < 0.3969).to(dh.dtype) * (nnn * nnn)
    raise ValueError(f"unknown crystal shape {ts.shape!r}")


def _geometry(pos: torch.Tensor, ts: TorchStill, close: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit diffracted directions d (P, 3) and Omega * P (P,) of lab positions (P, 3) mm; ``close``: the distance
    of the plane they lie in (default the panel's front face)."""
    r = torch.linalg.vector_norm(pos, dim=-1)
    d = pos / r[:, None]
    if close is None:
        close = torch.abs((ts.origin_mm * _normal(ts)).sum(-1))
    omega = ts.pixel_mm ** 2 * close / r ** 3
    c = d @ ts.inc_pol  # cos 2theta (one incident direction for all sources, as the simulator)
    pol = 1.0 + c * c
    if ts.kahn != 0.0:
        de, db = d @ ts.e_in, d @ ts.b_in
        pol = pol - ts.kahn * (de * de - db * db)
    return d, 0.5 * omega * pol


def _normal(ts: TorchStill) -> torch.Tensor:
    normal = torch.linalg.cross(ts.fast_axis, ts.slow_axis, dim=-1)
    return normal / torch.linalg.vector_norm(normal, dim=-1, keepdim=True)


def _layers(pos: torch.Tensor, ts: TorchStill):
    """The simulator's sensor layers (``simulator.kernels._sensor_layers``) below front-face positions (P, 3):
    per layer (positions, capture fraction or None, plane distance or None)."""
    if not ts.layers:
        yield pos, None, None
        return
    n = _normal(ts)
    n = n * torch.sign((ts.origin_mm * n).sum(-1, keepdim=True))  # away from the sample
    close0 = (ts.origin_mm * n).sum(-1)
    cos = (pos * n).sum(-1) / torch.linalg.vector_norm(pos, dim=-1)
    dt = ts.thickness_mm / ts.layers
    x = (ts.mu_per_mm * dt) / cos
    frac = None
    if ts.layer_mean_depth:
        small = x < 1e-4
        xs = torch.where(small, torch.ones_like(x), x)
        frac = torch.where(small, 0.5 - x / 12.0, 1.0 / xs - 1.0 / torch.expm1(xs))
    for i in range(ts.layers):
        capture = torch.exp(-i * x) * (-torch.expm1(-x))
        z = dt * (i + frac) if frac is not None else torch.full_like(x, dt * i)
        yield pos + z[:, None] * n, capture, (close0 + z if frac is not None else None)


def expected_photons(ts: TorchStill, f2: F2Table, fast_px: torch.Tensor, slow_px: torch.Tensor) -> torch.Tensor:
    """Expected photons (P,) at the pixels (fast_px, slow_px) (integer tensors, (P,)): the simulator's full
    average, differentiable in ``ts``'s tensors."""
    dtype = ts.A.dtype
    iu, jv = fast_px.to(dtype), slow_px.to(dtype)
    os_ = ts.oversample
    real = torch.linalg.inv(ts.A)  # rows a, b, c
    m_dom = real[None] @ ts.umats.transpose(1, 2)  # (M, 3, 3): h = m_dom[m] @ (d - incident) * kappa
    kap = ts.kappa[:, None]  # (S, 1)
    acc = torch.zeros_like(iu)
    first: dict = {}
    for b in range(os_):  # slow sub-pixel index, as nanoBragg's subS
        for a in range(os_):
            u = iu + (a + 0.5) / os_
            v = jv + (b + 0.5) / os_
            front = (ts.origin_mm + (u * ts.pixel_mm)[:, None] * ts.fast_axis
                     + (v * ts.pixel_mm)[:, None] * ts.slow_axis)
            for layer, (pos, capture, close) in enumerate(_layers(front, ts)):
                d, g = _geometry(pos, ts, close)
                if ts.first_subpixel_factors:
                    g_first = first.setdefault("g", g)
                    g = g_first if capture is None else g_first * first.setdefault(layer, capture)
                elif capture is not None:
                    g = g * capture
                sub = torch.zeros_like(iu)
                for m in range(m_dom.shape[0]):
                    # h = M_m (d - i_s) kappa_s, each source its own incident direction
                    h = (d @ m_dom[m].T)[None] * kap[..., None] - ((ts.incident @ m_dom[m].T) * kap)[:, None, :]
                    with torch.no_grad():
                        h0 = torch.ceil(h - 0.5)
                    dh = h - h0
                    if ts.interpolate:
                        fsq = f2.interpolated(h[..., 0], h[..., 1], h[..., 2], h0[..., 0], h0[..., 1], h0[..., 2])
                    else:
                        fsq = f2.lookup(h0[..., 0], h0[..., 1], h0[..., 2])
                    val = lattice_sq(dh[..., 0], dh[..., 1], dh[..., 2], ts) * fsq
                    sub = sub + ts.weights @ val
                acc = acc + sub * g
    return acc * (ts.scale / (os_ * os_ * m_dom.shape[0]))

