"""The expected-photon image of a still: pass 1 over every pixel with its bound, then the full average refined in
descending bands of the bound (or everywhere, exhaustively)."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from .backend import default_block_pixels
from .derived import _Setup, _make_setup
from ..detector import Panel
from .kernels import _block_rows, _full_average, _sample_chunk, _single_pass_block
from .sf_table import StructureFactorTable
from .still import Still


def simulate_still(
    still: Still,
    detector: Panel,
    structure_factors: StructureFactorTable,
    *,
    rel_tol: float = 2e-4,
    max_background_share: float = 0.02,
    exhaustive: bool = False,
    xp: ModuleType | None = None,
    block_pixels: int | None = None,
    max_memory_bytes: int = 4 * 2**30,
    return_nodes: bool = False,
) -> Any:
    """Expected photons per pixel, float64 array (n_slow, n_fast) on ``xp`` (NumPy by default), of ``still``.

    rel_tol: pixels whose bound is below rel_tol * max keep the single-sample value (|error| < rel_tol * max),
    and more are refined until those left hold at most max_background_share of the photons; exhaustive=True
    averages every pixel over every sample. block_pixels: pixels per work block (default: by array module).
    max_memory_bytes: refuse a detector whose image, bound and candidate indices would need more.
    return_nodes: also return, per pixel, the nearest node (h0, k0, l0) of the pixel-centre reference sample,
    (3, n_slow, n_fast) int32 on ``xp``, for ``truth_reflections(nodes=)`` (not with exhaustive=True).
    """
    xp = np if xp is None else xp
    st = _make_setup(still, detector, structure_factors, xp)
    if not (0 < rel_tol < 1):
        raise ValueError(f"rel_tol must lie in (0, 1), got {rel_tol!r}")
    if not (0 < max_background_share <= 1):
        raise ValueError(f"max_background_share must lie in (0, 1], got {max_background_share!r}")
    n_pix = detector.n_fast * detector.n_slow
    if return_nodes and exhaustive:
        raise ValueError("return_nodes needs the single-sample pass, which exhaustive=True skips")
    need = n_pix * (8 + 4 + 8 + (12 if return_nodes else 0))  # image, bound, candidate indices, nodes
    if need > max_memory_bytes:
        raise ValueError(
            f"detector {detector.n_fast}x{detector.n_slow} pixels needs ~{need / 2**20:.0f} MiB, "
            f"more than max_memory_bytes={max_memory_bytes}")
    if block_pixels is None:
        block_pixels = default_block_pixels(xp)
    image = xp.empty((detector.n_slow, detector.n_fast), dtype=xp.float64)
    flat = image.reshape(-1)
    chunk = _sample_chunk(st, block_pixels)
    # the screening bound takes F from the nodes around a sample; interpolated F is not bounded by them (and a
    # crystal of <= 2 cells lights most pixels anyway): the full average everywhere
    full = exhaustive or st.interpolate
    want_bound = not (st.single_exact or full)
    nodes = xp.empty((3, detector.n_slow, detector.n_fast), dtype=xp.int32) if return_nodes else None
    if not full or return_nodes:
        bound = xp.empty((detector.n_slow, detector.n_fast), dtype=xp.float32) if want_bound else None
        rows = _block_rows(st, block_pixels)
        for j0 in range(0, detector.n_slow, rows):
            j1 = min(j0 + rows, detector.n_slow)
            value, b = _single_pass_block(st, j0, j1, want_bound, None if nodes is None else nodes[:, j0:j1])
            image[j0:j1] = value
            if want_bound:
                bound[j0:j1] = b
    if full:
        for start in range(0, n_pix, chunk):
            idx = xp.arange(start, min(start + chunk, n_pix), dtype=xp.int64)
            flat[start:start + idx.size] = _full_average(st, idx)
        return (image, nodes) if return_nodes else image
    if want_bound:
        _refine(st, flat, bound.reshape(-1), rel_tol, chunk, max_background_share)
    return (image, nodes) if return_nodes else image


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
