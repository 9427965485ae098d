"""Experimental inputs: config checks, the HDF5 reader (CXI / NXmx / any dataset path + geometry), panel geometry,
stills prediction at another energy and distance, and the evaluator's bookkeeping."""

import copy

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from braggflow.config import ConfigError, load_schema
from braggflow.formats.crystfel import crystfel_geometry_text
from braggflow.detector import INCIDENT_UNIT
from braggflow.errors import InputError
from braggflow.stills import predicted_positions
from braggflow.evaluate import (Found, Reference, offset_components, offsets_by_resolution, rank_models,
                                resolution_edges, score_frame, summarize)
from braggflow.experiments import experiment_specs, import_hdf5, shifted_geometry
from braggflow.formats.hdf5_input import hdf5_layout
from braggflow.matrix import expand_matrix
from braggflow.formats.nxmx import nxmx_writer, read_geometry
from braggflow.formats.frames import FramesInfo, read_frame_photons, read_frames_info
from conftest import ROOT, small_geometry

SCHEMA = load_schema(ROOT / "config/config.schema.yaml")


@pytest.fixture
def config():
    return yaml.safe_load((ROOT / "config/config.yaml").read_text())


def specs(cfg, base=ROOT):
    return experiment_specs(cfg, expand_matrix(cfg), SCHEMA, base)


def test_default_experiments_fill_in_defaults(config):
    exp = specs(config)["shifted_7keV_250mm"]
    assert exp.kind == "shifted_simulation" and exp.models == ("7keV_250mm", "7keV_150mm")
    assert exp.shift["simulation"]["mosaic_domains"] == 5 and exp.frames == 6
    minimal = {"x": {"kind": "shifted_simulation", "structure": "1ic6", "like": "8keV_350mm"}}
    config["experiments"] = minimal
    x = specs(config)["x"]
    assert x.models == ("8keV_350mm",) and x.shift["camera_length_offset_m"] == 0.006 and x.energy_distance
    assert x.seed_index != specs({**config, "experiments": {"y": minimal["x"]}})["y"].seed_index


@pytest.mark.parametrize("edit, message", [
    (lambda e: e.update(structure="lysozyme"), r"experiments.s.structure': 'lysozyme' is not among structures"),
    (lambda e: e.update(models=["9keV_250mm"]), r"experiments.s.models': \['9keV_250mm'\] are not datasets"),
    (lambda e: e.update(like=None), r"experiments.s.like': None is not a dataset"),
    (lambda e: e["shift"].update(simulation={"crystal_shape": "cube"}),
     r"experiments.s.shift.simulation.crystal_shape': 'cube' is not one of"),
    (lambda e: e["shift"].update(overlay={"adu_per_photon": -2}),
     r"experiments.s.shift.overlay.adu_per_photon': -2 is less than or equal to the minimum"),
    (lambda e: e.update(kind="file", files=[]), r"experiments.s.files': kind 'file' needs at least one input"),
])
def test_bad_experiment_entries_name_the_key(config, edit, message):
    entry = {"kind": "shifted_simulation", "structure": "1ic6", "like": "7keV_250mm", "shift": {}}
    edit(entry)
    config["experiments"] = {"s": entry}
    with pytest.raises(ConfigError, match=message):
        specs(config)


def test_shifted_geometry_moves_distance_centre_and_energy():
    g = small_geometry()
    s = shifted_geometry(g, {"camera_length_offset_m": 0.01, "beam_center_offset_px": [3.0, -2.0],
                             "energy_offset_kev": 0.5})
    assert s.camera_length_m == pytest.approx(0.11) and s.energy_kev == pytest.approx(7.5)
    assert s.beam_center_px == pytest.approx((g.beam_center_px[0] + 3, g.beam_center_px[1] - 2))
    assert (s.n_fast, s.pixel_size_m) == (g.n_fast, g.pixel_size_m)


# ---------------------------------------------------------------- HDF5 inputs

def cxi_file(path, n=3, shape=(60, 80), data_path="/entry_1/data_1/data", seed=0):
    raw = np.random.default_rng(seed).poisson(6.0, (n, *shape)).astype(np.float32)
    raw[:, 5, 7] = -10  # a dead pixel as some CXI files mark them
    with h5py.File(path, "w") as f:
        f.create_dataset(data_path, data=raw)
    return raw


