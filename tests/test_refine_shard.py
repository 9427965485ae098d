"""The refinement of a DIALS shard (refine.shard): what each still starts from, how bad stills are reported, the
model's mosaic, the refined models as a DIALS experiment list, and the scores against the truth."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from braggflow.beam import Beam  # noqa: E402
from braggflow.draws import random_rotation  # noqa: E402
from braggflow.formats.expt import ExptStill, write_expt  # noqa: E402
from braggflow.refine.shard import (RefinementSettings, StillPrior, mean_orientation, model_mosaic,  # noqa: E402
                                    refine_shard, still_inputs)
from braggflow.refine.stills import NoiseModel  # noqa: E402
from braggflow.dials import _rotation_angle_deg  # noqa: E402
from braggflow.shards import b_matrix  # noqa: E402
from braggflow.simulator import Panel, simulate_still, truth_reflections  # noqa: E402
from test_simulator import sf_table  # noqa: E402,F401 - fixture

CELL = (67.288, 67.288, 106.582, 90.0, 90.0, 90.0)
SIM = {"crystal_shape": "round", "ncells": {"dist": "uniform", "low": 30, "high": 50}, "mosaic_spread_deg": 0.05,
       "mosaic_domains": 3, "mosaic_model": "nanobragg", "spectrum_shape": "gaussian", "bandwidth_frac": 0.002,
       "spectrum_samples": 3, "oversample": 1, "sensor_layers": 0}
BEAM = Beam.from_config({"photons_per_pulse": 3e12, "size_um": [1.0, 1.0], "polarization_fraction": 0.99,
                         "polarization_angle_deg": 0.0, "divergence_mrad": [0.0, 0.0],
                         "divergence_steps": [1, 1]}).at_wavelength(1.3)
SETTINGS = RefinementSettings(shoebox_half_width_px=4, max_spots=150, ncells_per_axis=False, refine_cell=True,
                              refine_energy=True, nll_tolerance=0.01, max_rounds=25, iterations_per_round=20,
                              rotation_bound_deg=1.0, cell_bound_rel=0.05, ncells_bound_factor=4.0,
                              energy_bound_rel=0.02, refine_mosaic=True, detector_stills=3, distance_bound_mm=5.0,
                              beam_bound_px=10.0)


def test_model_mosaic_keeps_the_crystal_orientation():
    for n in (1, 2, 3, 4, 5):
        u = model_mosaic(0.05, n, "nanobragg")
        assert u.shape == (n, 3, 3)
        np.testing.assert_allclose(u[0], np.eye(3))
        assert _rotation_angle_deg(mean_orientation(u)) < 1e-9  # antipodal pairs: mean orientation = crystal's
        assert max(_rotation_angle_deg(r) for r in u) <= 0.05 + 1e-9
    assert _rotation_angle_deg(model_mosaic(0.05, 3, "nanobragg")[1]) > 0.01  # the spread is kept


def test_prior_is_the_simulation_model():
    prior = StillPrior.from_config(SIM, BEAM)
    assert prior.ncells == 40.0 and prior.crystal_shape == "round" and prior.oversample == 1
    still = prior.still(np.eye(3) * 0.01, 1.3)
    lam = still.pulse.wavelengths_A
    assert len(lam) == 3 and still.pulse.weights @ lam == pytest.approx(1.3)
    np.testing.assert_allclose(lam, 1.3 * np.array([0.998, 1.0, 1.002]))  # gaussian samples over +-bandwidth
    assert still.pulse.kahn_factor == pytest.approx(0.98)


def _export(frames: list[dict], det: Panel) -> dict[str, np.ndarray]:
    n = len(frames)
    ex = {"indexed": np.array([f["indexed"] for f in frames]),
          "a_matrix": np.array([f.get("A", np.full((3, 3), np.nan)).ravel() for f in frames]),
          "s0": np.tile([0.0, 0.0, -1 / 1.3], (n, 1)),
          "panel_origin_mm": np.tile(np.array(det.origin_mm)[None, None], (n, 1, 1)),
          "panel_fast_axis": np.tile(np.array(det.fast_axis)[None, None], (n, 1, 1)),
          "panel_slow_axis": np.tile(np.array(det.slow_axis)[None, None], (n, 1, 1)),
          "panel_pixel_size_mm": np.full((n, 1, 2), det.pixel_size_mm),
          "panel_image_size": np.tile([[det.n_fast, det.n_slow]], (n, 1, 1)),
          "panel_parallax_mu_per_mm": np.zeros((n, 1)), "panel_parallax_t0_mm": np.zeros((n, 1))}
    xy = [(i, f["strong"]) for i, f in enumerate(frames) if len(f.get("strong", []))]
    ex["strong_frame"] = np.concatenate([np.full(len(s), i) for i, s in xy]) if xy else np.zeros(0, int)
    ex["strong_panel"] = np.zeros(len(ex["strong_frame"]), int)
    ex["strong_x"] = np.concatenate([s[:, 0] for _, s in xy]) if xy else np.zeros(0)
    ex["strong_y"] = np.concatenate([s[:, 1] for _, s in xy]) if xy else np.zeros(0)
    return ex


@pytest.fixture(scope="module")
def shard(sf_table):
    """Four frames on a 512 x 512 panel: one still DIALS indexed 0.05 deg off, one it did not index, one indexed
    without strong spots, one indexed whose counts are all NaN."""
    rng = np.random.default_rng(11)
    det = Panel.from_beam_center(100.0, (256, 256), 0.1, 512, 512)
    prior = StillPrior.from_config(SIM, BEAM)
    u = random_rotation(rng)
    truth_still = prior.still(u @ b_matrix(CELL), 1.3)
    image = simulate_still(truth_still, det, sf_table)
    truth = truth_reflections(truth_still, det, sf_table, image=image)
    counts = np.stack([rng.poisson(image + 0.5).astype(float)] * 3 + [np.full(image.shape, np.nan)])
    strong = np.column_stack([truth.x_px, truth.y_px])[truth.photons > 10]
    off = np.array([[1, -0.0005, 0.0004], [0.0005, 1, -0.0006], [-0.0004, 0.0006, 1]])  # ~0.05 deg
    start_a = off @ u @ b_matrix(CELL)
    export = _export([{"indexed": True, "A": start_a, "strong": strong}, {"indexed": False},
                      {"indexed": True, "A": start_a}, {"indexed": True, "A": start_a, "strong": strong}], det)
    return dict(det=det, prior=prior, export=export, counts=counts, truth_a=u @ b_matrix(CELL), start_a=start_a)


def test_a_shard_refines_its_good_still_and_reports_the_others(shard, sf_table):
    items = still_inputs(shard["export"], shard["counts"], None, shard["prior"], SETTINGS)
    assert [it.message for it in items][1] == "DIALS did not index this still"
    rows, refined = refine_shard(items, sf_table, NoiseModel(1.0, 0.0), "P 43 21 2", CELL, SETTINGS)
    assert [r["frame"] for r in rows] == [0, 1, 2, 3]
    assert [r["status"] for r in rows] == ["converged", "skipped", "failed", "failed"]
    assert rows[1]["message"] == "DIALS did not index this still" and refined[1] is None
    assert "no shoebox pixels" in rows[2]["message"] and "no shoebox pixels" in rows[3]["message"]
    good = rows[0]
    assert good["converged"] and 0 < good["spots"] <= SETTINGS.max_spots
    before = _rotation_angle_deg(shard["start_a"] @ np.linalg.inv(shard["truth_a"]))
    after = _rotation_angle_deg(refined[0].A_matrix @ np.linalg.inv(shard["truth_a"]))
    assert before > 0.04 and after < 0.01
    assert abs(good["energy_kev"] / good["energy_start_kev"] - 1) < 2e-4  # the file's energy was right
    assert abs(good["ncells_na"] / 40 - 1) < 0.1
    assert np.isfinite(rows[2]["A0_00"]) and np.isnan(rows[2]["A00"])  # the start is kept, no refined model


def test_a_multi_panel_export_takes_each_spot_on_its_own_panel(shard):
    """The 512 x 512 panel as two 512 x 256 halves: the same spots, each shoebox on the half it lies on, at the
    same pixels and counts; a frame whose shape is not the panels' is reported."""
    ex = dict(shard["export"])
    n = len(ex["indexed"])
    det = shard["det"]
    lower = np.array(det.origin_mm) + 256 * det.pixel_size_mm * np.array(det.slow_axis)
    ex["panel_origin_mm"] = np.stack([np.tile(np.array(det.origin_mm), (n, 1)), np.tile(lower, (n, 1))], axis=1)
    for k in ("panel_fast_axis", "panel_slow_axis", "panel_pixel_size_mm", "panel_parallax_mu_per_mm",
              "panel_parallax_t0_mm"):
        ex[k] = np.concatenate([ex[k], ex[k]], axis=1)
    ex["panel_image_size"] = np.tile([[512, 256]], (n, 2, 1))
    ex["strong_panel"] = (ex["strong_y"] >= 256).astype(int)
    ex["strong_y"] = np.where(ex["strong_panel"] == 1, ex["strong_y"] - 256, ex["strong_y"])
    halves = shard["counts"].reshape(len(shard["counts"]), 2, 256, 512)
    one, two = (still_inputs(e, c, None, shard["prior"], SETTINGS)[0] for e, c in
                ((shard["export"], shard["counts"]), (ex, halves)))
    assert len(two.panels) == 2 and two.boxes.n_boxes == one.boxes.n_boxes > 10
    on_two = two.boxes.panel == 1
    assert on_two.any() and (~on_two).any()
    # every pixel of a box whose spot is on the upper half stays there (shoeboxes are clipped to their panel)
    whole_slow = two.boxes.slow_px + 256 * two.boxes.panel
    key = lambda f, s: set(zip(f.tolist(), s.tolist()))  # noqa: E731
    assert key(two.boxes.fast_px, whole_slow) <= key(one.boxes.fast_px, one.boxes.slow_px)
    np.testing.assert_array_equal(two.boxes.counts_adu, halves[0][two.boxes.panel, two.boxes.slow_px,
                                                                   two.boxes.fast_px])
    bad = still_inputs(ex, shard["counts"], None, shard["prior"], SETTINGS)[0]
    assert bad.start is None and "frame of shape (512, 512) on 2 panel(s)" in bad.message


