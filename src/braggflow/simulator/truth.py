"""The truth table of a still: the reflections predicted on the detector (centroid of the lattice transform's peak
on each Ewald sphere), their photons in the simulated image, and the cut on peak fraction or own photons."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from .backend import default_block_pixels, to_numpy
from .derived import _Setup, _make_setup
from ..detector import Detector, Panel
from .image import simulate_still
from .sf_table import StructureFactorTable
from .kernels import _ROUND_NORM, _block_rows, _pixel_centres
from .still import INCIDENT_UNIT, Still

TRUTH_ROWS = 1 << 16  # (source, reflection) rows per vectorised step of the truth table
LOOKUP_MAX = 1 << 25  # hkl boxes up to this many nodes get a direct lookup (8 bytes each)


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


def _qmax(st: _Setup, two_theta_max: float) -> float:
    """Largest |r| (1/A) of a node that can diffract within two_theta_max on any sphere used."""
    smax = 2.0 * math.sin(two_theta_max / 2.0) if two_theta_max < math.pi / 2 else 2.0  # |s1_hat - s0_hat|
    tilt = float(np.max(np.linalg.norm(st.incident - INCIDENT_UNIT, axis=1)))  # a divergent source's own s0_hat
    return (smax + tilt + 0.05) * float(st.kappa.max()) * (1 + st.eps_rot) + 1e-6


def _candidate_hkl(st: _Setup, two_theta_max: float | None = None) -> np.ndarray:
    """hkl within the detector's resolution (its panel's, or two_theta_max) whose reciprocal cell can touch any
    Ewald sphere used, in (h, k, l) lexicographic order."""
    if two_theta_max is None:
        two_theta_max = Detector((st.detector,)).max_two_theta_rad()
    kmin, kmax = float(st.kappa.min()), float(st.kappa.max())
    qmax = _qmax(st, two_theta_max)
    tilt = float(np.max(np.linalg.norm(st.incident - INCIDENT_UNIT, axis=1)))  # spheres of tilted sources move
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
        keep = (q > 0) & (q <= qmax) & (dist <= cell_reach + st.eps_rot * q + kmax * tilt + 1e-9)
        out.append(hkl[keep])
    return np.concatenate(out) if out else np.zeros((0, 3), dtype=np.int64)


def _reference_node_ids(st: _Setup, hkl_lo: np.ndarray, dims: np.ndarray, block_pixels: int,
                        nodes: Any | None = None) -> np.ndarray:
    """Per pixel (flat), linear id of the nearest node of the pixel-centre reference sample within the
    box [hkl_lo, hkl_lo + dims), -1 outside (host int64). nodes: those nodes from simulate_still(return_nodes=True)
    (the same numbers; not computed again)."""
    xp = st.xp
    det = st.detector
    out = np.empty(det.n_fast * det.n_slow, dtype=np.int64)
    rows = _block_rows(st, block_pixels)
    for j0 in range(0, det.n_slow, rows):
        j1 = min(j0 + rows, det.n_slow)
        if nodes is None:
            near = [xp.ceil(h - 0.5) for h in _pixel_centres(st, j0, j1)[3]]
        else:
            near = [nodes[c, j0:j1].astype(xp.float64) for c in range(3)]
        ids = None
        inside = None
        for c in range(3):
            rel = (near[c] - float(hkl_lo[c])).astype(xp.int64)
            ok = (rel >= 0) & (rel < int(dims[c]))
            inside = ok if inside is None else inside & ok
            ids = rel if ids is None else ids * int(dims[c]) + rel
        out[j0 * det.n_fast:j1 * det.n_fast] = to_numpy(xp.where(inside, ids, -1)).ravel()
    return out


def _sphere_points(st: _Setup, hkl: np.ndarray, peak0: float):
    """For each source and domain: the point of that Ewald sphere where the lattice transform of each node peaks
    (unit direction s1) and F_latt^2 there / F_latt^2(0); yields (first source, s1 (S, H, 3), frac (S, H)) for
    all sources of a domain at once, in chunks of ~TRUTH_ROWS (source, reflection) rows (the per-pair Python
    overhead dominated at 100 spectrum channels x 25 domains). Row by row the same arithmetic for any set of hkl."""
    n_src = len(st.kappa)
    step = max(1, TRUTH_ROWS // max(len(hkl), 1))
    for m in range(st.m_dom.shape[0]):
        r = hkl @ (st.umats[m] @ st.A).T  # lab reciprocal vectors r = U_m A hkl
        pinv = np.linalg.inv(_profile_metric(st, m))
        for s0 in range(0, n_src, step):
            kap = st.kappa[s0:s0 + step, None, None]  # (S, 1, 1)
            s0_hat = st.incident[s0:s0 + step, None, :]  # (S, 1, 3) each source's incident direction
            c = r[None] + kap * s0_hat  # s0 + r: from the sphere centre (-s0) to the node, (S, H, 3)
            cn = np.linalg.norm(c, axis=2)
            n = c / cn[..., None]
            eps = kap[..., 0] - cn  # move along n by eps to reach the sphere
            pn = n @ pinv  # P^-1 n (P symmetric)
            t = (eps / np.einsum("shi,shi->sh", n, pn))[..., None] * pn  # argmin t^T P t with n.t = eps
            s1 = c + t
            s1 /= np.linalg.norm(s1, axis=2, keepdims=True)
            dfrac = (s1 * kap - kap * s0_hat - r[None]) @ st.m_dom[m].T  # (h,k,l) offset at that point
            yield s0, s1, _lattice_sq_np(dfrac, st) / peak0


def panel_candidates(still: Still, panels: Detector, structure_factors: StructureFactorTable) -> list[np.ndarray]:
    """Per panel, the candidate hkl whose truth-table centroid can land on it, for ``truth_reflections(...,
    candidates=)``: the same rows as each panel's own candidates would give, at about the cost of one panel.

    The sphere points of every node (all sources and domains) are computed once for the whole detector: their
    first direction d0 and the largest angle alpha of any other from it. A centroid is a weighted mean of the
    points where those rays meet a panel's plane, so it lies within alpha of d0 as seen through the plane: a node
    is kept for a panel unless d0 meets the plane farther from the panel than 1.5 L alpha / cos^2(phi + alpha)
    + 2 px (L: the plane's distance, phi: d0's angle to its normal; the rate at which a ray's foot moves, with
    a margin). Grazing panels (phi + alpha >= 80 deg) and skewed pixel axes keep every candidate."""
    dets = tuple(panels.panels)
    st = _make_setup(still, dets[0], structure_factors, np)
    hkl = _candidate_hkl(st, panels.max_two_theta_rad())
    peak0 = _lattice_sq_np(np.zeros((1, 3)), st)[0]
    d0, cos_min = None, np.ones(len(hkl))
    for _, s1, _ in _sphere_points(st, hkl, peak0):
        if d0 is None:
            d0 = s1[0].copy()
        cos_min = np.minimum(cos_min, np.einsum("shi,hi->sh", s1, d0).min(axis=0))
    if d0 is None:
        return [hkl for _ in dets]
    alpha = np.arccos(np.clip(cos_min, -1.0, 1.0)) + 1e-9
    q = np.linalg.norm(hkl @ st.A.T, axis=1)
    out = []
    for det in dets:
        own = q <= _qmax(st, Detector((det,)).max_two_theta_rad()) * (1 + 1e-9)  # the panel's own resolution
        fast, slow = np.asarray(det.fast_axis, float), np.asarray(det.slow_axis, float)
        normal = np.cross(fast, slow)
        origin = np.asarray(det.origin_mm, float)
        dist = float(normal @ origin)
        if dist < 0:
            normal, dist = -normal, -dist
        if dist <= 0 or abs(float(fast @ slow)) > 1e-6:
            out.append(hkl[own])
            continue
        cos_phi = d0 @ normal
        phi = np.arccos(np.clip(cos_phi, -1.0, 1.0))
        grazing = phi + alpha >= math.radians(80.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            foot = d0 * (dist / cos_phi)[:, None] - origin
        px_f, px_s = det.pixel_mm
        u, v = foot @ fast, foot @ slow  # mm from the panel's origin corner
        du = np.maximum(np.maximum(-u, u - det.n_fast * px_f), 0.0)
        dv = np.maximum(np.maximum(-v, v - det.n_slow * px_s), 0.0)
        reach = 1.5 * dist * alpha / np.cos(np.minimum(phi + alpha, math.radians(80.0))) ** 2 + 2.0 * max(px_f, px_s)
        near = grazing | (np.hypot(du, dv) <= reach)
        out.append(hkl[own & near])
    return out


def _centroids(st: _Setup, detector: Panel, hkl: np.ndarray, peak0: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Spot centroids (x_px, y_px; NaN where no point reaches the panel), their summed weights and best peak
    fractions: the mean of each (source, domain) sphere point weighted by w_s * F_latt^2 there."""
    sum_w = np.zeros(len(hkl))
    sum_x = np.zeros(len(hkl))
    sum_y = np.zeros(len(hkl))
    best = np.zeros(len(hkl))
    fast, slow = np.asarray(detector.fast_axis), np.asarray(detector.slow_axis)
    for s0, s1, frac in _sphere_points(st, hkl, peak0):
        rays = s1.reshape(-1, 3)
        x, y, fwd = detector.ray_to_px(rays)
        if detector.thickness_mm > 0:  # a thick sensor records a ray where it absorbs it on average (parallax)
            u = rays / np.linalg.norm(rays, axis=1, keepdims=True)
            path = detector.mean_path_mm(u)
            x = x + (u @ fast) * path / detector.pixel_mm[0]
            y = y + (u @ slow) * path / detector.pixel_mm[1]
        shape = frac.shape
        x, y, fwd = x.reshape(shape), y.reshape(shape), fwd.reshape(shape)
        wgt = np.where(fwd, st.weights[s0:s0 + shape[0], None] * frac, 0.0)
        x = np.nan_to_num(x)
        y = np.nan_to_num(y)
        for i in range(shape[0]):
            sum_w += wgt[i]
            sum_x += wgt[i] * x[i]
            sum_y += wgt[i] * y[i]
        best = np.maximum(best, np.where(fwd, frac, 0.0).max(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return sum_x / sum_w, sum_y / sum_w, sum_w, best


def spot_centroids(still: Still, detector: Panel, hkl: np.ndarray) -> np.ndarray:
    """(n, 2) (fast, slow) px where the spots of reflections ``hkl`` (n, 3) of ``still`` centre on ``detector``,
    as the truth table places them (NaN where a spot does not reach the panel's plane); no image needed."""
    hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
    st = _make_setup(still, detector, StructureFactorTable(np.ones((1, 1, 1)), (0, 0, 0), 1.0), np)  # F moves no spot
    x, y, w, _ = _centroids(st, detector, hkl, _lattice_sq_np(np.zeros((1, 3)), st)[0])
    return np.where((w > 0)[:, None], np.column_stack([x, y]), np.nan)


def truth_reflections(
    still: Still,
    detector: Panel,
    structure_factors: StructureFactorTable,
    *,
    image: Any | None = None,
    min_peak_fraction: float = 1e-3,
    min_photons: float = 1.0,
    xp: ModuleType | None = None,
    block_pixels: int | None = None,
    candidates: np.ndarray | None = None,
    nodes: Any | None = None,
) -> TruthTable:
    """Truth table of ``still``: reflections predicted on the detector with peak_fraction >= min_peak_fraction or
    at least min_photons expected photons in their spot. ``image``: the frame from simulate_still of the same still
    on the same detector (simulated here, with simulate_still's defaults, when None).

    Position: for each source s and domain m, the point of that Ewald sphere where the lattice
    transform of the node peaks (the node moved along the sphere normal, through the profile's
    quadratic metric; for isotropic profiles the ray s0 + r), projected onto the detector (a thick sensor: where
    the ray's photons are absorbed on average, ``Panel.mean_path_mm``, DIALS' parallax correction); the spot
    centre is the mean of those points weighted by w_s * F_latt^2 there (the spot's centroid).

    candidates: the hkl to consider (``panel_candidates`` of a multi-panel detector, which computes the
    panel-independent geometry once); None: every node this panel can record. nodes: from
    ``simulate_still(..., return_nodes=True)`` of the same still on the same panel (saves a pass over the pixels).
    """
    xp = np if xp is None else xp
    st = _make_setup(still, detector, structure_factors, xp)
    if block_pixels is None:
        block_pixels = default_block_pixels(xp)
    if image is None:
        image = simulate_still(still, detector, structure_factors, xp=xp, block_pixels=block_pixels)
    img = to_numpy(image).reshape(-1)
    if img.size != detector.n_fast * detector.n_slow:
        raise ValueError(f"image has {img.size} pixels, detector has {detector.n_fast * detector.n_slow}")

    hkl = _candidate_hkl(st) if candidates is None else candidates
    peak0 = _lattice_sq_np(np.zeros((1, 3)), st)[0]
    x_px, y_px, sum_w, best = _centroids(st, detector, hkl, peak0)
    on_detector = ((sum_w > 0) & (x_px >= 0) & (x_px < detector.n_fast) & (y_px >= 0) & (y_px < detector.n_slow))
    hkl, x_px, y_px, best = hkl[on_detector], x_px[on_detector], y_px[on_detector], best[on_detector]
    photons = np.zeros(len(hkl))
    if len(hkl):
        lo = hkl.min(axis=0)
        dims = hkl.max(axis=0) - lo + 1
        ids = _reference_node_ids(st, lo, dims, block_pixels, nodes)
        rel = hkl - lo
        table_ids = (rel[:, 0] * dims[1] + rel[:, 1]) * dims[2] + rel[:, 2]
        box = int(np.prod(dims))
        if box <= LOOKUP_MAX:  # a lookup over the hkl box: one gather per pixel instead of a binary search
            row_of = np.full(box + 1, -1, np.int64)  # the last entry serves the pixels outside the box (id -1)
            row_of[table_ids] = np.arange(len(hkl))
            row = row_of[ids]
            hit = row >= 0
            photons = np.bincount(row[hit], weights=img[hit], minlength=len(hkl)).astype(np.float64)
        else:
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
        ray = detector.to_lab(np.column_stack([x_px, y_px]))
        r_mm = np.linalg.norm(ray, axis=1)
        omega = detector.pixel_size_mm**2 * detector.close_distance_mm / r_mm**3
        own_peak = st.scale * f2 * peak0 * best * omega
    keep = (best >= min_peak_fraction) | (own_peak >= min_photons)
    hkl, x_px, y_px, best, photons = hkl[keep], x_px[keep], y_px[keep], best[keep], photons[keep]
    d_A = 1.0 / np.linalg.norm(hkl @ st.A.T, axis=1)
    return TruthTable(hkl=hkl.astype(np.int64), d_A=d_A, x_px=x_px, y_px=y_px, photons=photons,
                      peak_fraction=best)
