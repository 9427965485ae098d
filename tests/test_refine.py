"""The differentiable model against the simulator (pixels and gradients), the cell constraints, and per-still
refinement on simulated noisy stills: what it recovers from a DIALS-like start, and how it reports bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from braggflow.dials import _rotation_angle_deg  # noqa: E402
from braggflow.draws import random_rotation  # noqa: E402
from braggflow.refine.cell import CellConstraints, b_matrix, cell_of_A, rotation  # noqa: E402
from braggflow.refine.model import F2Table, expected_photons, torch_still  # noqa: E402
from braggflow.refine.stills import NoiseModel, RefineSettings, Shoeboxes, refine_still  # noqa: E402
from braggflow.shards import b_matrix as gemmi_b_matrix  # noqa: E402
from braggflow.simulator import (Crystal, Numerics, Panel, Pulse, Still, simulate_still,  # noqa: E402
                                 truth_reflections)
from helpers.nanobragg_cases import _nanobragg_case, _still  # noqa: E402
from test_simulator import _window, constructed_case, nb_A, sf_table  # noqa: E402,F401 - fixtures

CELL = (67.288, 67.288, 106.582, 90.0, 90.0, 90.0)  # the reference hkl file's cell, P 43 21 2 (1IC6)


def _model_image(still, det, sf):
    j, i = np.mgrid[0:det.n_slow, 0:det.n_fast]
    out = expected_photons(torch_still(still, det), F2Table.from_table(sf), torch.as_tensor(i.ravel()),
                           torch.as_tensor(j.ravel()))
    return out.detach().numpy().reshape(det.n_slow, det.n_fast)


@pytest.mark.parametrize("name", ["case1_mono", "case2_poly_mosaic"])
def test_model_reproduces_the_simulator_on_the_nanobragg_cases(name, sf_table, nb_A):
    det, kwargs, ref = _nanobragg_case(name)
    if name == "case2_poly_mosaic":  # 3 x 10 x 4 samples per pixel: a window with spots keeps it quick
        det = _window(det, 380, 260, 260, 240)
    still = _still(nb_A, **kwargs)
    sim = simulate_still(still, det, sf_table, exhaustive=True)
    model = _model_image(still, det, sf_table)
    assert sim.max() > 100 * np.median(sim)  # spots in the window
    assert np.abs(model - sim).max() <= 1e-6 * sim.max()
    assert model.sum() == pytest.approx(sim.sum(), rel=1e-6)


@pytest.mark.parametrize("shape", ["square", "round", "gauss", "tophat"])
def test_model_reproduces_the_simulator_on_a_tilted_polychromatic_mosaic_case(shape, constructed_case, sf_table):
    A, det, kwargs = constructed_case
    still = _still(A, shape=shape, **kwargs)
    for first in (False, True):  # Omega and P per sub-pixel, or once per pixel as nanoBragg caches them
        s = _still(A, shape=shape, first_subpixel_factors=first, **kwargs)
        sim = simulate_still(s, det, sf_table, exhaustive=True)
        model = _model_image(s, det, sf_table)
        assert sim.max() > 0
        assert np.abs(model - sim).max() <= 1e-6 * sim.max(), (shape, first)
    assert still.crystal.shape == shape


@pytest.mark.parametrize("shape", ["square", "round", "gauss"])
def test_gradients_match_finite_differences(shape, constructed_case, sf_table):
    A, det, kwargs = constructed_case
    still = _still(A, shape=shape, **{**kwargs, "oversample": 1})
    sim = simulate_still(still, det, sf_table)
    j, i = np.unravel_index(np.argsort(sim.ravel())[-40:], sim.shape)  # pixels on the brightest spots
    base = torch_still(still, det)
    f2 = F2Table.from_table(sf_table)
    fast, slow = torch.as_tensor(i), torch.as_tensor(j)

    def f(A_, ncells, kappa, scale, origin):
        from dataclasses import replace

        return expected_photons(replace(base, A=A_, ncells=ncells, kappa=kappa, scale=scale, origin_mm=origin),
                                f2, fast, slow) / float(sim.max())

    inputs = tuple(t.clone().requires_grad_(True) for t in (base.A, base.ncells, base.kappa, base.scale,
                                                            base.origin_mm))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-7, atol=1e-5, rtol=1e-4)


def test_b_matrix_and_constraints_follow_cctbx_conventions():
    for cell in (CELL, (93.42, 93.42, 131.08, 90, 90, 120), (50.1, 61.2, 72.3, 90, 104.5, 90),
                 (41.0, 52.0, 63.0, 81.0, 97.0, 113.0)):
        ours = b_matrix(tuple(torch.tensor(float(v), dtype=torch.float64) for v in cell)).numpy()
        np.testing.assert_allclose(ours, gemmi_b_matrix(cell), rtol=1e-12, atol=1e-15)
        assert cell_of_A(rotation(torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)).numpy() @ ours) == \
            pytest.approx(cell, rel=1e-10)
    assert CellConstraints.from_space_group("P 43 21 2", CELL).names == ("a", "c")
    assert CellConstraints.from_space_group("P 61 2 2", CELL).lattice == "hexagonal"
    assert CellConstraints.from_space_group("R 3 :R", CELL).lattice == "rhombohedral"
    mono = CellConstraints.from_space_group("C 1 2 1", (50.0, 60.0, 70.0, 90.0, 104.0, 90.0))
    assert mono.free_angle == 1
    free = torch.tensor([50.0, 60.0, 70.0, 104.0], dtype=torch.float64)
    assert [float(v) for v in mono.cell(free)] == [50.0, 60.0, 70.0, 90.0, 104.0, 90.0]
    with pytest.raises(ValueError, match="space group 'P 7'"):
        CellConstraints.from_space_group("P 7", CELL)
    v = torch.tensor([1e-3, -2e-3, 0.5e-3], dtype=torch.float64)
    r = rotation(v).numpy()
    assert np.allclose(r @ r.T, np.eye(3)) and math.degrees(math.acos((np.trace(r) - 1) / 2)) == pytest.approx(
        math.degrees(float(torch.linalg.vector_norm(v))))


def _small_rotation(axis, deg: float) -> np.ndarray:
    axis = np.asarray(axis, float)
    return rotation(torch.as_tensor(axis / np.linalg.norm(axis) * math.radians(deg))).numpy()


def _misorientation_deg(A1: np.ndarray, A2: np.ndarray) -> float:
    return _rotation_angle_deg(A1 @ np.linalg.inv(A2))


LAMBDAS_A = 1.3 * np.array([0.999, 1.0, 1.001])


def _simulated_still(U: np.ndarray, rng: np.random.Generator, det: Panel, sf):
    """A default-config-like still of orientation U (round transform, N = 40, 3 sources over 0.2 %, 3 domains of
    0.05 deg drawn from rng, Kahn 0.99) on ``det``, and its counts (gain 1, 0.5 ADU readout noise on 0.5 photons
    of background): (still, truth table, counts, reflections above 20 photons)."""
    mosaic = np.array([np.eye(3)] + [_small_rotation(rng.standard_normal(3), 0.05) for _ in range(2)])
    still = Still(Crystal(U @ gemmi_b_matrix(CELL), ncells=(40, 40, 40), shape="round", mosaic_umats=mosaic),
                  Pulse(LAMBDAS_A, fluence_photons_per_m2=3e25, kahn_factor=0.99), Numerics())
    image = simulate_still(still, det, sf)
    truth = truth_reflections(still, det, sf, image=image)
    counts = rng.poisson(image + 0.5) + rng.normal(0.0, 0.5, image.shape)
    return still, truth, counts, truth.photons > 20


@pytest.fixture(scope="module")
def noisy_still(sf_table):
    """``_simulated_still`` on a 512 x 512 detector, and a DIALS-like start: 0.08 deg off, cell 0.2 % long in a and
    0.1 % short in c, N 30, fluence x 0.6, the energy 4e-4 off."""
    rng = np.random.default_rng(5)
    U = random_rotation(rng)
    det = Panel.from_beam_center(100.0, (256, 256), 0.1, 512, 512)
    truth_still, truth, counts, strong = _simulated_still(U, rng, det, sf_table)
    start_B = gemmi_b_matrix((CELL[0] * 1.002, CELL[1] * 1.002, CELL[2] * 0.999, 90, 90, 90))
    start = Still(Crystal(_small_rotation([0.3, -0.5, 0.8], 0.08) @ U @ start_B, ncells=(30, 30, 30), shape="round",
                          mosaic_umats=truth_still.crystal.mosaic_umats),
                  Pulse(LAMBDAS_A * (1 + 4e-4), fluence_photons_per_m2=0.6 * 3e25, kahn_factor=0.99), Numerics())
    return dict(truth_still=truth_still, truth=truth, strong=strong, counts=counts, det=det, start=start, U=U,
                B=gemmi_b_matrix(CELL))


def test_model_reproduces_a_simulated_frame_in_its_shoeboxes(noisy_still, sf_table):
    """The simulate job's own image (screened full average, rel_tol 2e-4) at the pixels a refinement fits."""
    c = noisy_still
    boxes = Shoeboxes.around(c["counts"], None, np.column_stack([c["truth"].x_px, c["truth"].y_px])[c["strong"]], 4)
    frame = simulate_still(c["truth_still"], c["det"], sf_table)
    model = expected_photons(torch_still(c["truth_still"], c["det"]), F2Table.from_table(sf_table),
                             torch.as_tensor(boxes.fast_px), torch.as_tensor(boxes.slow_px)).numpy()
    sim = frame[boxes.slow_px, boxes.fast_px]
    assert np.abs(model - sim).max() <= 2e-4 * frame.max()  # the screening's own guarantee
    bright = sim > 1e-3 * frame.max()  # where the screening took the full average: float32 agreement
    assert bright.sum() > 200 and np.abs(model - sim)[bright].max() <= 1e-6 * frame.max()


