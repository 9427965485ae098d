"""Training frames in an experiment's own geometry (braggflow.matched): multi-panel simulation, per-pixel water,
the stacked training shard, the thermolysin stand-in and the config checks."""

import copy
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import RESOURCES, ROOT

from braggflow.beam import Beam
from braggflow.config import ConfigError, load_schema
from braggflow.experiments import experiment_specs
from braggflow.matched import (STACK_GAP_PX, beam_rotation, panel_detectors, stack_panels,
                               stacked_offsets, unstack_panels, write_matched_shard)
from braggflow.matrix import Dataset
from braggflow.overlay import OverlaySettings
from braggflow.formats.frames import Detector, read_frames_info, write_frames_file
from braggflow.shards import SimulationSettings
from braggflow.simulator import (Crystal, Panel, Numerics, Pulse, Still, StructureFactorTable, simulate_still,
                                 truth_reflections)
from braggflow.structures import read_structure

TABLE = RESOURCES / "water/water_scattering_25C.csv"
BEAM = Beam(photons_per_pulse=1e12, size_m=(1e-6, 1e-6), polarization_fraction=0.99, polarization_angle_deg=30.0)


def rot_x(deg):
    a = np.radians(deg)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def split_panels(det: Panel, rows: int, q=np.eye(3)) -> Detector:
    """``det`` cut into a top (``rows`` rows) and a bottom panel, the whole lab frame rotated by ``q``."""
    o = np.asarray(det.origin_mm)
    f, s = np.asarray(det.fast_axis), np.asarray(det.slow_axis)
    origins = np.stack([o, o + rows * det.pixel_size_mm * s])
    px = det.pixel_size_mm
    return Detector.from_arrays(("top", "bottom"), origins @ q.T, np.stack([f, f]) @ q.T, np.stack([s, s]) @ q.T,
                  np.full((2, 2), px), np.array([[det.n_fast, rows], [det.n_fast, det.n_slow - rows]]))


def test_beam_rotation_takes_the_beam_to_the_simulators_incident_direction():
    for b in ([0, 0, -1], [0, 0, 1], [0.01, -0.02, -1], [1, 0, 0]):
        r = beam_rotation(np.array(b, float))
        assert np.allclose(r @ (np.array(b) / np.linalg.norm(b)), [0, 0, -1], atol=1e-12)
        assert np.allclose(r @ r.T, np.eye(3), atol=1e-12) and np.linalg.det(r) == pytest.approx(1.0)


@pytest.mark.parametrize("tilt_deg", [0.0, 3.0])
def test_two_panels_simulate_exactly_the_single_panel_they_were_cut_from(tilt_deg):
    # The same crystal on one 48 x 40 panel and on that panel cut in two (the lab frame tilted by 3 deg about x,
    # the beam with it): the per-panel images and truth positions are the single panel's.
    det = Panel.from_beam_center(60.0, (20.0, 18.0), 0.1, 48, 40)
    q = rot_x(tilt_deg)
    dets = panel_detectors(split_panels(det, 15, q), q @ np.array([0.0, 0.0, -1.0]))
    assert [d.n_slow for d in dets] == [15, 25]
    a = np.diag([1 / 20.0, 1 / 24.0, 1 / 28.0]) @ rot_x(20.0)
    sf = StructureFactorTable(np.full((1, 1, 1), 0.0), (0, 0, 0), default_F=100.0)
    still = Still(Crystal(a, ncells=(8, 8, 8), shape="round"), Pulse([1.0, 1.002], kahn_factor=0.5),
                  Numerics(oversample=2))
    whole = simulate_still(still, det, sf, exhaustive=True)
    parts = [simulate_still(still, d, sf, exhaustive=True) for d in dets]
    assert whole.max() > 0
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-9, atol=1e-12 * whole.max())
    truth = truth_reflections(still, det, sf, image=whole, min_photons=1e-12)
    per = [truth_reflections(still, d, sf, image=p, min_photons=1e-12) for d, p in zip(dets, parts)]
    ys = np.concatenate([per[0].y_px, per[1].y_px + 15])
    xs = np.concatenate([per[0].x_px, per[1].x_px])
    assert len(ys) == len(truth) > 0
    order, ref = np.lexsort((xs, ys)), np.lexsort((truth.x_px, truth.y_px))
    np.testing.assert_allclose(ys[order], truth.y_px[ref], atol=1e-9)
    np.testing.assert_allclose(xs[order], truth.x_px[ref], atol=1e-9)