def test_only_spots_dials_indexed_get_shoeboxes(shard):
    """Real stills hold strong spots of other lattices, ice and zingers: ``indexed_within_px`` keeps those near a
    reflection DIALS predicted on their panel."""
    from braggflow.refine.shard import indexed_spots

    ex = shard["export"]
    sel = ex["strong_frame"] == 0
    xy = np.column_stack([ex["strong_x"][sel], ex["strong_y"][sel]])
    panel = np.zeros(len(xy), int)
    cal = dict(refl_frame=np.zeros(3, int), refl_panel=np.array([0, 0, 1]), refl_x_cal=xy[[0, 1, 2], 0] + 1.0,
               refl_y_cal=xy[[0, 1, 2], 1] + 1.0)
    near = indexed_spots(cal, 0, xy, panel, 2.0)
    assert near[:2].all() and not near[2] and near.sum() == 2  # the third prediction is on another panel
    assert not indexed_spots(cal, 0, xy, panel, 1.0).any()  # sqrt(2) px away


def test_max_spots_keeps_the_brightest(shard):
    few = RefinementSettings(**{**SETTINGS.__dict__, "max_spots": 5})
    item = still_inputs(shard["export"], shard["counts"], None, shard["prior"], few)[0]
    assert item.boxes.n_boxes == 5
    c = shard["counts"][0]
    peak = [c[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2].sum() for x, y in item.boxes.centres_px]
    sel = shard["export"]["strong_frame"] == 0
    every = [c[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2].sum()
             for x, y in zip(shard["export"]["strong_x"][sel], shard["export"]["strong_y"][sel])]
    assert min(peak) >= sorted(every)[-5]