def _rmsd_px(still, case, sf) -> float:
    t = case["truth"]
    pred = truth_reflections(still, case["det"], sf, image=simulate_still(still, case["det"], sf))
    where = {tuple(h): i for i, h in enumerate(t.hkl[case["strong"]])}
    xs, ys = t.x_px[case["strong"]], t.y_px[case["strong"]]
    d = np.array([(pred.x_px[j] - xs[where[tuple(h)]], pred.y_px[j] - ys[where[tuple(h)]])
                  for j, h in enumerate(pred.hkl) if tuple(h) in where])
    assert len(d) >= 0.9 * case["strong"].sum()
    return float(np.sqrt((d ** 2).sum(axis=1).mean()))


def test_refinement_recovers_orientation_cell_size_scale_and_energy(noisy_still, sf_table):
    c = noisy_still
    boxes = Shoeboxes.around(c["counts"], None, np.column_stack([c["truth"].x_px, c["truth"].y_px])[c["strong"]], 4)
    assert boxes.n_boxes >= 80
    res = refine_still(c["start"], c["det"], sf_table, boxes, NoiseModel(1.0, 0.5), "P 43 21 2", reference_cell=CELL)
    assert res.converged, res.message
    assert res.energy_refined and res.nll_final < res.nll_start
    assert _misorientation_deg(c["start"].crystal.A_matrix, c["U"] @ c["B"]) > 0.07
    assert _misorientation_deg(res.A_matrix, c["U"] @ c["B"]) <= 0.01
    assert max(abs(x / y - 1) for x, y in zip(res.cell[:3], CELL[:3])) <= 2e-4  # 0.02 %
    assert res.ncells == pytest.approx((40, 40, 40), rel=0.1)
    assert res.energy_factor == pytest.approx(1 + 4e-4, abs=2e-4 * 0.25)
    assert res.scale_factor == pytest.approx(1 / 0.6, rel=0.05)
    start_rmsd, refined_rmsd = _rmsd_px(c["start"], c, sf_table), _rmsd_px(res.still(c["start"]), c, sf_table)
    assert start_rmsd > 0.3 and refined_rmsd <= 0.15
    assert float(np.median(res.background[:, 0])) == pytest.approx(0.5, abs=0.1)  # the 0.5 photons put under it


