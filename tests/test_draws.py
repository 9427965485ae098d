"""Per-frame random draws: determinism, shard independence, SO(3) uniformity, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from braggflow.draws import (
    DrawConfig,
    draw_frame,
    draw_frames,
    frame_rng,
    mosaic_umats,
    random_rotation,
    spectrum,
)

CONFIG = DrawConfig(
    wavelength_A=1.77,
    ncells={"dist": "lognormal", "median": 10, "sigma": 0.3},
    ncells_per_axis=True,
    mosaic_spread_deg=0.1,
    mosaic_domains=4,
    spectrum_shape="gaussian",
    bandwidth_frac=0.003,
    spectrum_samples=5,
    energy_jitter_rel_sigma=0.001,
    fluence_photons_per_m2=1e28,
    fluence_rel_sigma=0.2,
)


def _same(a, b) -> bool:
    return (a.ncells == b.ncells and np.array_equal(a.orientation, b.orientation)
            and np.array_equal(a.mosaic_umats, b.mosaic_umats) and np.array_equal(a.wavelengths_A, b.wavelengths_A)
            and np.array_equal(a.weights, b.weights) and a.fluence_photons_per_m2 == b.fluence_photons_per_m2)


def test_draws_are_deterministic():
    assert _same(draw_frame(CONFIG, 7, 2, 11), draw_frame(CONFIG, 7, 2, 11))
    assert not _same(draw_frame(CONFIG, 7, 2, 11), draw_frame(CONFIG, 7, 2, 12))
    assert not _same(draw_frame(CONFIG, 7, 2, 11), draw_frame(CONFIG, 7, 3, 11))
    assert not _same(draw_frame(CONFIG, 8, 2, 11), draw_frame(CONFIG, 7, 2, 11))


def test_frame_draws_do_not_depend_on_shards():
    whole = draw_frames(CONFIG, 5, 0, range(12))
    shards = [f for start in range(0, 12, 5) for f in draw_frames(CONFIG, 5, 0, range(start, min(start + 5, 12)))]
    reverse = draw_frames(CONFIG, 5, 0, range(11, -1, -1))[::-1]
    np.random.seed(123)  # global state must not matter
    for a, b, c in zip(whole, shards, reverse):
        assert _same(a, b) and _same(a, c)


def test_orientation_unchanged_by_other_settings():
    other = DrawConfig(wavelength_A=1.0, mosaic_spread_deg=0.5, mosaic_domains=9)
    np.testing.assert_array_equal(draw_frame(CONFIG, 1, 0, 3).orientation, draw_frame(other, 1, 0, 3).orientation)


def test_orientations_are_haar_uniform():
    rots = np.array([draw_frame(CONFIG, 99, 0, i).orientation for i in range(3000)])
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", rots, rots), np.broadcast_to(np.eye(3), rots.shape),
                               atol=1e-12)
    assert np.allclose(np.linalg.det(rots), 1.0)
    # E[R] = 0 under Haar measure; each entry has standard deviation 1/3
    assert np.abs(rots.mean(axis=0)).max() < 4 / 3 / math.sqrt(len(rots))
    # rotation angle density (1 - cos t)/pi on [0, pi]: CDF (t - sin t)/pi; Kolmogorov-Smirnov
    angles = np.sort(np.arccos(np.clip((np.trace(rots, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    cdf = (angles - np.sin(angles)) / math.pi
    n = len(angles)
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < 1.63 / math.sqrt(n)  # 1 % level


def test_random_rotation_uses_given_generator_only():
    a = random_rotation(np.random.default_rng(1))
    b = random_rotation(np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)


def test_frame_values_are_sensible():
    draws = [draw_frame(CONFIG, 3, 1, i) for i in range(400)]
    ncells = np.array([d.ncells for d in draws])
    assert ncells.min() >= 1 and len(set(map(tuple, ncells))) > 10
    assert abs(np.median(ncells) - 10) <= 1
    fluence = np.array([d.fluence_photons_per_m2 for d in draws])
    assert np.all(fluence > 0)
    assert fluence.mean() == pytest.approx(1e28, rel=0.05)
    assert fluence.std() / fluence.mean() == pytest.approx(0.2, rel=0.2)
    for d in draws[:20]:
        assert d.mosaic_umats.shape == (4, 3, 3)
        np.testing.assert_array_equal(d.mosaic_umats[0], np.eye(3))
        angles = np.degrees(np.arccos(np.clip((np.trace(d.mosaic_umats, axis1=1, axis2=2) - 1) / 2, -1, 1)))
        assert np.all(angles <= 0.1 + 1e-9)
        assert d.weights.sum() == pytest.approx(1.0) and len(d.wavelengths_A) == 5
        assert d.wavelengths_A.mean() == pytest.approx(d.central_wavelength_A)
    jitter = np.array([d.central_wavelength_A for d in draws]) / 1.77 - 1
    assert 0.0005 < jitter.std() < 0.002


def test_ncells_distributions():
    fixed = DrawConfig(wavelength_A=1.0, ncells={"dist": "fixed", "value": 12})
    assert draw_frame(fixed, 0, 0, 0).ncells == (12, 12, 12)
    uni = DrawConfig(wavelength_A=1.0, ncells={"dist": "uniform", "low": 5, "high": 8}, ncells_per_axis=True)
    vals = np.array([draw_frame(uni, 0, 0, i).ncells for i in range(300)])
    assert vals.min() == 5 and vals.max() == 8


def test_spectrum_shapes():
    lam, w = spectrum(1.5498, "tophat", 0.006, 3)  # nanoBragg -dispersion 0.6 -dispsteps 3
    np.testing.assert_allclose(lam, 1.5498 * (1 + np.arange(3) * 0.003 - 0.003))
    np.testing.assert_allclose(w, 1 / 3)
    lam, w = spectrum(1.0, "gaussian", 0.01, 5)
    assert w[2] == w.max() and w[0] == pytest.approx(w[4]) and w.sum() == pytest.approx(1)
    assert w[0] / w[2] == pytest.approx(1 / 16)  # points at +-FWHM


def test_mosaic_models():
    rng = np.random.default_rng(0)
    um = mosaic_umats(rng, 0.5, 200, "gaussian")
    angles = np.degrees(np.arccos(np.clip((np.trace(um, axis1=1, axis2=2) - 1) / 2, -1, 1)))[1:]
    assert np.sqrt(np.mean(angles ** 2)) == pytest.approx(0.5 * math.sqrt(3), rel=0.15)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ncells": {"dist": "fixed", "value": -3}}, "ncells.value"),
        ({"ncells": {"dist": "uniform", "low": 0, "high": 4}}, "ncells.low"),
        ({"ncells": {"dist": "lognormal", "median": 10, "sigma": -1}}, "ncells.sigma"),
        ({"ncells": {"dist": "poisson"}}, "ncells"),
        ({"fluence_photons_per_m2": 0.0}, "fluence_photons_per_m2"),
        ({"fluence_photons_per_m2": -1e20}, "fluence_photons_per_m2"),
        ({"fluence_rel_sigma": -0.1}, "fluence_rel_sigma"),
        ({"bandwidth_frac": -0.001}, "bandwidth_frac"),
        ({"spectrum_samples": 0}, "spectrum_samples"),
        ({"mosaic_spread_deg": -0.1}, "mosaic_spread_deg"),
        ({"mosaic_domains": 0}, "mosaic_domains"),
        ({"wavelength_A": 0.0}, "wavelength_A"),
        ({"spectrum_shape": "lorentz"}, "spectrum_shape"),
    ],
)
def test_bad_values_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DrawConfig(**({"wavelength_A": 1.0} | kwargs))


def test_bad_indices_raise():
    with pytest.raises(ValueError, match="frame_index"):
        frame_rng(1, 0, -1)
    with pytest.raises(ValueError, match="unknown"):
        DrawConfig.from_mapping({"wavelength_A": 1.0, "colour": "red"})