def test_water_on_panels_cut_from_a_panel_is_that_panels_water_and_one_corner_resolution():
    from braggflow.water import water_photons

    whole = Panel.from_beam_center(60.0, (70.3, 41.7), 0.075, 120, 80)
    wavelength = 1.55
    ref = water_photons(Detector((whole,)), BEAM.at_wavelength(wavelength), 5e-6, TABLE)[0][0]
    split = panel_detectors(split_panels(whole, 40), np.array([0.0, 0.0, -1.0]))
    top, bottom = water_photons(split, BEAM.at_wavelength(wavelength), 5e-6, TABLE)[0]
    np.testing.assert_allclose(np.concatenate([top, bottom]), ref, rtol=1e-12)
    assert split.d_min_angstrom(wavelength) == pytest.approx(Detector((whole,)).d_min_angstrom(wavelength), rel=1e-12)


def test_stacking_keeps_panels_apart_by_the_gap():
    a = np.arange(3 * 4 * 5, dtype=np.int32).reshape(3, 4, 5)
    s = stack_panels(a, -1)
    assert s.shape == (3 * 4 + 2 * STACK_GAP_PX, 5)
    assert list(stacked_offsets(3, 4)) == [0, 4 + STACK_GAP_PX, 8 + 2 * STACK_GAP_PX]
    assert (s[4:4 + STACK_GAP_PX] == -1).all()
    np.testing.assert_array_equal(unstack_panels(s, 3, 4), a)


@pytest.fixture(scope="module")
def small_experiment(tmp_path_factory):
    """A frames file of two tilted 40 x 48 panels at 1.3 A, with a few untrusted pixels, and an MTZ of the
    thermolysin stand-in to 5 A."""
    from braggflow.formats.mtz import write_mtz
    from braggflow.sf import compute_sf_table

    tmp = tmp_path_factory.mktemp("matched")
    det = Panel.from_beam_center(50.0, (-2.0, 20.0), 0.11, 48, 80)
    q = rot_x(1.5)
    panels = split_panels(det, 40, q)
    frames = np.zeros((1, 2, 40, 48), np.float32)
    frames[0, 1, 5, 7] = -1.0
    write_frames_file(tmp / "frames.h5", frames, panels, 1.3, q @ np.array([0.0, 0.0, -1.0]), ["x.cbf"], [0], 1.0,
                      "test")
    model = read_structure(RESOURCES / "structures/thermolysin_stand_in.pdb")
    write_mtz(tmp / "sf.mtz", model, compute_sf_table(model, 9.537, 5.0), 9.537)
    return tmp


def matched_shard(path, experiment_dir, frames=range(3), sim_extra=None, overlay_extra=None, outlier_amplitudes=None,
                  backend="numpy"):
    import yaml

    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    sim = dict(cfg["simulation"], backend="numpy", ncells={"dist": "fixed", "value": 40}, mosaic_domains=1,
               spectrum_samples=1, **(sim_extra or {}))
    info = read_frames_info(experiment_dir / "frames.h5")
    beam = Beam(photons_per_pulse=1e11, size_m=(1e-6, 1e-6), polarization_fraction=0.99, polarization_angle_deg=0.0)
    return write_matched_shard(path, info=info, mtz_path=experiment_dir / "sf.mtz", water_table=TABLE, beam=beam,
                               simulation=SimulationSettings.at_wavelength(sim, 1.3, beam),
                               overlay=OverlaySettings.from_config(dict(cfg["overlay"], blank_fraction=0.0,
                                                                        **(overlay_extra or {}))),
                               jet_thickness_m=2e-6, seed=7, dataset="matched-x", dataset_index=3, frames=frames,
                               structure="thermolysin", outlier_amplitudes=outlier_amplitudes, backend=backend)


