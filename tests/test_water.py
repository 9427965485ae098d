"""Water backgrounds: ring position, linearity, a hand-computed pixel, gaps, symmetry."""

import math

import numpy as np
import pandas as pd
import pytest

from braggflow.beam import Beam
from braggflow.errors import InputError
from braggflow.geometry import dataset_geometry
from braggflow.matrix import Dataset
from braggflow.units import R_E_SQUARED_M2
from braggflow.formats.background import read_background, write_background
from braggflow.water import pixel_factors, water_image
from conftest import RESOURCES

TABLE = RESOURCES / "water/water_scattering_25C.csv"
DET = {"pyfai_name": "Eiger4M", "sensor_material": "Si", "sensor_thickness_mm": 0.45}
BEAM = Beam(photons_per_pulse=1e12, size_m=(1e-6, 1e-6), polarization_fraction=0.99, polarization_angle_deg=0.0)


def geometry(energy_kev=8.0, camera_length_m=0.1, beam_center_px=None):
    cfg = {"detector": dict(DET, beam_center_px=beam_center_px)}
    return dataset_geometry(cfg, Dataset("x", energy_kev, camera_length_m, 0))


def hand_pixel(g, beam, s, f):
    """Position, q, solid angle and polarization of pixel (slow s, fast f) in the DIALS lab frame."""
    px = g.pixel_size_m
    x = (f + 0.5 - g.beam_center_px[0]) * px
    y = -(s + 0.5 - g.beam_center_px[1]) * px  # slow runs along lab -y
    r = math.sqrt(x * x + y * y + g.camera_length_m**2)
    two_theta = math.acos(g.camera_length_m / r)
    q = 4 * math.pi * math.sin(two_theta / 2) / g.wavelength_angstrom
    omega = px * px * g.camera_length_m / r**3
    d = np.array([x, y, g.camera_length_m]) / r
    phi = beam.polarization_angle_rad
    e = np.array([math.cos(phi), math.sin(phi), 0.0])
    # Kahn: 0.5 (1 + cos^2 2t - K cos 2psi sin^2 2t) = p (1 - (d.e)^2) + (1 - p) (1 - (d.e_perp)^2)
    e_perp = np.array([-math.sin(phi), math.cos(phi), 0.0])
    p = beam.polarization_fraction
    pol = p * (1 - (d @ e) ** 2) + (1 - p) * (1 - (d @ e_perp) ** 2)
    return q, omega, pol


@pytest.fixture(scope="module")
def ring():
    g = geometry(8.0, 0.1)  # the q = 2.05 1/A ring at 56 mm lies wholly on the detector
    return g, water_image(g, BEAM, 5e-6, TABLE)


def test_ring_of_the_water_peak_at_the_radius_where_q_is_2_05(ring):
    g, bg = ring
    table = pd.read_csv(TABLE, comment="#")
    q_peak = table.q_inv_angstrom[table.f2_electrons2.idxmax()]
    assert q_peak == pytest.approx(2.05, abs=0.01)
    two_theta = 2 * math.asin(q_peak * g.wavelength_angstrom / (4 * math.pi))
    r_expected_px = g.camera_length_m * math.tan(two_theta) / g.pixel_size_m
    # Divide out solid angle and polarization (by hand, independent of pyFAI) to get |F(q)|^2 per pixel.
    rng = np.random.default_rng(0)
    s = rng.integers(0, g.n_slow, 400_000)
    f = rng.integers(0, g.n_fast, 400_000)
    keep = ~bg.mask[s, f]
    s, f = s[keep], f[keep]
    hand = np.array([hand_pixel(g, BEAM, a, b) for a, b in zip(s, f)])
    per_molecule = bg.photons[s, f] / (hand[:, 1] * hand[:, 2])
    best = np.argmax(per_molecule)
    r_best = math.hypot(f[best] + 0.5 - g.beam_center_px[0], s[best] + 0.5 - g.beam_center_px[1])
    assert abs(r_best - r_expected_px) <= 1.0, (r_best, r_expected_px)
    # The raw image peaks inside that radius: solid angle (cos^3 2theta) and polarization fall outward.
    raw_best = np.argmax(bg.photons[s, f])
    assert math.hypot(f[raw_best] + 0.5 - g.beam_center_px[0], s[raw_best] + 0.5 - g.beam_center_px[1]) < r_expected_px


def test_one_pixel_matches_a_hand_calculation(ring):
    g, bg = ring
    table = pd.read_csv(TABLE, comment="#")
    for s, f in [(200, 300), (1800, 1900), (1200, 700)]:
        q, omega, pol = hand_pixel(g, BEAM, s, f)
        f2 = np.interp(q, table.q_inv_angstrom, table.f2_electrons2)
        molecules_per_area = 33.37e27 * 5e-6  # per m^2 of beam: number density x jet thickness
        expected = BEAM.photons_per_pulse * molecules_per_area * R_E_SQUARED_M2 * f2 * omega * pol
        assert bg.photons[s, f] == pytest.approx(expected, rel=2e-5)
        assert bg.q_inv_angstrom[s, f] == pytest.approx(q, rel=1e-5)


