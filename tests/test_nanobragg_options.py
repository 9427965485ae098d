"""nanoBragg's own options that the simulator and the differentiable model follow, each against an image nanoBragg
computed (tests/data/nanobragg/cases.json has the commands): -default_F filling every unlisted index of the
listed range (F000 included), the tricubic interpolation of F that nanoBragg switches on for N <= 2, and a thick
sensor's layers (-detector_thick, -detector_thicksteps, -detector_abs); and the thick sensor's physics where
braggflow goes further than nanoBragg (each layer weighted by what it absorbs, its sample at the mean depth)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dataclasses import replace

from braggflow.draws import random_rotation
from braggflow.shards import b_matrix
from braggflow.simulator import (NANOBRAGG_DEFAULT_FLUENCE_PHOTONS_PER_M2, Crystal, Numerics, Panel, Pulse, Still,
                                 StructureFactorTable, load_hkl_text, simulate_still, truth_reflections)
from braggflow.simulator.sf_table import interpolated_f, interpolation_safe, lagrange4
from helpers.nanobragg_cases import DATA, MOSFLM_TO_DIALS, _still, nanobragg_reciprocal_mosflm

A = MOSFLM_TO_DIALS @ nanobragg_reciprocal_mosflm()
# -pixel 0.3 -detpixels 256: nanoBragg's default beam centre, (detsize + pixel) / 2, is pixel 129 here
SMALL = Panel.from_beam_center(100.0, (129.0, 129.0), 0.3, 256, 256)


def _case(name: str, ncells: int, **numerics):
    ref = np.load(DATA / f"{name}_photons.npy")
    assert f"-N {ncells} " in json.loads((DATA / "cases.json").read_text())[name]["command"]
    still = _still(A, ncells=(ncells,) * 3, wavelengths_A=[1.5498], oversample=2, first_subpixel_factors=True,
                   fluence_photons_per_m2=NANOBRAGG_DEFAULT_FLUENCE_PHOTONS_PER_M2, **numerics)
    return still, ref


@pytest.fixture(scope="module")
def sf_default_30() -> StructureFactorTable:
    return load_hkl_text(DATA / "F_random_1ic6cell.hkl", default_F=30.0)


def _model_matches_and_gradchecks(still, det, sf, fields, step=1):
    """The differentiable model against the simulator's exhaustive image on every ``step``-th pixel (1e-6 of the
    maximum), and its gradients in the TorchStill ``fields`` against finite differences on the 30 brightest of
    them; returns the simulated image."""
    torch = pytest.importorskip("torch")
    from braggflow.refine.model import F2Table, expected_photons, torch_still

    sim = simulate_still(still, det, sf, exhaustive=True)
    j, i = np.mgrid[0:det.n_slow:step, 0:det.n_fast:step]
    ts = torch_still(still, det)
    f2 = F2Table.from_table(sf)
    fast, slow = torch.as_tensor(i.ravel()), torch.as_tensor(j.ravel())
    model = expected_photons(ts, f2, fast, slow).detach().numpy()
    assert np.abs(model - sim[j.ravel(), i.ravel()]).max() <= 1e-6 * sim.max()
    sel = np.argsort(-model)[:30]

    def f(*values):
        return expected_photons(replace(ts, **dict(zip(fields, values))), f2, fast[sel], slow[sel]) / float(sim.max())

    inputs = tuple(getattr(ts, k).clone().requires_grad_(True) for k in fields)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-7, atol=1e-5, rtol=1e-4)
    return sim


def test_default_F_fills_every_unlisted_index_of_the_range(sf_default_30):
    listed = np.loadtxt(DATA / "F_random_1ic6cell.hkl")
    assert not (listed[:, :3] == 0).all(axis=1).any()  # F000 is not listed
    assert sf_default_30.lookup([[0, 0, 0], [99, 0, 0]]).tolist() == [30.0, 30.0]
    assert np.isclose(sf_default_30.amplitudes, 30.0).sum() >= sf_default_30.amplitudes.size - len(listed)
    row = listed[np.argmax(listed[:, 3])]
    assert sf_default_30.lookup([row[:3]])[0] == row[3]


@pytest.mark.parametrize("exhaustive, tol", [(True, 1e-6), (False, 2e-4)])
def test_default_F_image_matches_nanobragg(sf_default_30, exhaustive, tol):
    still, ref = _case("case3_default_F", 8)
    img = simulate_still(still, SMALL, sf_default_30, exhaustive=exhaustive)
    assert np.abs(img - ref).max() <= tol * ref.max()
    assert img.sum() == pytest.approx(ref.sum(), rel=tol)
    # with 0 at the unlisted indices (as before) the image is off by more than 0.5 % of its maximum
    zeroed = np.where(np.isclose(sf_default_30.amplitudes, 30.0), 0.0, sf_default_30.amplitudes)
    old = simulate_still(still, SMALL, StructureFactorTable(zeroed, sf_default_30.hkl_min, 30.0), exhaustive=True)
    assert np.abs(old - ref).max() > 0.005 * ref.max()


def test_tricubic_interpolation_matches_nanobragg_for_two_cells(sf_default_30):
    still, ref = _case("case4_interpolate", 2)
    assert still.numerics.interpolates(still.crystal.ncells)  # nanoBragg's auto: on for N <= 2
    img = simulate_still(still, SMALL, sf_default_30)
    assert np.abs(img - ref).max() <= 1e-6 * ref.max()
    nearest = simulate_still(_case("case4_interpolate", 2, interpolate=False)[0], SMALL, sf_default_30)
    assert np.abs(nearest - ref).max() > 0.1 * ref.max()  # the nearest node alone is far off


def test_interpolation_is_the_cubic_through_the_nodes(sf_default_30):
    sf = sf_default_30
    for w in (lagrange4(np.array(0.3)),):
        assert sum(float(x) for x in w) == pytest.approx(1.0)
    nodes = np.array([[3.0, -2.0, 5.0], [0.0, 0.0, 0.0]])
    got = interpolated_f(*(nodes[:, i] for i in range(3)), sf, np)
    np.testing.assert_allclose(got, sf.lookup(nodes.astype(int)), rtol=1e-12)  # exact at the nodes
    # a cubic in h is reproduced exactly between the nodes
    h = np.arange(sf.hkl_min[0], sf.hkl_max[0] + 1, dtype=float)
    cubic = 1.0 + 0.5 * h - 0.02 * h**2 + 0.003 * h**3
    table = StructureFactorTable(np.broadcast_to(cubic[:, None, None], sf.amplitudes.shape).copy(), sf.hkl_min)
    x = np.array([-3.7, 0.25, 11.5])
    np.testing.assert_allclose(interpolated_f(x, np.zeros(3), np.zeros(3), table, np),
                               1.0 + 0.5 * x - 0.02 * x**2 + 0.003 * x**3, rtol=1e-12)
    edge = np.array([sf.hkl_max[0] - 1.5, sf.hkl_min[0] + 1.9, 0.0])
    assert interpolation_safe(edge, np.zeros(3), np.zeros(3), sf, np).tolist() == [False, False, True]


def test_model_interpolates_as_the_simulator_with_gradients(sf_default_30):
    pytest.importorskip("torch")
    from braggflow.refine.model import torch_still

    still, _ = _case("case4_interpolate", 2)
    assert torch_still(still, SMALL).interpolate
    _model_matches_and_gradchecks(still, SMALL, sf_default_30, ("A", "kappa"), step=3)

def test_sensor_layers_match_nanobragg():
    """nanoBragg's -detector_thick 450 -detector_thicksteps 3: three layers of 225 um (thickness / (steps - 1)) with
    their front faces at 0, 225 and 450 um, Omega from the front face, all scaled by the last layer's capture
    fraction (its shared variable after the loop); with -detector_abs 1 m the layers' own fractions, which
    braggflow applies, differ from it by < 5e-4, so the layers' geometry is what is checked."""
    sf = load_hkl_text(DATA / "F_random_1ic6cell.hkl")
    still, ref = _case("case5_sensor_layers", 8, sensor_layers=3, layer_depth="front")
    sensor = replace(SMALL, thickness_mm=0.675, mu_per_mm=1e-3)
    for exhaustive in (True, False):
        img = simulate_still(still, sensor, sf, exhaustive=exhaustive)
        assert np.abs(img - ref).max() <= 1e-3 * ref.max()
    thin_sum = simulate_still(_case("case5_sensor_layers", 8)[0], SMALL, sf)
    scaled = thin_sum * (ref.sum() / thin_sum.sum())
    assert np.abs(scaled - ref).max() > 0.1 * ref.max()  # one plane is not the three layers