def test_matched_shard_is_a_training_shard_of_stacked_panels(small_experiment, tmp_path):
    from braggflow.ml import data as D

    stats = matched_shard(tmp_path / "shard.h5", small_experiment)
    assert stats["frames"] == 3 and stats["hits"] == 3
    refs = D.index_shards([tmp_path / "shard.h5"])
    assert len(refs) == 3 and refs[0].energy_kev == pytest.approx(12.398419843320026 / 1.3)
    counts, label = D.read_frame(refs[0])
    assert counts.shape == (2 * 40 + STACK_GAP_PX, 48)
    assert (counts[40:40 + STACK_GAP_PX] == -1).all()  # the gap
    assert counts[40 + STACK_GAP_PX + 5, 7] == -1  # the experiment's untrusted pixel
    assert (counts[:40] >= 0).mean() > 0.99
    with h5py.File(tmp_path / "shard.h5") as f:
        t = {k: f["braggflow/truth"][k][()] for k in f["braggflow/truth"]}
        offsets = f["braggflow/panels/stacked_row_offset"][()]
        water = f["braggflow/water_photons"][()]
    assert water.shape == (2, 40, 48) and 0 < water.mean() < 10
    assert len(t["x_px"]) > 0 and set(np.unique(t["panel"])) <= {0, 1}
    np.testing.assert_allclose(t["y_px"], t["panel_y_px"] + offsets[t["panel"]])
    assert ((t["panel_y_px"] >= 0) & (t["panel_y_px"] < 40)).all()
    vis = t["visible"].astype(bool)
    assert vis.any()
    for fi in range(3):  # visible reflections sit on labelled pixels of their frame
        _, lab = D.read_frame(refs[fi])
        sel = vis & (t["frame_index"] == refs[fi].frame_index)
        y, x = np.floor(t["y_px"][sel]).astype(int), np.floor(t["x_px"][sel]).astype(int)
        grown = np.zeros_like(lab)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                grown |= np.roll(np.roll(lab, dy, 0), dx, 1)
        assert grown[y, x].all()
    # Same seed, same frames: the same counts, labels and truth.
    matched_shard(tmp_path / "again.h5", small_experiment)
    with h5py.File(tmp_path / "shard.h5") as a, h5py.File(tmp_path / "again.h5") as b:
        for key in ("entry/data/data", "braggflow/labels/peak_mask", "braggflow/truth/x_px"):
            np.testing.assert_array_equal(a[key][()], b[key][()])


def test_detector_psf_and_outliers_reach_the_matched_training_frames(small_experiment, tmp_path):
    """The experiment's detector model: spots spread through the PSF (more labelled pixels per spot, the same
    truth), lone outlier pixels land on trusted pixels only, unlabelled, and the shard records both settings."""
    import json

    from braggflow.ml import data as D

    matched_shard(tmp_path / "sharp.h5", small_experiment)
    matched_shard(tmp_path / "det.h5", small_experiment, sim_extra={"psf_fwhm_um": 220.0},
                  overlay_extra={"outlier_pixels_per_mpx": 3000.0, "outlier_photons": [200.0, 400.0]})
    with h5py.File(tmp_path / "sharp.h5") as a, h5py.File(tmp_path / "det.h5") as b:
        np.testing.assert_array_equal(a["braggflow/truth/x_px"][()], b["braggflow/truth/x_px"][()])
        n_outliers = b["braggflow/frames/outlier_pixels"][()]
        assert json.loads(b["braggflow"].attrs["simulation"])["psf_fwhm_um"] == 220.0
        assert json.loads(b["braggflow"].attrs["overlay"])["outlier_pixels_per_mpx"] == 3000.0
    sharp, det = D.index_shards([tmp_path / "sharp.h5"]), D.index_shards([tmp_path / "det.h5"])
    labelled_sharp = sum(D.read_frame(r)[1].sum() for r in sharp)
    labelled_det = sum(D.read_frame(r)[1].sum() for r in det)
    assert labelled_det > 1.5 * labelled_sharp  # a 2-pixel PSF spreads every spot over more pixels
    trusted = 2 * 40 * 48 - 1
    assert n_outliers.sum() == pytest.approx(3 * 3000.0 * trusted / 1e6, rel=0.5)
    for r, n in zip(det, n_outliers):
        counts, label = D.read_frame(r)
        lone = (counts >= 150) & ~label  # only outliers reach 150 photons off the spots' labels
        assert n - 1 <= lone.sum() <= n  # (one may land on a spot)
        assert (counts[40:40 + STACK_GAP_PX] == -1).all()
    # Amplitudes measured in the experiment's frames are drawn instead, and the shard says where they came from.
    matched_shard(tmp_path / "measured.h5", small_experiment,
                  overlay_extra={"outlier_pixels_per_mpx": 3000.0}, outlier_amplitudes=np.array([350.0, 420.0]))
    with h5py.File(tmp_path / "measured.h5") as f, h5py.File(tmp_path / "det.h5") as g:
        assert f["braggflow"].attrs["outlier_source"] == "2 lone-pixel amplitudes measured in frames.h5"
        assert g["braggflow"].attrs["outlier_source"] == "log-uniform within overlay.outlier_photons"
    for r in D.index_shards([tmp_path / "measured.h5"]):
        counts, label = D.read_frame(r)
        lone = counts[(counts >= 300) & ~label]
        assert len(lone) and all(abs(v - 350) <= 10 or abs(v - 420) <= 10 for v in lone)