def geom_file(path, shape=(60, 80), adu=3.0):
    from braggflow.geometry import Geometry

    g = Geometry("test", shape[1], shape[0], 110e-6, 0.13, (30.5, 20.25), 9.7, "Si", 0.1)
    # A CXI file without NXmx beam metadata: the nominal energy, not a per-frame location.
    path.write_text(crystfel_geometry_text(g, adu_per_photon=adu, bandwidth_rel_sigma=1e-3,
                                           per_frame_wavelength=False))
    return g


def test_cxi_file_with_a_geom_becomes_frames_and_nxmx_for_dials(tmp_path):
    raw = cxi_file(tmp_path / "run.cxi")
    g = geom_file(tmp_path / "det.geom")
    layout = hdf5_layout(tmp_path / "run.cxi", None, tmp_path / "det.geom")
    assert layout.dataset_path == "/entry_1/data_1/data" and layout.n_frames == 3 and layout.adu_per_photon == 3.0
    import_hdf5(tmp_path / "frames.h5", tmp_path / "nxmx.h5", tmp_path / "run.cxi", None, tmp_path / "det.geom", None)
    info = read_frames_info(tmp_path / "frames.h5")
    assert (info.n_frames, info.n_panels, info.shape) == (3, 1, (60, 80)) and info.adu_per_photon == 3.0
    photons = read_frame_photons(tmp_path / "frames.h5", 1)
    assert photons[0, 5, 7] == -1.0
    np.testing.assert_allclose(photons[0, 10], raw[1, 10] / 3.0, rtol=1e-6)
    assert info.panels.beam_center_px(info.beam_direction[0]) == pytest.approx(g.beam_center_px, abs=1e-9)
    assert info.panels.distance_mm(info.beam_direction[0]) == pytest.approx(130.0)
    assert info.wavelength_angstrom[0] == pytest.approx(g.wavelength_angstrom)
    back = read_geometry(tmp_path / "nxmx.h5")
    assert back.beam_center_px == pytest.approx(g.beam_center_px) and back.camera_length_m == pytest.approx(0.13)
    # An untrusted border: the frame's outer pixels become -1, the rest is unchanged.
    import_hdf5(tmp_path / "b.h5", tmp_path / "bn.h5", tmp_path / "run.cxi", None, tmp_path / "det.geom", None,
                untrusted_border_px=2)
    bordered = read_frame_photons(tmp_path / "b.h5", 1)[0]
    assert (bordered[:2] == -1).all() and (bordered[:, -2:] == -1).all()
    np.testing.assert_array_equal(bordered[2:-2, 2:-2], photons[0, 2:-2, 2:-2])


def test_nxmx_metadata_is_geometry_enough(tmp_path):
    g = small_geometry()
    with nxmx_writer(tmp_path / "x.h5", g, 2, np.int32, g.wavelength_angstrom) as (_, d):
        d[0] = np.ones((g.n_slow, g.n_fast), np.int32)
        d[1] = 2 * np.ones((g.n_slow, g.n_fast), np.int32)
    layout = hdf5_layout(tmp_path / "x.h5", None, None)
    assert layout.dataset_path == "/entry/data/data" and layout.n_frames == 2
    assert layout.geometry.beam_center_px == pytest.approx(g.beam_center_px)
    assert layout.geometry.camera_length_m == pytest.approx(g.camera_length_m)
    assert layout.geometry.energy_kev == pytest.approx(g.energy_kev)


@pytest.mark.parametrize("make, message", [
    (lambda p: cxi_file(p, data_path="/other/data"), r"no frames dataset at /entry/data/data or"),
    (lambda p: h5py.File(p, "w").create_dataset("/entry_1/data_1/data", data=np.zeros((2, 2, 3, 4))),
     r"has rank 4 \(shape \(2, 2, 3, 4\)\)"),
    (lambda p: cxi_file(p), r"no geometry: give a CrystFEL .geom"),
    (lambda p: p.write_text("not hdf5"), r"not an HDF5 file"),
])
def test_invalid_hdf5_inputs_name_the_file(tmp_path, make, message):
    path = tmp_path / "bad.cxi"
    make(path)
    with pytest.raises(InputError, match=message) as exc:
        import_hdf5(tmp_path / "frames.h5", tmp_path / "nxmx.h5", path, None, None, None)
    assert str(path) in str(exc.value)
    assert not list(tmp_path.glob("frames.h5*")) and not list(tmp_path.glob("*nxmx*"))


