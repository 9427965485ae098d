"""nanoBragg's own options that the simulator and the differentiable model follow, each against an image nanoBragg
computed (tests/data/nanobragg/cases.json has the commands): -default_F filling every unlisted index of the
listed range (F000 included), and the tricubic interpolation of F that nanoBragg switches on for N <= 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from braggflow.simulator import (NANOBRAGG_DEFAULT_FLUENCE_PHOTONS_PER_M2, Numerics, Panel, StructureFactorTable,
                                 load_hkl_text, simulate_still)
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
    torch = pytest.importorskip("torch")
    from dataclasses import replace

    from braggflow.refine.model import F2Table, expected_photons, torch_still

    still, _ = _case("case4_interpolate", 2)
    det = SMALL
    sim = simulate_still(still, det, sf_default_30, exhaustive=True)
    j, i = np.mgrid[0:det.n_slow:3, 0:det.n_fast:3]
    ts = torch_still(still, det)
    assert ts.interpolate
    f2 = F2Table.from_table(sf_default_30)
    fast, slow = torch.as_tensor(i.ravel()), torch.as_tensor(j.ravel())
    model = expected_photons(ts, f2, fast, slow).detach().numpy()
    assert np.abs(model - sim[j.ravel(), i.ravel()]).max() <= 1e-6 * sim.max()
    sel = np.argsort(-model)[:30]

    def f(A_, kappa):
        return expected_photons(replace(ts, A=A_, kappa=kappa), f2, fast[sel], slow[sel]) / float(sim.max())

    inputs = (ts.A.clone().requires_grad_(True), ts.kappa.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-7, atol=1e-5, rtol=1e-4)