def test_refining_the_mosaic_domains_recovers_where_the_spots_centre(noisy_still, sf_table):
    """The start knows the mosaic spread but not the domains (a fixed draw, in antipodal pairs: the
    workflow's prior): with the domains refined, the spots land where the crystal's three domains put them."""
    from dataclasses import replace

    from braggflow.refine.shard import model_mosaic

    c = noisy_still
    boxes = Shoeboxes.around(c["counts"], None, np.column_stack([c["truth"].x_px, c["truth"].y_px])[c["strong"]], 4)
    crystal = c["start"].crystal
    start = Still(Crystal(crystal.A_matrix, ncells=crystal.ncells, shape=crystal.shape,
                          mosaic_umats=model_mosaic(0.05, 3, "nanobragg")), c["start"].pulse, c["start"].numerics)
    rmsd, nll = [], []
    for mosaic in (False, True):
        res = refine_still(start, c["det"], sf_table, boxes, NoiseModel(1.0, 0.5), "P 43 21 2",
                           replace(RefineSettings(), refine_mosaic=mosaic), reference_cell=CELL)
        assert res.converged, res.message
        assert (res.mosaic_umats is not None) == mosaic
        rmsd.append(_rmsd_px(res.still(start), c, sf_table))
        nll.append(res.nll_final)
    assert nll[1] < nll[0] - 100  # the data prefer the domains they were made from
    assert rmsd[1] <= 0.05 and rmsd[1] < 0.5 * rmsd[0]