def test_a_missing_dataset_path_and_a_bad_geom_name_what_is_wrong(tmp_path):
    cxi_file(tmp_path / "run.cxi")
    with pytest.raises(InputError, match=r"run.cxi: no dataset '/entry/nope'"):
        hdf5_layout(tmp_path / "run.cxi", "/entry/nope", None)
    geom_file(tmp_path / "det.geom", shape=(61, 80))
    with pytest.raises(InputError, match=r"det.geom: panel panel0 is 61 x 80 .* the data are 60 x 80"):
        hdf5_layout(tmp_path / "run.cxi", None, tmp_path / "det.geom")
    (tmp_path / "two.geom").write_text("clen = 0.1\nres = 1000\nphoton_energy = 9000\na/corner_x = 0\n"
                                       "a/corner_y = 0\nb/corner_x = 1\nb/corner_y = 1\n")
    with pytest.raises(InputError, match=r"two.geom: 2 panels; the hdf5 reader takes single-panel"):
        hdf5_layout(tmp_path / "run.cxi", None, tmp_path / "two.geom")


def test_file_experiments_are_checked_before_any_job(config, tmp_path):
    cxi_file(tmp_path / "run.cxi", data_path="/data/frames")
    config["experiments"] = {"lab": {"kind": "file", "structure": "1ic6", "files": ["run.cxi"], "reader": "hdf5",
                                     "dataset_path": "/data/frames"}}
    with pytest.raises(InputError, match=r"run.cxi: no geometry"):
        specs(config, tmp_path)
    config["experiments"]["lab"]["files"] = ["missing.cbf"]
    with pytest.raises(InputError, match=r"missing.cbf: config key 'experiments.lab.files': no such file"):
        specs(config, tmp_path)


# ---------------------------------------------------------------- geometry of predictions and offsets

def single_panel_info(g) -> FramesInfo:
    panels, beam = g.detector(), INCIDENT_UNIT
    return FramesInfo("x", 1, (g.n_slow, g.n_fast), panels, np.array([g.wavelength_angstrom]), beam[None],
                      ("x",), np.zeros(1, int), 1.0, "test")


def test_panel_round_trip_and_stills_prediction_against_the_simulators_geometry():
    g = small_geometry()
    info = single_panel_info(g)
    p = info.panels
    xy = np.array([[10.5, 20.25], [700.0, 3.0]])
    lab = p.to_lab(np.zeros(2, int), xy)
    np.testing.assert_allclose(p.intersect(np.zeros(2, int), lab), xy, atol=1e-9)
    np.testing.assert_allclose(p.intersect(np.zeros(2, int), 3.0 * lab), xy, atol=1e-9)  # any point on the ray
    # A reflection in the diffracting condition: q on the Ewald sphere lands where s1 points.
    wl = g.wavelength_angstrom
    s0 = np.array([0.0, 0.0, -1.0]) / wl
    s1 = lab[0] / np.linalg.norm(lab[0]) / wl
    a = np.diag(s1 - s0)  # A h = q for h = (1, 1, 1)
    pos = predicted_positions(a, np.array([[1, 1, 1]]), np.zeros(1, int), p, info.beam_direction[0], wl)
    np.testing.assert_allclose(pos[0], xy[0], atol=1e-6)
    # The detector 10 mm farther: the spot moves outward by r * 10 / d, all of it radial.
    far = predicted_positions(a, np.array([[1, 1, 1]]), np.zeros(1, int), p, info.beam_direction[0], wl, 10.0)
    total, radial, transverse = offset_components(p, np.zeros(1, int), far, pos, info.beam_direction[0])
    r_px = np.hypot(*(pos[0] - np.array(g.beam_center_px)))
    assert radial[0] == pytest.approx(r_px * 10.0 / 100.0, rel=1e-6) and abs(transverse[0]) < 1e-6
    assert total[0] == pytest.approx(radial[0])