def test_absorption_and_obliquity_on_a_uniform_field():
    det = Panel.from_beam_center(60.0, (20, 20), 0.5, 40, 40)
    table = StructureFactorTable(np.zeros((1, 1, 1)), (0, 0, 0), default_F=3.0)
    still = Still(Crystal(np.diag([0.02] * 3), ncells=(1, 1, 1), shape="square"),
                  Pulse([1.0], fluence_photons_per_m2=1e26), Numerics(sensor_layers=4))
    thin = simulate_still(still, det, table, exhaustive=True)
    sensor = replace(det, thickness_mm=0.45, mu_per_mm=2.0)
    thick = simulate_still(still, sensor, table, exhaustive=True)
    pos = det.pixel_centres_lab()
    cos = (pos @ sensor.outward_normal) / np.linalg.norm(pos, axis=-1)
    # independently, by quadrature over the depth z: absorbed (mu / cos) exp(-mu z / cos) dz in the pixel's column,
    # seen under Omega(z) = pixel^2 (D + z) / R(z)^3 (inverse square to the depth), over Omega(0)
    z = (np.arange(2000) + 0.5) * (0.45 / 2000)
    r0 = np.linalg.norm(pos, axis=-1)[..., None]
    rz = np.linalg.norm(pos[..., None, :] + z[:, None] * sensor.outward_normal, axis=-1)
    density = (2.0 / cos[..., None]) * np.exp(-2.0 * z / cos[..., None]) * (0.45 / 2000)
    expected = (density * (60.0 + z) / rz**3).sum(-1) / (60.0 / r0[..., 0] ** 3)
    ok = thin > 0
    np.testing.assert_allclose((thick / np.where(ok, thin, 1))[ok], expected[ok], rtol=1e-3)
    assert (expected < 1 - np.exp(-2.0 * 0.45 / cos)).all()  # below the stopped fraction: deeper is farther
    ratio = thick[ok] / thin[ok]
    assert ratio.max() > ratio.min() * 1.005  # oblique rays cross more silicon