def test_scales_linearly_with_thickness_and_fluence():
    g = geometry(7.0, 0.15)
    base = water_image(g, BEAM, 5e-6, TABLE).photons
    thick = water_image(g, BEAM, 10e-6, TABLE).photons
    bright = Beam(3e12, BEAM.size_m, BEAM.polarization_fraction, 0.0)
    np.testing.assert_allclose(thick, 2 * base, rtol=1e-6)
    np.testing.assert_allclose(water_image(g, bright, 5e-6, TABLE).photons, 3 * base, rtol=1e-6)
    # Beam area cancels (molecules in the beam grow as fluence falls) while the jet is wider than the beam.
    wide = Beam(1e12, (2e-6, 2e-6), BEAM.polarization_fraction, 0.0)
    np.testing.assert_allclose(water_image(g, wide, 5e-6, TABLE).photons, base, rtol=1e-6)


def test_gap_pixels_are_masked(ring):
    g, bg = ring
    assert bg.mask[514:551, :].all() and bg.mask[:, 1030:1040].all()  # Eiger 4M module gaps
    assert np.array_equal(bg.mask, g.gap_mask())
    assert np.all(bg.photons[bg.mask] == 0) and np.all(bg.photons[~bg.mask] > 0)


def test_symmetric_about_the_beam_centre_up_to_polarization(ring):
    g, bg = ring
    _, omega_pol = pixel_factors(g.panel(), BEAM.at_wavelength(g.wavelength_angstrom))
    per_pol = np.where(bg.mask, np.nan, bg.photons / omega_pol)
    # Beam centre (1035, 1083.5) px: mirroring the array about it maps pixel centres onto pixel centres.
    assert g.beam_center_px == (g.n_fast / 2, g.n_slow / 2)
    for mirrored in (per_pol[::-1, :], per_pol[:, ::-1], per_pol[::-1, ::-1]):
        both = ~np.isnan(per_pol) & ~np.isnan(mirrored)
        np.testing.assert_allclose(per_pol[both], mirrored[both], rtol=1e-5)
    # With polarization, horizontal (E-vector) directions are dimmer than vertical ones at equal q.
    horizontal, vertical = bg.photons[1060, 1735], bg.photons[383, 1010]  # both ~700 px from the beam
    assert horizontal < 0.9 * vertical


def test_per_pixel_model_agrees_with_pyfais_geometry(ring):
    """The one water model (the detector model's pixel centres) against pyFAI's q, solid angle and polarization
    for the same single panel (pyFAI's polarization factor is Kahn's K, its axis_offset from lab x toward +y)."""
    from pyFAI.geometry import Geometry as PyFAIGeometry

    g, bg = ring
    px = g.pixel_size_m
    bx, by = g.beam_center_px
    ai = PyFAIGeometry(dist=g.camera_length_m, poni1=by * px, poni2=bx * px, detector=g.pyfai_detector(),
                       wavelength=g.wavelength_angstrom * 1e-10)
    q, omega_pol = pixel_factors(g.panel(), BEAM.at_wavelength(g.wavelength_angstrom))
    ref = ai.solidAngleArray(absolute=True) * ai.polarization(factor=BEAM.kahn_factor,
                                                                axis_offset=BEAM.polarization_angle_rad)
    np.testing.assert_allclose(q, ai.qArray() / 10.0, rtol=2e-5, atol=1e-6)  # pyFAI holds q in float32
    np.testing.assert_allclose(omega_pol, ref, rtol=2e-5)
    assert np.all(bg.photons[~bg.mask] > 0)


def test_roundtrip_file_and_bad_tables(tmp_path, ring):
    g, bg = ring
    write_background(tmp_path / "w.h5", bg)
    back = read_background(tmp_path / "w.h5")
    np.testing.assert_array_equal(back.photons, bg.photons)
    assert back.geometry == g and back.params["jet_thickness_m"] == 5e-6
    bad = tmp_path / "bad.csv"
    bad.write_text("q,f2\n0,1\n1,2\n")
    with pytest.raises(InputError, match=r"bad\.csv: water table lacks column 'q_inv_angstrom'"):
        water_image(g, BEAM, 5e-6, bad)
    short = tmp_path / "short.csv"
    short.write_text("q_inv_angstrom,f2_electrons2\n0,6.5\n1.0,10\n")
    with pytest.raises(InputError, match=r"short\.csv: water table ends at q = 1 1/A"):
        water_image(g, BEAM, 5e-6, short)
    with pytest.raises(ValueError, match="jet_thickness"):
        water_image(g, BEAM, 0.0, TABLE)