def test_without_a_reference_cell_the_cell_absorbs_the_energy(noisy_still, sf_table):
    """A still fixes only cell / wavelength: without a reference the energy stays and the cell takes the shift."""
    c = noisy_still
    boxes = Shoeboxes.around(c["counts"], None, np.column_stack([c["truth"].x_px, c["truth"].y_px])[c["strong"]], 4)
    res = refine_still(c["start"], c["det"], sf_table, boxes, NoiseModel(1.0, 0.5), "P 43 21 2")
    assert res.converged and not res.energy_refined and res.energy_factor == 1.0
    ratio = [x / y for x, y in zip(res.cell[:3], CELL[:3])]
    assert ratio == pytest.approx([1 + 4e-4] * 3, abs=1e-4)  # lengths scale with the start's wavelength
    assert _misorientation_deg(res.A_matrix, c["U"] @ c["B"]) <= 0.01


def test_bad_input_is_reported_not_raised(noisy_still, sf_table):
    c = noisy_still
    noise = NoiseModel(1.0, 0.5)
    none = Shoeboxes.around(c["counts"], None, np.zeros((0, 2)))
    res = refine_still(c["start"], c["det"], sf_table, none, noise, "P 43 21 2")
    assert not res.converged and "no shoebox pixels" in res.message and res.pixels == 0
    nan = np.full_like(c["counts"], np.nan)
    centres = np.column_stack([c["truth"].x_px, c["truth"].y_px])[c["strong"]]
    assert Shoeboxes.around(nan, None, centres).n_boxes == 0  # non-finite pixels are never fitted
    masked = np.zeros(c["counts"].shape, bool)
    masked[:, :256] = True
    half = Shoeboxes.around(c["counts"], masked, centres, 4)
    assert 0 < half.n_boxes < len(centres) and np.all(half.fast_px >= 256)
    short = refine_still(c["start"], c["det"], sf_table, half, noise, "P 43 21 2",
                         RefineSettings(max_rounds=1, iterations_per_round=1, nll_tolerance=1e-12))
    assert not short.converged and "did not converge" in short.message and short.iterations > 0
    with pytest.raises(ValueError, match="adu_per_photon"):
        NoiseModel(0.0, 1.0)
    with pytest.raises(ValueError, match="reference_cell"):
        refine_still(c["start"], c["det"], sf_table, half, noise, "P 43 21 2", reference_cell=(1.0, 2.0))


def test_detector_refinement_recovers_distance_and_beam_centre(sf_table):
    """Three stills on a panel whose model is 1 mm too far and 2 px off in the beam centre (fast +1.5, slow -1.3):
    the distance comes back within 0.05 mm and the beam centre within 0.1 px, with every still's own parameters."""
    from braggflow.refine.stills import refine_detector

    true_panel = Panel.from_beam_center(100.0, (256, 256), 0.1, 512, 512)
    model_panel = Panel.from_beam_center(101.0, (256 + 1.5, 256 - 1.3), 0.1, 512, 512)
    starts, boxes = [], []
    for seed in range(3):
        rng = np.random.default_rng(100 + seed)
        U = _small_rotation(rng.standard_normal(3), float(rng.uniform(0, 180)))
        truth, refl, counts, strong = _simulated_still(U, rng, true_panel, sf_table)
        boxes.append(Shoeboxes.around(counts, None, np.column_stack([refl.x_px, refl.y_px])[strong], 5))
        starts.append(Still(Crystal(_small_rotation(rng.standard_normal(3), 0.02) @ U @ gemmi_b_matrix(CELL),
                                    ncells=(35, 35, 35), shape="round", mosaic_umats=truth.crystal.mosaic_umats),
                            Pulse(LAMBDAS_A, fluence_photons_per_m2=2e25, kahn_factor=0.99), Numerics()))
    res = refine_detector(starts, boxes, model_panel, sf_table, NoiseModel(1.0, 0.5), "P 43 21 2")
    assert res.converged, res.message
    assert res.nll_final < res.nll_start
    assert res.panel.close_distance_mm == pytest.approx(100.0, abs=0.05)
    x, y, _ = res.panel.ray_to_px(np.array([[0.0, 0.0, -1.0]]))
    assert (x[0], y[0]) == (pytest.approx(256.0, abs=0.1), pytest.approx(256.0, abs=0.1))
    assert res.distance_shift_mm[0] == pytest.approx(-1.0, abs=0.05)
    assert tuple(res.beam_shift_px[0]) == (pytest.approx(-1.5, abs=0.1), pytest.approx(1.3, abs=0.1))
    assert all(s.converged for s in res.stills) and len(res.stills) == 3