@pytest.mark.parametrize("layers", [1, 4])
def test_thick_sensor_spots_centre_where_dials_parallax_puts_them(layers):
    """Si 450 um at 7 keV (mu 22 / mm), 60 mm: the image's spot centroids sit where the truth table puts them
    (rays moved by dxtbx's mean absorption path), 0.1-0.3 px outward of a thin sensor's."""
    sf = load_hkl_text(DATA / "F_random_1ic6cell.hkl")
    det = Panel.from_beam_center(60.0, (200, 200), 0.075, 400, 400)
    sensor = replace(det, thickness_mm=0.45, mu_per_mm=22.0)
    a = random_rotation(np.random.default_rng(3)) @ b_matrix((67.288, 67.288, 106.582, 90, 90, 90))
    still = Still(Crystal(a, ncells=(12, 12, 12), shape="round"), Pulse([1.77], fluence_photons_per_m2=1e26),
                  Numerics(oversample=3, sensor_layers=layers))
    shifts, errors = [], []
    for panel in (det, sensor):
        img = simulate_still(still, panel, sf)
        truth = truth_reflections(still, panel, sf, image=img)
        r = np.hypot(truth.x_px - 200, truth.y_px - 200)
        sel = np.argsort(-truth.photons * (r > 120))[:12]
        xy = np.column_stack([truth.x_px, truth.y_px])[sel]
        shifts.append(xy)
        for x, y in xy:
            x0, y0 = int(x), int(y)
            w = img[y0 - 6:y0 + 7, x0 - 6:x0 + 7]
            jj, ii = np.mgrid[y0 - 6:y0 + 7, x0 - 6:x0 + 7] + 0.5
            errors.append(np.hypot((w * ii).sum() / w.sum() - x, (w * jj).sum() / w.sum() - y))
    assert max(errors) < 0.02
    moved = np.linalg.norm(shifts[1] - shifts[0], axis=1)
    assert 0.05 < moved.min() and moved.max() < 0.4
    outward = np.einsum("ij,ij->i", shifts[1] - shifts[0], shifts[0] - 200.0)
    assert (outward > 0).all()