def _expt_still(shard, image_path, index=0):
    return ExptStill(shard["start_a"], "P 4nw 2abw", 1.3, np.array([0.0, 0.0, -1.0]), [shard["det"]], image_path,
                     index, identifier=f"frame {index}", polarization_fraction=0.99, sensor_thickness_mm=[0.45],
                     sensor_mu_per_mm=[3.9])


def test_expt_is_valid_json_with_relative_images(shard, tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img/frames.h5").write_bytes(b"")
    write_expt(tmp_path / "out/refined.expt", [_expt_still(shard, str(tmp_path / "img/frames.h5"), 2)])
    doc = json.loads((tmp_path / "out/refined.expt").read_text())
    assert doc["imageset"][0]["images"] == ["../img/frames.h5"] and doc["imageset"][0]["single_file_indices"] == [2]
    assert doc["beam"][0]["direction"] == [0.0, 0.0, 1.0]  # dxtbx: towards the source
    real = np.array([doc["crystal"][0][f"real_space_{k}"] for k in "abc"])
    np.testing.assert_allclose(real @ shard["start_a"], np.eye(3), atol=1e-12)
    assert doc["detector"][0]["panels"][0]["px_mm_strategy"]["type"] == "ParallaxCorrectedPxMmStrategy"
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file left
    with pytest.raises(ValueError, match="not invertible"):
        write_expt(tmp_path / "bad.expt", [ExptStill(np.zeros((3, 3)), "P 1", 1.0, np.array([0, 0, -1.0]),
                                                     [shard["det"]], "x.h5", 0)])
    assert not (tmp_path / "bad.expt").exists()


@pytest.mark.skipif(shutil.which("libtbx.python") is None,
                    reason="DIALS is not installed (Debian package dials; `make test` installs it)")
def test_dials_reads_the_expt(shard, tmp_path):
    write_expt(tmp_path / "refined.expt", [_expt_still(shard, str(tmp_path / "frames.h5"))])
    script = ("import sys, json\nfrom dxtbx.model.experiment_list import ExperimentListFactory\n"
              "el = ExperimentListFactory.from_json_file(sys.argv[1], check_format=False)\ne = el[0]\n"
              "p = e.detector[0]\nprint(json.dumps({'A': list(e.crystal.get_A()), 'wl': e.beam.get_wavelength(),"
              "'s0': list(e.beam.get_s0()), 'sg': e.crystal.get_space_group().type().lookup_symbol(),"
              "'origin': list(p.get_origin()), 'strategy': type(p.get_px_mm_strategy()).__name__,"
              "'t0': p.get_px_mm_strategy().t0(), 'id': e.identifier, 'image': e.imageset.get_path(0)}))\n")
    out = subprocess.run(["libtbx.python", "-c", script, str(tmp_path / "refined.expt")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(np.array(got["A"]).reshape(3, 3), shard["start_a"], rtol=1e-10, atol=1e-14)
    assert got["wl"] == pytest.approx(1.3) and np.allclose(got["s0"], [0, 0, -1 / 1.3])
    assert got["sg"] == "P 43 21 2" and got["id"] == "frame 0"
    np.testing.assert_allclose(got["origin"], shard["det"].origin_mm)
    assert got["strategy"] == "ParallaxCorrectedPxMmStrategy" and got["t0"] == pytest.approx(0.45)
    assert got["image"] == str(tmp_path / "frames.h5")


def _stills_row(a: np.ndarray, energy_kev: float, ncells: float) -> dict:
    row = {"frame": 0, "energy_start_kev": energy_kev, "energy_kev": energy_kev, "ncells_na": ncells,
           "ncells_nb": ncells, "ncells_nc": ncells}
    row.update({f"A{j // 3}{j % 3}": float(a.flat[j]) for j in range(9)})
    return row


def test_observed_offsets_pair_strong_spots_with_dials_predictions(shard, sf_table):
    """Real stills are scored against DIALS' observed centroids: each strong spot paired with the DIALS
    prediction nearest it on its panel (within 2 px), both predictions' offsets in px and um, radial along the
    line from the beam axis. Observed spots put exactly where the model's spots centre, DIALS' predictions 0.3 px
    off radially: the refined model's offsets are 0, DIALS' 0.3 px (33 um at 0.11 mm pixels)."""
    import pandas as pd

    from braggflow.refine.scores import observed_by_resolution, observed_offsets
    from braggflow.simulator import spot_centroids

    det = Panel.from_beam_center(100.0, (256, 256), 0.11, 512, 512)
    still = shard["prior"].still(shard["truth_a"], 1.3, (40.0, 40.0, 40.0))
    truth = truth_reflections(still, det, sf_table)
    keep = truth.photons > 10
    hkl = truth.hkl[keep]
    xy = spot_centroids(still, det, hkl)
    ok = np.isfinite(xy).all(axis=1) & (np.hypot(xy[:, 0] - 256, xy[:, 1] - 256) > 20)
    hkl, xy = hkl[ok], xy[ok]
    unit = (xy - 256.0) / np.hypot(xy[:, :1] - 256.0, xy[:, 1:] - 256.0)
    cal = xy + 0.3 * unit
    ex = _export([{"indexed": True, "A": shard["truth_a"], "strong": np.vstack([xy, [[5.0, 5.0]]])}], det)
    ex["panel_pixel_size_mm"][:] = 0.11
    n = len(hkl)
    ex.update(refl_frame=np.zeros(n, int), refl_panel=np.zeros(n, int), refl_x_cal=cal[:, 0], refl_y_cal=cal[:, 1],
              refl_h=hkl[:, 0], refl_k=hkl[:, 1], refl_l=hkl[:, 2], refl_d=np.linspace(4.0, 2.0, n))
    energy = 12.398419843320026 / 1.3
    off = observed_offsets(ex, pd.DataFrame([_stills_row(shard["truth_a"], energy, 40.0)]), shard["prior"])
    assert len(off) == n > 20  # the lone spot at (5, 5) has no prediction near it
    np.testing.assert_allclose(off[["dx_refined_px", "dy_refined_px"]], 0.0, atol=1e-9)
    np.testing.assert_allclose(off.radial_dials_px, 0.3, atol=1e-6)
    np.testing.assert_allclose(off.transverse_dials_px, 0.0, atol=1e-6)
    np.testing.assert_allclose(off.radial_dials_um, 33.0, atol=1e-4)
    by_bin = observed_by_resolution(off, 2)
    assert by_bin.bin.tolist() == ["0", "1", "all"] and by_bin.n.tolist()[-1] == n
    overall = by_bin.iloc[-1]
    assert overall.rmsd_dials_px == pytest.approx(0.3) and overall.rmsd_refined_px == pytest.approx(0.0, abs=1e-9)
    assert overall.change_rel == pytest.approx(-1.0)