def _halves(det: Panel) -> list[Panel]:
    """``det`` as two panels: its upper and lower halves in slow."""
    from dataclasses import replace

    half = det.n_slow // 2
    lower = tuple(np.array(det.origin_mm) + half * det.pixel_size_mm * np.array(det.slow_axis))
    return [replace(det, n_slow=half), replace(det, origin_mm=lower, n_slow=det.n_slow - half)]


def _boxes_on_halves(case, half_width=4):
    t, strong = case["truth"], case["strong"]
    x, y = t.x_px[strong], t.y_px[strong]
    half = case["det"].n_slow // 2
    on = (y >= half).astype(int)
    stack = case["counts"].reshape(2, half, case["det"].n_fast)
    return Shoeboxes.around(stack, None, np.column_stack([x, y - half * on]), half_width, on)


def test_detector_refinement_moves_each_panel_on_its_own(sf_table):
    """Two stills on a detector of two halves, each off in its own way in the model (upper half 0.6 mm too far
    and beam centre +1.2, -0.8 px; lower half 0.5 mm too near and -0.9, +1.1 px), and a third panel no spot falls
    on: each half comes back to its true place (0.05 mm along the normal, 0.1 px across), the third is left where
    it was."""
    from dataclasses import replace

    from braggflow.refine.stills import refine_detector

    true_det = Panel.from_beam_center(100.0, (256, 256), 0.1, 512, 512)
    true_halves = _halves(true_det)
    spare = replace(true_det, origin_mm=tuple(np.array(true_det.origin_mm) + [80.0, 0.0, 0.0]), n_fast=50, n_slow=50)
    normal = np.cross(true_det.fast_axis, true_det.slow_axis)
    normal *= np.sign(np.dot(normal, true_det.origin_mm)) / np.linalg.norm(normal)
    errors = [(0.6, (1.2, -0.8)), (-0.5, (-0.9, 1.1))]
    model = [replace(p, origin_mm=tuple(np.array(p.origin_mm) + d * normal
                                        - 0.1 * (b[0] * np.array(p.fast_axis) + b[1] * np.array(p.slow_axis))))
             for p, (d, b) in zip(true_halves, errors)] + [spare]
    starts, boxes = [], []
    for seed in range(2):  # two stills: ~50 spots on each half
        rng = np.random.default_rng(200 + seed)
        U = _small_rotation(rng.standard_normal(3), float(rng.uniform(0, 180)))
        truth, refl, counts, strong = _simulated_still(U, rng, true_det, sf_table)
        boxes.append(_boxes_on_halves(dict(truth=refl, strong=strong, det=true_det, counts=counts), 5))
        starts.append(Still(Crystal(_small_rotation(rng.standard_normal(3), 0.02) @ U @ gemmi_b_matrix(CELL),
                                    ncells=(35, 35, 35), shape="round", mosaic_umats=truth.crystal.mosaic_umats),
                            Pulse(LAMBDAS_A, fluence_photons_per_m2=2e25, kahn_factor=0.99), Numerics()))
    res = refine_detector(starts, boxes, model, sf_table, NoiseModel(1.0, 0.5), "P 43 21 2")
    assert res.converged, res.message
    assert list(res.groups) == [0, 1, 2] and np.isnan(res.distance_shift_mm[2])
    assert res.panels[2].origin_mm == spare.origin_mm
    for k, (p, (d, b)) in enumerate(zip(true_halves, errors)):
        off = np.array(res.panels[k].origin_mm) - np.array(p.origin_mm)
        assert abs(off @ normal) <= 0.05 and np.linalg.norm(off - (off @ normal) * normal) <= 0.1 * 0.1, (k, off)
        assert res.distance_shift_mm[k] == pytest.approx(-d, abs=0.05)
        np.testing.assert_allclose(res.beam_shift_px[k], -np.array(b), atol=0.1)
    with pytest.raises(ValueError, match="panel_groups"):
        refine_detector(starts, boxes, model, sf_table, NoiseModel(1.0, 0.5), "P 43 21 2", panel_groups=[0, 1])
    with pytest.raises(ValueError, match="detector has 3 panels"):
        res.panel