def test_model_follows_the_thick_sensor_with_gradients():
    sf = load_hkl_text(DATA / "F_random_1ic6cell.hkl")
    det = replace(Panel.from_beam_center(60.0, (60, 60), 0.3, 120, 120), thickness_mm=0.45, mu_per_mm=5.0)
    a = random_rotation(np.random.default_rng(4)) @ b_matrix((67.288, 67.288, 106.582, 90, 90, 90))
    for layers, depth in ((3, "mean"), (2, "front")):
        still = Still(Crystal(a, ncells=(6, 6, 6), shape="gauss"), Pulse([1.3, 1.31], fluence_photons_per_m2=1e26),
                      Numerics(oversample=2, sensor_layers=layers, layer_depth=depth))
        _model_matches_and_gradchecks(still, det, sf, ("origin_mm", "A"))

def test_divergence_matches_nanobragg():
    """-divergence 20 -divsteps 3 (mrad): nanoBragg's 3 x 3 grid of incident directions with the corners cut
    (-round_div, its default), five sources of equal weight; polarization from the first source (its caching)."""
    from braggflow.simulator import divergent_directions

    sf = load_hkl_text(DATA / "F_random_1ic6cell.hkl")
    dirs = divergent_directions(0.02, 0.02, 3, 3)
    assert len(dirs) == 5 and np.allclose(dirs[0], [-np.sin(0.01), 0.0, -np.cos(0.01)])
    ref = np.load(DATA / "case6_divergence_photons.npy")
    still = _still(A, ncells=(8, 8, 8), wavelengths_A=[1.5498] * 5, directions=dirs, oversample=2,
                   first_subpixel_factors=True, fluence_photons_per_m2=NANOBRAGG_DEFAULT_FLUENCE_PHOTONS_PER_M2)
    for exhaustive in (True, False):
        img = simulate_still(still, SMALL, sf, exhaustive=exhaustive)
        assert np.abs(img - ref).max() <= 1e-6 * ref.max()
    parallel = simulate_still(_case("case6_divergence", 8)[0], SMALL, sf)
    assert np.abs(parallel - ref).max() > ref.max()  # without the divergence, spots are elsewhere and sharper
    # the truth table follows each source's own Ewald sphere
    truth = truth_reflections(still, SMALL, sf, image=img)
    assert truth.photons.sum() > 0.8 * img.sum()


def test_model_follows_the_divergent_beam_with_gradients():
    from braggflow.simulator import divergent_directions

    sf = load_hkl_text(DATA / "F_random_1ic6cell.hkl")
    det = Panel.from_beam_center(80.0, (60, 60), 0.3, 120, 120)
    a = random_rotation(np.random.default_rng(6)) @ b_matrix((67.288, 67.288, 106.582, 90, 90, 90))
    dirs = divergent_directions(0.004, 0.002, 3, 2, round_div=False)
    still = Still(Crystal(a, ncells=(10, 10, 10), shape="round"),
                  Pulse(np.repeat([1.3, 1.302], len(dirs)), directions=np.tile(dirs, (2, 1)), kahn_factor=0.9,
                        fluence_photons_per_m2=1e26), Numerics(oversample=2))
    sim = _model_matches_and_gradchecks(still, det, sf, ("A", "incident"))
    screened = simulate_still(still, det, sf)
    assert np.abs(screened - sim).max() <= 2e-4 * sim.max()