def test_parallax_shifts_rays_into_the_sensor_and_predictions_off_every_panel_warn_of_nothing():
    """dxtbx's parallax: a ray meeting the sensor at cos theta = u.n is seen o = 1/mu - (t0/cos + 1/mu)
    exp(-mu t0/cos) mm deeper along its own direction. A wrong energy predicts rays backwards (2theta > 90 deg) or
    beyond the Ewald sphere; they meet no panel (NaN), without a numerical warning."""
    import warnings

    g = small_geometry()
    info = single_panel_info(g)
    p, b = info.panels, info.beam_direction[0]
    wl = g.wavelength_angstrom
    a = np.eye(3) * 0.01 / wl  # |q| = 0.01 h / lambda
    hkl = np.array([[10, 0, 0], [0, 0, 150], [0, 0, 250]])  # 0.6 deg, 2theta = 97 deg, |q| > 2 / lambda
    mu, t0 = np.array([3.6]), np.array([0.45])
    grazing = np.eye(3) * 2 * np.sin(np.radians(45.0005)) / np.sqrt(10001) / wl  # h = (1, 0, 100): 2theta = 90.001 deg
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = predicted_positions(a, hkl, np.zeros(3, int), p, b, wl)
        deep = predicted_positions(a, hkl, np.zeros(3, int), p, b, wl, parallax=(mu, t0))
        behind = predicted_positions(grazing, np.array([[1, 0, 100]]), np.zeros(1, int), p, b, wl, parallax=(mu, t0))
    assert np.isfinite(plain[0]).all() and np.isnan(plain[1:]).all() and np.isnan(deep[1:]).all()
    assert np.isnan(behind).all()
    lab = p.to_lab(np.zeros(1, int), plain[:1])[0]
    u = lab / np.linalg.norm(lab)
    cos = abs(u @ p.normal[0])
    depth = 1 / mu[0] - (t0[0] / cos + 1 / mu[0]) * np.exp(-mu[0] * t0[0] / cos)
    expected = plain[0] + np.array([u @ p.fast_axis[0], u @ p.slow_axis[0]]) * depth / p.pixel_size_mm[0]
    np.testing.assert_allclose(deep[0], expected, atol=1e-9)
    assert np.hypot(*(deep[0] - plain[0])) > 0


def test_score_frame_matches_one_to_one_and_forgives_peaks_on_weak_reflections():
    g = small_geometry()
    info = single_panel_info(g)
    ref = Reference(np.zeros(3, int), np.array([[100.0, 100.0], [300.0, 300.0], [600.0, 200.0]]),
                    np.array([3.0, 2.5, 2.0]), np.zeros(1, int), np.array([[50.0, 50.0]]))
    found = Found(np.zeros(5, int), np.array([[101.0, 100.0], [100.5, 100.0], [300.0, 302.0], [51.0, 50.0],
                                              [800.0, 800.0]]))
    counts, off = score_frame(found, ref, 3.0, info, info.beam_direction[0])
    # (100,100) and (300,300) matched; the second peak on (100,100) and the one at (800,800) are spurious; the one
    # beside the weak reflection is not.
    assert counts == {"n_found": 5, "n_reference": 3, "tp": 2, "fn": 1, "spurious": 2}
    assert sorted(off.offset_px.round(6)) == [0.5, 2.0]


def test_summary_ranks_and_resolution_bins_share_edges():
    frames = pd.DataFrame([
        {"experiment": "e", "model": m, "finder": f, "reference": "truth", "frame": i, "n_found": 10,
         "n_reference": 10, "tp": tp, "fn": 10 - tp, "spurious": 10 - tp, "geometry_source": ""}
        for m, f, tp in (("a", "cnn", 9), ("a", "dispersion", 6), ("b", "cnn", 7)) for i in range(2)])
    rng = np.random.default_rng(1)
    offsets = pd.DataFrame([{"experiment": "e", "model": m, "finder": f, "reference": "truth", "frame": 0,
                             "d_angstrom": d, "offset_px": 0.5, "radial_px": 0.3, "transverse_px": -0.1}
                            for m, f in (("a", "cnn"), ("a", "dispersion"), ("b", "cnn"))
                            for d in rng.uniform(2.0, 8.0, 40)])
    s = rank_models(summarize(frames, offsets))
    assert list(zip(s.model, s.finder, s["rank"])) == [("a", "cnn", 1), ("b", "cnn", 2), ("a", "dispersion", 3)]
    assert s.recall.tolist() == [0.9, 0.7, 0.6] and s.spurious_per_frame.tolist() == [1.0, 3.0, 4.0]
    assert s.median_radial_px.tolist() == [0.3, 0.3, 0.3]
    bins = offsets_by_resolution(offsets, 4)
    assert len(bins) == 12 and bins.groupby(["model", "finder"]).n.sum().tolist() == [40, 40, 40]
    edges = resolution_edges(offsets.d_angstrom.to_numpy(), 4)
    np.testing.assert_allclose(np.diff(edges**3), np.diff(edges**3)[0])  # equal reciprocal-space volumes
    assert bins.d_min_angstrom.min() == pytest.approx(offsets.d_angstrom.min())
    same = bins.groupby("bin").d_max_angstrom.nunique()
    assert (same == 1).all()