def test_rectangular_pixels_are_refused_with_the_file_named(tmp_path):
    from braggflow.errors import InputError

    p = Detector.from_arrays(("a",), np.array([[0.0, 0.0, -100.0]]), np.array([[1.0, 0, 0]]), np.array([[0, -1.0, 0]]),
               np.array([[0.1, 0.2]]), np.array([[10, 10]]))
    with pytest.raises(InputError, match="frames.h5.*rectangular"):
        panel_detectors(p, np.array([0, 0, -1.0]), "frames.h5")


def test_a_stand_in_for_any_cell_from_the_command_line_or_from_dials(tmp_path):
    """python -m braggflow.stand_in: with thermolysin's composition and cell it writes the shipped stand-in byte for
    byte; --from-dials takes the mean cell of the frames DIALS indexed; a bad space group is named."""
    from braggflow.formats import dials_export

    def run(*args):
        return subprocess.run([sys.executable, "-m", "braggflow.stand_in", *map(str, args)], capture_output=True,
                              text=True, cwd=tmp_path)

    res = run(tmp_path / "t.pdb", "--space-group", "P 61 2 2", "--cell", 93.42, 93.42, 131.08, 90, 90, 120,
              "--residues", 316, "--ions", "ZN=1,CA=4")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "t.pdb").read_bytes() == (RESOURCES / "structures/thermolysin_stand_in.pdb").read_bytes()
    arrays = {k: np.zeros(3) for k in dials_export.FRAME_KEYS}
    arrays.update({k: np.zeros(0) for k in dials_export.KEYS if k not in dials_export.FRAME_KEYS})
    arrays["indexed"] = np.array([True, False, True])
    arrays["cell"] = np.array([[60.0, 70.0, 80.0, 90, 90, 90], [1, 1, 1, 90, 90, 90], [60.2, 70.2, 80.2, 90, 90, 90]])
    dials_export.write_dials_export(tmp_path / "export.npz", arrays)
    res = run(tmp_path / "p.pdb", "--space-group", "P212121", "--from-dials", tmp_path / "export.npz",
              "--residues", 120, "--ions", "")
    assert res.returncode == 0, res.stderr
    model = read_structure(tmp_path / "p.pdb")
    assert model.cell == pytest.approx((60.1, 70.1, 80.1, 90.0, 90.0, 90.0))
    assert model.spacegroup.xhm().startswith("P 21 21 21")
    bad = run(tmp_path / "x.pdb", "--space-group", "P 99", "--cell", 1, 1, 1, 90, 90, 90, "--residues", 3)
    assert bad.returncode == 2 and "--space-group: unknown space group 'P 99'" in bad.stderr
    assert not (tmp_path / "x.pdb").exists()


def test_thermolysin_stand_in_is_the_generators_output(tmp_path):
    out = tmp_path / "t.pdb"
    subprocess.run([sys.executable, str(RESOURCES / "structures/make_thermolysin_stand_in.py"), str(out)], check=True)
    assert out.read_bytes() == (RESOURCES / "structures/thermolysin_stand_in.pdb").read_bytes()
    m = read_structure(out)
    assert m.spacegroup_hm == "P 61 2 2" and m.cell[0] == pytest.approx(93.42) and m.cell[2] == pytest.approx(131.08)
    assert {"Zn", "Ca", "C", "N", "O", "S"} == set(m.elements)
    # 316 residues of about 7.9 atoms each, in one compact molecule (a sphere of the protein's volume)
    assert 2400 < len(m.fract) < 2600


