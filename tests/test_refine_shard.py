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


def test_a_multi_panel_export_is_reported(shard):
    ex = {k: (np.concatenate([v, v], axis=1) if k.startswith("panel_") else v) for k, v in shard["export"].items()}
    items = still_inputs(ex, shard["counts"], None, shard["prior"], SETTINGS)
    assert items[0].message == "2 panels: the refinement of a still fits one panel" and items[0].start is None


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
