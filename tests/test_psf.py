"""Detector point-spread function: nanoBragg's pixel-integrated Gaussian PSF, and spots that spread through it."""

import math

import numpy as np
import pytest

from braggflow.formats.shards import read_images, read_truth
from braggflow.shards import SimulationSettings, write_shard
from braggflow.simulator import apply_psf, gauss_psf_kernel_1d
from conftest import small_geometry
from test_shards import BEAM, SIM


def nanobragg_kernel(fwhm_px: float, radius: int, n_sub: int = 200) -> np.ndarray:
    """nanoBragg's integrate_gauss_over_pixel(dx, dy, fwhm, 1): a unit-volume 2-D Gaussian of that FWHM,
    integrated over each pixel, here by a midpoint rule on n_sub^2 points per pixel (no separability used)."""
    sigma = fwhm_px / (2 * math.sqrt(2 * math.log(2)))
    u = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    out = np.zeros((2 * radius + 1, 2 * radius + 1))
    for i, dy in enumerate(range(-radius, radius + 1)):
        for j, dx in enumerate(range(-radius, radius + 1)):
            y, x = np.meshgrid(dy + u, dx + u, indexing="ij")
            out[i, j] = np.exp(-(x * x + y * y) / (2 * sigma * sigma)).mean() / (2 * math.pi * sigma * sigma)
    return out


@pytest.mark.parametrize("fwhm_px", [0.5, 1.0, 2.7])
def test_kernel_is_nanobraggs_pixel_integrated_gaussian(fwhm_px):
    k = gauss_psf_kernel_1d(fwhm_px)
    r = len(k) // 2
    assert len(k) % 2 == 1 and np.allclose(k, k[::-1])
    assert abs(k.sum() - 1) < 1e-6  # the truncated tails hold less than 1e-7 per side
    np.testing.assert_allclose(np.outer(k, k), nanobragg_kernel(fwhm_px, r), atol=1e-5)  # midpoint-rule error


def test_psf_spreads_photons_conserves_them_inside_and_loses_them_past_the_edge():
    fwhm_px = 1.5
    k = gauss_psf_kernel_1d(fwhm_px)
    r = len(k) // 2
    img = np.zeros((40, 50), np.float32)
    img[20, 25] = 1000.0  # a point well inside
    img[0, 10] = 100.0  # a point on the first row: the part of its spread above row 0 leaves the panel
    out = apply_psf(img, fwhm_px)
    assert out.dtype == np.float32 and out.shape == img.shape
    np.testing.assert_allclose(out[20 - r:20 + r + 1, 25 - r:25 + r + 1], 1000 * np.outer(k, k), rtol=1e-5, atol=1e-6)
    near_edge = out[:r + 1, 10 - r:10 + r + 1].sum()
    assert near_edge == pytest.approx(100 * k[r:].sum(), rel=1e-5)
    assert out.sum() == pytest.approx(1000 + 100 * k[r:].sum(), rel=1e-5)
    # a centred point keeps its centroid
    yy, xx = np.mgrid[:40, :50]
    inner = np.where(yy > 10, out, 0)
    assert (inner * yy).sum() / inner.sum() == pytest.approx(20, abs=1e-6)
    assert (inner * xx).sum() / inner.sum() == pytest.approx(25, abs=1e-6)


def test_bad_psf_widths_are_refused():
    with pytest.raises(ValueError, match="PSF FWHM must be > 0 px"):
        gauss_psf_kernel_1d(0.0)
    with pytest.raises(ValueError, match=r"config key 'simulation.psf_fwhm_um': value -1.0 must be >= 0"):
        SimulationSettings.from_config(dict(SIM, psf_fwhm_um=-1), small_geometry(), BEAM)


def test_simulated_spots_spread_over_the_psf_and_keep_truth_positions_and_photons(tmp_path, mtz_1ic6_7kev):
    """Same draws with and without a 2-pixel PSF: truth rows are identical, spot photons are conserved, spots
    widen by the PSF's variance and their centroids stay on the truth positions."""
    g = small_geometry()
    mono = dict(SIM, mosaic_domains=1, spectrum_samples=1, bandwidth_frac=0.0, crystal_shape="round",
                ncells={"dist": "fixed", "value": 25})
    pixel_um = g.pixel_size_m * 1e6
    fwhm_px = 2.0
    out = {}
    for name, psf in (("sharp", 0.0), ("psf", fwhm_px * pixel_um)):
        settings = SimulationSettings.from_config(dict(mono, psf_fwhm_um=psf), g, BEAM)
        write_shard(tmp_path / f"{name}.h5", mtz_path=mtz_1ic6_7kev, geometry=g, beam=BEAM, settings=settings,
                    seed=11, dataset="7keV_100mm", dataset_index=4, frames=range(1), structure="1ic6")
        out[name] = (read_images(tmp_path / f"{name}.h5")[0].astype(float), read_truth(tmp_path / f"{name}.h5"))
    (sharp, truth), (blurred, truth_psf) = out["sharp"], out["psf"]
    np.testing.assert_array_equal(truth.to_numpy(), truth_psf.to_numpy())
    k = gauss_psf_kernel_1d(fwhm_px)
    kernel_var = (k * (np.arange(len(k)) - len(k) // 2) ** 2).sum()  # ~ sigma^2 + 1/12 (a pixel's width)
    assert kernel_var == pytest.approx((fwhm_px / (2 * math.sqrt(2 * math.log(2)))) ** 2 + 1 / 12, rel=1e-3)
    checked = 0
    for row in truth[truth.peak_fraction > 0.5].itertuples():
        x0, y0 = int(row.x_px), int(row.y_px)
        if not (8 <= x0 < sharp.shape[1] - 8 and 8 <= y0 < sharp.shape[0] - 8):
            continue
        a, b = (im[y0 - 8:y0 + 9, x0 - 8:x0 + 9] for im in (sharp, blurred))
        if a.sum() < 50 or a[[0, 1, -2, -1], :].max() > 1e-3 * a.max() or a[:, [0, 1, -2, -1]].max() > 1e-3 * a.max():
            continue  # weak, or not isolated
        yy, xx = np.mgrid[y0 - 8:y0 + 9, x0 - 8:x0 + 9] + 0.5
        assert b.sum() == pytest.approx(a.sum(), rel=2e-3)
        cx, cy = (b * xx).sum() / b.sum(), (b * yy).sum() / b.sum()
        assert abs(cx - row.x_px) <= 0.1 and abs(cy - row.y_px) <= 0.1
        for c, coord in ((cx, xx), (cy, yy)):
            var_a = (a * (coord - (a * coord).sum() / a.sum()) ** 2).sum() / a.sum()
            var_b = (b * (coord - c) ** 2).sum() / b.sum()
            assert var_b - var_a == pytest.approx(kernel_var, rel=0.03)  # variances of independent spreads add
        assert b.max() < 0.6 * a.max()
        checked += 1
    assert checked >= 5