def test_experiment_entries_deep_copy_the_config(config):
    before = copy.deepcopy(config)
    specs(config)
    assert config == before


def test_file_inputs_carry_hit_labels_and_the_classifier_table_scores_them(config, tmp_path):
    """hit_frames: frame indices, or dials_indexed (DIALS' indexing); checked against the input's frame count."""
    from braggflow.evaluate import classifier_table
    from braggflow.formats import dials_export
    from braggflow.formats.frames import write_frames_file
    from braggflow.formats.predictions import write_prediction

    cspad = config["experiments"]["thermolysin_lcls_cspad"]
    assert specs(config)["thermolysin_lcls_cspad"].hit_frames is None
    config["experiments"]["thermolysin_lcls_cspad"] = {**cspad, "hit_frames": [0, 2]}
    assert specs(config)["thermolysin_lcls_cspad"].hit_frames == (0, 2)
    config["experiments"]["shifted_7keV_250mm"]["hit_frames"] = [0]
    with pytest.raises(ConfigError, match=r"experiments.shifted_7keV_250mm.hit_frames': a shifted simulation"):
        specs(config)
    g = small_geometry()
    frames = tmp_path / "frames.h5"
    write_frames_file(frames, np.zeros((4, 1, g.n_slow, g.n_fast)), g.detector(), g.wavelength_angstrom,
                      INCIDENT_UNIT, ["x"] * 4, range(4), 1.0, "test")
    pred = tmp_path / "hits.h5"
    write_prediction(pred, np.array([0.9, 0.1, 0.8, 0.7], np.float32), classes=["hit"], model_id="m",
                     panel_names=["panel0"], attrs={"layout": "frames", "model": "hit_classifier"})
    by_index = classifier_table("x", {"hit_classifier-7keV_100mm": str(pred)}, None, None, str(frames), (0, 2, 3))
    assert by_index.accuracy.tolist() == [1.0] and by_index.reference.tolist() == ["hit_frames (config)"]
    arrays = {k: np.zeros(4) for k in dials_export.FRAME_KEYS}
    arrays.update({k: np.zeros(0) for k in dials_export.KEYS if k not in dials_export.FRAME_KEYS})
    arrays["indexed"] = np.array([True, False, False, True])
    dials_export.write_dials_export(tmp_path / "export.npz", arrays)
    by_dials = classifier_table("x", {"m": str(pred)}, None, None, str(frames), "dials_indexed",
                                str(tmp_path / "export.npz"))
    assert by_dials.accuracy.tolist() == [0.75] and by_dials.reference.tolist() == ["frames DIALS indexed"]
    none = classifier_table("x", {"m": str(pred)}, None, None, str(frames))
    assert np.isnan(none.accuracy[0]) and none.reference[0] == "none"
    with pytest.raises(ConfigError, match=r"experiments.x.hit_frames': frame 4 is beyond the 4 frames"):
        classifier_table("x", {"m": str(pred)}, None, None, str(frames), (1, 4))


def test_an_experiment_dials_could_not_index_gives_an_empty_table_the_summary_reads(tmp_path):
    """No reference to score against (DIALS indexed no frame): the evaluation table has its header and no row,
    and the summary still reads it beside the others."""
    import pandas as pd

    from braggflow.evaluate import read_tables, summarize
    from braggflow.evaluate.run import FRAME_COLUMNS

    pd.DataFrame([], columns=list(FRAME_COLUMNS)).to_csv(tmp_path / "empty.tsv", sep="\t", index=False)
    row = {c: 0 for c in FRAME_COLUMNS} | {"experiment": "x", "model": "m", "finder": "cnn", "reference": "dials",
                                          "geometry_source": "DIALS geometry", "out_of_distribution": False,
                                          "n_found": 3, "n_reference": 2, "tp": 2}
    pd.DataFrame([row]).to_csv(tmp_path / "one.tsv", sep="\t", index=False)
    frames = read_tables([tmp_path / "empty.tsv", tmp_path / "one.tsv"])
    offsets = pd.DataFrame(columns=["experiment", "model", "finder", "reference", "frame", "d_angstrom",
                                    "offset_px", "radial_px", "transverse_px"])
    s = summarize(frames, offsets)
    assert len(s) == 1 and s.recall.iloc[0] == 1.0
