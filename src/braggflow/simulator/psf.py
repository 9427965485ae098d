"""The detector's point-spread function: nanoBragg's pixel-integrated Gaussian, applied to expected photons."""

from __future__ import annotations

import math
from statistics import NormalDist
from types import ModuleType
from typing import Any

import numpy as np

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
