"""Elementwise kernels on xp arrays of any shape (nearest node, F^2 index, lattice transform and its envelope, pixel
geometry, fractional Miller indices), and the two passes built from them: one sample per pixel with its rigorous
upper bound (pass 1), and the full average over sub-pixels, sources and domains (pass 2)."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from .derived import _Setup
from .sf_table import interpolated_f, interpolation_safe

_TINY_ANGLE = np.float32(1e-30)  # sin(N x)/sin(x) -> N as x -> 0: evaluate at x >= 1e-30, no branch
_ROUND_NORM = 0.723601254558268  # nanoBragg's cube/sphere volume correction for ROUND


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


def _f2_at(h: Any, k: Any, l: Any, near: list, idx: Any, st: _Setup, xp: ModuleType) -> Any:
    """F^2 (float32) of samples at fractional (h, k, l) with nearest nodes ``near`` and their F^2 index ``idx``:
    the nearest node's, or nanoBragg's tricubic interpolation where the still asks for it and it is safe."""
    f2 = xp.take(st.f2pad, idx)
    if not st.interpolate:
        return f2
    f = interpolated_f(h, k, l, st.sf, xp)
    return xp.where(interpolation_safe(h, k, l, st.sf, xp), (f * f).astype(xp.float32), f2)


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


def _geometry(px: Any, py: Any, pz: Any, st: _Setup, xp: ModuleType, close: Any = None
              ) -> tuple[Any, Any, Any, Any, Any]:
    """From lab positions (mm): unit diffracted direction d and Omega * P (float64). ``close``: the distance of
    the plane the positions lie in (default the panel's front face)."""
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
    if close is None:
        g *= det.pixel_size_mm ** 2 * det.close_distance_mm
    else:
        g *= close * det.pixel_size_mm ** 2
    if st.divergent:  # cos 2theta against one incident direction for all sources (see _Setup.inc_pol)
        i = st.inc_pol
        c = dx * i[0] + dy * i[1] + dz * i[2]
    else:
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


def _depth_in_layer(x: Any, xp: ModuleType) -> Any:
    """Mean depth, in units of the layer's thickness, of photons absorbed in a layer whose optical depth along the
    normal is x: 1/x - 1/(e^x - 1) (-> 1/2 - x/12 as x -> 0)."""
    small = x < 1e-4
    xs = xp.where(small, 1.0, x)
    return xp.where(small, 0.5 - x / 12.0, 1.0 / xs - 1.0 / xp.expm1(xs))


def _sensor_layers(px: Any, py: Any, pz: Any, st: _Setup, xp: ModuleType, layers: int | None = None):
    """The samples a thick sensor adds below front-face positions (mm): per layer i of thickness dt = t / layers,
    (x, y, z, capture, close): the position moved along the outward normal to the layer's front face or to the
    mean depth of what it absorbs, the fraction it absorbs, exp(-mu z_i / cos) - exp(-mu z_(i+1) / cos)
    (cos: the ray to the front position . normal), and the distance of its plane (the front face's with
    nanoBragg's front-face layers, as nanoBragg computes Omega). A thin sensor: the positions, capture None.
    ``layers``: other than the still's (1: the whole sensor as one layer)."""
    det = st.detector
    if not st.layers:
        yield px, py, pz, None, None
        return
    n = st.n_out
    inv_r = 1.0 / xp.sqrt(px * px + py * py + pz * pz)
    cos = (px * n[0] + py * n[1] + pz * n[2]) * inv_r
    layers = st.layers if layers is None else layers
    dt = det.thickness_mm / layers
    x = (det.mu_per_mm * dt) / cos  # optical depth of one layer along the ray
    frac = _depth_in_layer(x, xp) if st.layer_mean_depth else None
    for i in range(layers):
        capture = xp.exp(-i * x) * (-xp.expm1(-x))
        z = dt * (i + frac) if frac is not None else xp.full(px.shape, dt * i)
        close = det.close_distance_mm + z if frac is not None else None
        yield px + z * n[0], py + z * n[1], pz + z * n[2], capture, close


def _miller(m: np.ndarray, kappa: float, dx: Any, dy: Any, dz: Any, incident: np.ndarray | None = None
            ) -> tuple[Any, Any, Any]:
    """Fractional indices h = m @ (d - incident) * kappa (incident default (0, 0, -1))."""
    out = []
    if incident is None:
        qz = dz + 1.0
        for row in m * kappa:
            h = dx * row[0]
            h += dy * row[1]
            h += qz * row[2]
            out.append(h)
        return out[0], out[1], out[2]
    off = (m * kappa) @ np.asarray(incident, float)
    for row, o in zip(m * kappa, off):
        h = dx * row[0]
        h += dy * row[1]
        h += dz * row[2]
        h -= o
        out.append(h)
    return out[0], out[1], out[2]


# --------------------------------------------------------------------------------------------
# pass 1: one sample per pixel + bound; pass 2: full average where the bound says it matters
# --------------------------------------------------------------------------------------------
def _pixel_centres(st: _Setup, j0: int, j1: int) -> tuple[Any, Any, Any, tuple[Any, Any, Any]]:
    """Rows [j0, j1) at the pixel centres: d_z, Omega * P, 1/R (mm^-1) and the reference sample's fractional
    (h, k, l), each (j1 - j0, n_fast) float64."""
    xp = st.xp
    det = st.detector
    o = np.asarray(det.origin_mm)
    f = np.asarray(det.fast_axis) * det.pixel_size_mm
    s = np.asarray(det.slow_axis) * det.pixel_size_mm
    u = xp.arange(det.n_fast, dtype=xp.float64) + 0.5
    v = xp.arange(j0, j1, dtype=xp.float64) + 0.5
    pos = [(o[c] + u * f[c])[None, :] + (v * s[c])[:, None] for c in range(3)]
    if not st.layers:
        dx, dy, dz, g, inv_r = _geometry(pos[0], pos[1], pos[2], st, xp)
        return dz, g, inv_r, _miller(st.m_ref, st.kappa_ref, dx, dy, dz, st.inc_ref if st.divergent else None)
    # a thick sensor's reference sample: where the pixel's photons are absorbed on average (its layers as one),
    # with all they absorb
    (px, py, pz, capture, close), = _sensor_layers(*pos, st, xp, layers=1)
    dx, dy, dz, g, inv_r = _geometry(px, py, pz, st, xp, close)
    g *= capture
    return dz, g, inv_r, _miller(st.m_ref, st.kappa_ref, dx, dy, dz, st.inc_ref if st.divergent else None)


def _single_pass_block(
    st: _Setup, j0: int, j1: int, want_bound: bool, nodes_out: Any | None = None
) -> tuple[Any, Any | None]:
    """Rows [j0, j1): value at the pixel centre for the reference sample (float64), and the bound.
    nodes_out: (3, j1 - j0, n_fast) int32, filled with that sample's nearest node (h0, k0, l0) per pixel."""
    xp = st.xp
    det = st.detector
    dz, g, inv_r, hkl = _pixel_centres(st, j0, j1)
    near = [_nearest(h, xp) for h in hkl]
    if nodes_out is not None:
        for c in range(3):
            nodes_out[c] = near[c][0]
    idx = _f2_index(near[0][0], near[1][0], near[2][0], st, xp)
    f2 = xp.take(st.f2pad, idx)
    lat = _lattice_sq(near[0][1], near[1][1], near[2][1], st, xp)
    value = (lat * (_f2_at(*hkl, near, idx, st, xp) if st.interpolate else f2)).astype(xp.float64)
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
    dp += det.thickness_mm if st.layers else 0.0  # a layer's sample lies at most the thickness from the reference
    e = dp * inv_r
    e *= 1.001 + e * e
    q = xp.sqrt(xp.maximum(2.0 + 2.0 * dz, 0.0))  # |d - (0, 0, -1)|
    kmax = float(st.kappa.max())
    rho = float(np.max(np.abs(st.kappa / st.kappa_ref - 1.0)))
    if st.divergent:  # q_p - q_c also moves by i_ref - i_s (|.| <= dinc); |q_c| by |i_ref - (0, 0, -1)|
        e += st.dinc
        q += float(np.linalg.norm(st.inc_ref - np.array([0.0, 0.0, -1.0])))
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
    w = [np.float32(v) for v in st.weights]
    acc = xp.zeros(flat_idx.shape, dtype=xp.float64)
    os_ = st.oversample
    first: dict = {}
    for b in range(os_):  # slow sub-pixel index, as nanoBragg's subS
        for a in range(os_):
            u = iu + (a + 0.5) / os_
            v = jv + (b + 0.5) / os_
            pos = [u * f[c] + v * s[c] + o[c] for c in range(3)]
            for layer, (px, py, pz, capture, close) in enumerate(_sensor_layers(*pos, st, xp)):
                dx, dy, dz, g, _ = _geometry(px, py, pz, st, xp, close)
                if st.first_subpixel_factors:  # nanoBragg: Omega and P once per pixel, at sub-pixel (0, 0) of
                    # the first layer; a layer's capture fraction once per layer, at its sub-pixel (0, 0)
                    g_first = first.setdefault("g", g)
                    g = g_first if capture is None else g_first * first.setdefault(layer, capture)
                elif capture is not None:
                    g = g * capture
                sub = xp.zeros(flat_idx.shape, dtype=xp.float32)
                for m in range(st.m_dom.shape[0]):
                    if st.divergent:  # h = M_m (d - i_s) kappa_s: per source its own incident direction
                        base = _miller(st.m_dom[m], 1.0, dx, dy, dz, np.zeros(3))
                        off = xp.asarray((st.incident @ st.m_dom[m].T) * st.kappa[:, None])  # (S, 3)
                        frac = [h[None, :] * kap - off[:, c:c + 1] for c, h in enumerate(base)]
                    else:
                        base = _miller(st.m_dom[m], 1.0, dx, dy, dz)
                        frac = [h[None, :] * kap for h in base]  # (S, P)
                    near = [_nearest(h, xp) for h in frac]
                    idx = _f2_index(near[0][0], near[1][0], near[2][0], st, xp)
                    val = _lattice_sq(near[0][1], near[1][1], near[2][1], st, xp)
                    val *= _f2_at(*frac, near, idx, st, xp)
                    # source by source, in order: the same sum for any batch of pixels and on any array module
                    # (a matrix product's summation order depends on the library and the batch size)
                    for i_src, w_src in enumerate(w):
                        sub += val[i_src] * w_src
                acc += sub * g
    acc *= st.scale / (os_ * os_ * st.m_dom.shape[0])
    return acc


def _block_rows(st: _Setup, block_pixels: int) -> int:
    return max(1, min(st.detector.n_slow, block_pixels // st.detector.n_fast))


def _sample_chunk(st: _Setup, block_pixels: int) -> int:
    """Pixels per full-average batch: (sources x pixels) arrays stay ~block_pixels elements."""
    return max(1024, block_pixels // st.kappa.size)