def test_model_reproduces_the_simulator_through_a_psf_on_two_panels(noisy_still, sf_table):
    """Shoeboxes on both halves of a detector cut in two, the expected photons through nanoBragg's Gaussian PSF:
    the simulator's exhaustive image of each panel, blurred by ``apply_psf``, at the fitted pixels (boxes at a
    panel's edge lose the photons spread off it, as the simulator does)."""
    from braggflow.refine.stills import _StillProblem
    from braggflow.simulator import apply_psf

    c = noisy_still
    panels = _halves(c["det"])
    boxes = _boxes_on_halves(c)
    assert set(boxes.panels.tolist()) == {0, 1} and boxes.n_boxes >= 80
    psf_px = 1.7
    prob = _StillProblem(c["truth_still"], panels, sf_table, boxes, NoiseModel(), "P 43 21 2", RefineSettings(),
                         None, None, psf_px)
    with torch.no_grad():
        model = prob.bragg().numpy()
    images = [apply_psf(simulate_still(c["truth_still"], p, sf_table, exhaustive=True), psf_px) for p in panels]
    sim = np.array([images[k][s, f] for k, s, f in zip(boxes.panel, boxes.slow_px, boxes.fast_px)])
    peak = max(float(i.max()) for i in images)
    assert np.abs(model - sim).max() <= 1e-6 * peak
    assert np.abs(model - sim).max() > 0 or sim.max() > 0.1 * peak


def test_per_shoebox_intensities_recover_what_the_spot_positions_fix(noisy_still, sf_table):
    """A real still's F is not known: every shoebox its own intensity (F = 1 in the model), on two panels. Its
    spots' positions and shapes remain, and they fix a turn about the beam and the cell (which move every spot
    on the detector); a turn about an axis across the beam mostly changes which spots appear, which free
    intensities absorb."""
    c = noisy_still
    boxes = _boxes_on_halves(c)
    crystal = c["start"].crystal
    start_B = gemmi_b_matrix((CELL[0] * 1.002, CELL[1] * 1.002, CELL[2] * 0.999, 90, 90, 90))
    start = Still(Crystal(_small_rotation([0, 0, 1], 0.08) @ c["U"] @ start_B, ncells=crystal.ncells,
                          shape=crystal.shape, mosaic_umats=crystal.mosaic_umats), c["start"].pulse,
                  c["start"].numerics)
    res = refine_still(start, _halves(c["det"]), None, boxes, NoiseModel(1.0, 0.5), "P 43 21 2",
                       RefineSettings(intensities="per_shoebox"), reference_cell=CELL)
    assert res.converged, res.message
    assert res.nll_final < res.nll_start and res.stages[0]["parameters"] == ["intensity", "background"]
    assert _misorientation_deg(start.crystal.A_matrix, c["U"] @ c["B"]) > 0.07
    assert _misorientation_deg(res.A_matrix, c["U"] @ c["B"]) <= 0.01
    assert max(abs(x / y - 1) for x, y in zip(res.cell[:3], CELL[:3])) <= 2e-4
    assert _rmsd_px(start, c, sf_table) > 0.3 and _rmsd_px(res.still(start), c, sf_table) <= 0.05
    with pytest.raises(ValueError, match="structure factors are needed"):
        refine_still(c["start"], c["det"], None, boxes, NoiseModel(), "P 43 21 2")
    with pytest.raises(ValueError, match="intensities must be one of"):
        RefineSettings(intensities="sometimes")