def base_config():
    import yaml

    return yaml.safe_load((ROOT / "config/config.yaml").read_text())


def specs(cfg):
    from braggflow.config import _fill_defaults

    schema = load_schema(ROOT / "config/config.schema.yaml")
    _fill_defaults(cfg, schema)
    datasets = {n: Dataset(n, 7.0, 0.25, 0) for n in ("7keV_250mm", "7keV_150mm", "8keV_150mm")}
    return experiment_specs(cfg, datasets, schema, base=ROOT)


def test_default_config_trains_a_matched_model_for_the_cspad_frames():
    e = specs(base_config())["thermolysin_lcls_cspad"]
    assert e.predict_with == "both" and e.matched["structure"] == "thermolysin"
    assert e.matched["frames"] == 40 and e.matched_seed_index != e.seed_index
    # calibrated from the CSPAD frames: no beam, jet, PSF, outlier or photon-cut value set by hand; the crystal
    # size, which four stills do not fix, is named
    assert e.matched["calibrate"] is True and e.matched["outliers_from_frames"] is None
    assert not e.matched["beam"] and e.matched["jet_thickness_um"] is None
    assert set(e.matched["simulation"]) == {"ncells"}
    assert not {"label_min_photons", "outlier_pixels_per_mpx"} & set(e.matched["overlay"])
    assert "score_min_photons" not in e.matched["peak_finder"]


@pytest.mark.parametrize("change, message", [
    (lambda x: x["matched"].update(structure=None), r"experiments\.thermolysin_lcls_cspad\.predict_with.*needs a matched section"),
    (lambda x: x["matched"].update(structure="lysozyme"), r"matched\.structure.*'lysozyme' is not among"),
    (lambda x: x["matched"].setdefault("simulation", {}).update(oversample=0),
     r"experiments\.thermolysin_lcls_cspad\.matched\.simulation\.oversample"),
    (lambda x: x["matched"]["peak_finder"].update(epochs=0),
     r"experiments\.thermolysin_lcls_cspad\.matched\.peak_finder\.epochs"),
])
def test_bad_matched_settings_name_the_key(change, message):
    cfg = copy.deepcopy(base_config())
    change(cfg["experiments"]["thermolysin_lcls_cspad"])
    with pytest.raises(ConfigError, match=message):
        specs(cfg)


@pytest.mark.parametrize("stand_in, structure, dials_sg, message", [
    ({"residues": 100}, "thermolysin", "P6122", r"matched\.structure.*'thermolysin' and matched\.stand_in are both set"),
    ({"residues": 100}, None, None, r"matched\.stand_in\.space_group.*null and no dials\.space_group"),
    ({"residues": 100, "space_group": "P 99"}, None, None, r"matched\.stand_in\.space_group.*unknown space group 'P 99'"),
    ({"residues": 0}, None, "P6122", r"residues"),
])
def test_a_bad_stand_in_names_the_key(stand_in, structure, dials_sg, message):
    cfg = copy.deepcopy(base_config())
    x = cfg["experiments"]["thermolysin_lcls_cspad"]
    x["matched"].update(stand_in=stand_in, structure=structure)
    x["dials"]["space_group"] = dials_sg
    with pytest.raises(Exception, match=message):
        specs(cfg)
        from snakemake.utils import validate
        validate(cfg, str(ROOT / "config/config.schema.yaml"))


def test_a_stand_in_is_the_matched_structure_with_its_defaults():
    cfg = copy.deepcopy(base_config())
    cfg["experiments"]["thermolysin_lcls_cspad"]["matched"].update(stand_in={"residues": 316, "ions": {"ZN": 1}},
                                                                   structure=None)
    e = specs(cfg)["thermolysin_lcls_cspad"]
    assert e.matched["structure"] == "stand_in"
    assert e.matched["stand_in"] == {"residues": 316, "ions": {"ZN": 1}, "space_group": None, "unit_cell": None,
                                     "b_iso_angstrom2": 20.0, "seed": 20261121, "d_min_angstrom": None}
