"""Calibration of an experiment's matched simulation from its own frames (braggflow.calibration): a synthetic
photon-counting experiment (3 photons per pixel of water, Poisson noise only) made with known beam, jet and PSF,
and its DIALS-like result; the calibration recovers what it was made with."""

import json
import math

import numpy as np
import pytest

from conftest import RESOURCES, ROOT

from braggflow.beam import Beam
from braggflow.calibration import (calibrate, calibrated, calibrated_training, photon_cut, read_calibration,
                                   scaled_ncells, spot_boxes, write_calibration)
from braggflow.detector import INCIDENT_UNIT, Detector, Panel
from braggflow.draws import draw_frame
from braggflow.formats import dials_export
from braggflow.errors import InputError
from braggflow.formats.frames import write_frames_file
from braggflow.outliers import measure_outlier_pixels, write_outlier_pixels
from braggflow.shards import SimulationSettings, b_matrix, load_structure_factors, simulate_frame
from braggflow.simulator import get_array_module
from braggflow.units import wavelength_angstrom
from braggflow.water import water_photons

TABLE = RESOURCES / "water/water_scattering_25C.csv"
ENERGY_KEV = 12.8
TRUE_PHOTONS = 4.0e11
TRUE_JET_UM = 0.77
TRUE_PSF_UM = 75.0
NCELLS = {"dist": "fixed", "value": 20}
N_FRAMES = 10
DRAW_SEED = (11, 99)


def config_sections():
    import yaml

    from braggflow.config import _fill_defaults, load_schema

    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    _fill_defaults(cfg, load_schema(ROOT / "config/config.schema.yaml"))
    sim = {**cfg["simulation"], "mosaic_domains": 1, "spectrum_samples": 1, "ncells": NCELLS}
    return cfg["beam"], sim, {**cfg["overlay"], "adu_per_photon": 1.0}


@pytest.fixture(scope="module")
def counting_experiment(tmp_path_factory):
    """A 256 x 256 counting detector (75 um pixels) at 40 mm, 12.8 keV: thermolysin stills with 3 water photons per
    pixel, Poisson noise, a 1-pixel PSF; the frames file, an export as DIALS writes it (the true crystals, summation
    I/sigma) and the lone-pixel measurement."""
    from braggflow.formats.mtz import write_mtz
    from braggflow.sf import compute_sf_table
    from braggflow.stills import predicted_positions
    from braggflow.structures import read_structure

    tmp = tmp_path_factory.mktemp("calibration")
    wl = wavelength_angstrom(ENERGY_KEV)
    panel = Panel.from_beam_center(40.0, (128.0, 128.0), 0.075, 256, 256)
    det = Detector((panel,))
    model = read_structure(RESOURCES / "structures/thermolysin_stand_in.pdb")
    write_mtz(tmp / "sf.mtz", model, compute_sf_table(model, ENERGY_KEV, 0.95 * det.d_min_angstrom(wl)), ENERGY_KEV)
    beam_cfg, sim, _ = config_sections()
    beam = Beam.from_config({**beam_cfg, "photons_per_pulse": TRUE_PHOTONS}).at_wavelength(wl)
    settings = SimulationSettings.at_wavelength({**sim, "psf_fwhm_um": TRUE_PSF_UM}, wl, beam)
    sf, cell = load_structure_factors(tmp / "sf.mtz")
    b = b_matrix(cell)
    water = water_photons(det, beam, TRUE_JET_UM * 1e-6, TABLE)[0]
    rng = np.random.default_rng(7)
    frames, a_mats, rows = [], [], []
    for i in range(N_FRAMES):
        d = draw_frame(settings.draws, *DRAW_SEED, i)
        # every reflection near the Ewald sphere, as DIALS predicts them
        image, truth = simulate_frame(d, b, sf, panel, settings, beam, get_array_module("numpy"), 1e-3)
        counts = rng.poisson(image.astype(np.float64) + water[0]).astype(np.float32)
        frames.append(counts[None])
        a = d.orientation @ b
        a_mats.append(a.ravel())
        hkl = truth.hkl
        xy = predicted_positions(a, hkl, np.zeros(len(hkl), int), det, INCIDENT_UNIT, wl, 0.0, None)
        net, _ = spot_boxes(counts[None], np.zeros(len(hkl), int), xy)
        ok = np.isfinite(net)
        bg = 25 * float(np.median(counts))
        variance = np.maximum(net[ok], 0) + bg  # summation integration: Poisson of the spot and its background
        rows.append((i, hkl[ok], xy[ok], net[ok], variance))
    write_frames_file(tmp / "frames.h5", np.stack(frames), det, wl, INCIDENT_UNIT, ["synthetic"] * N_FRAMES,
                      np.arange(N_FRAMES), 1.0, "synthetic counting detector")
    arrays = synthetic_export(det, wl, a_mats, rows)
    dials_export.write_dials_export(tmp / "export.npz", arrays)
    write_outlier_pixels(tmp / "outliers.json", measure_outlier_pixels(tmp / "frames.h5", 5.0))
    return tmp, det, water, wl


def synthetic_export(det, wl, a_mats, rows):
    n = len(a_mats)
    p = det[0]
    arrays = {"n_strong": np.zeros(n), "indexed": np.ones(n, bool), "a_matrix": np.stack(a_mats),
              "cell": np.tile([93.42, 93.42, 131.08, 90, 90, 120], (n, 1)), "n_indexed": np.zeros(n),
              "n_integrated": np.array([len(r[1]) for r in rows]), "rmsd_px": np.zeros(n),
              "s0": np.tile(np.asarray(INCIDENT_UNIT) / wl, (n, 1)),
              "panel_origin_mm": np.tile(np.asarray(p.origin_mm), (n, 1, 1)),
              "panel_fast_axis": np.tile(np.asarray(p.fast_axis), (n, 1, 1)),
              "panel_slow_axis": np.tile(np.asarray(p.slow_axis), (n, 1, 1)),
              "panel_pixel_size_mm": np.full((n, 1, 2), p.pixel_size_mm),
              "panel_image_size": np.tile([[p.n_fast, p.n_slow]], (n, 1, 1)),
              "panel_parallax_mu_per_mm": np.zeros((n, 1)), "panel_parallax_t0_mm": np.zeros((n, 1))}
    frame = np.concatenate([np.full(len(r[1]), r[0]) for r in rows])
    hkl = np.concatenate([r[1] for r in rows])
    xy = np.concatenate([r[2] for r in rows])
    net = np.concatenate([r[3] for r in rows])
    variance = np.concatenate([r[4] for r in rows])
    cols = {"frame": frame, "h": hkl[:, 0], "k": hkl[:, 1], "l": hkl[:, 2], "x_obs": xy[:, 0], "y_obs": xy[:, 1],
            "x_cal": xy[:, 0], "y_cal": xy[:, 1], "intensity": net, "variance": variance,
            "partiality": np.ones(len(net)), "d": np.ones(len(net)), "panel": np.zeros(len(net), int),
            "i_over_sigma": net / np.sqrt(variance)}
    arrays.update({"refl_" + k: v for k, v in cols.items()})
    arrays.update({"strong_" + k: np.zeros(0, t) for k, t in dials_export.STRONG_COLUMNS.items()})
    return arrays


def run_calibration(experiment, fixed, trial_frames=N_FRAMES):
    tmp, *_ = experiment
    beam_cfg, sim, overlay = config_sections()
    return calibrate(frames_path=tmp / "frames.h5", export_npz=tmp / "export.npz", mtz_path=tmp / "sf.mtz",
                     water_table=TABLE, outliers_json=tmp / "outliers.json",
                     beam_cfg={**beam_cfg, "photons_per_pulse": 1.0e11}, simulation=sim, overlay=overlay,
                     fixed=fixed, min_i_over_sigma=5.0, trial_frames=trial_frames, seed=3, dataset_index=5)


def test_calibration_recovers_background_and_spot_strength_of_a_counting_detector(counting_experiment):
    tmp, det, water, wl = counting_experiment
    report = run_calibration(counting_experiment, {"simulation.ncells": NCELLS})
    s = report["settings"]
    print(json.dumps({k: report[k] for k in ("settings", "measured", "photon_cut", "size_fit", "outlier_fit", "psf_fit")},
                     indent=1))
    assert report["detector_kind"] == "photon counting" and s["overlay"]["readout_noise_adu"] == 0.0
    # The background: the water of the calibrated beam and jet is the water the frames were made with.
    assert np.median(water) == pytest.approx(3.0, rel=0.15)
    beam = Beam.from_config({**config_sections()[0], **s["beam"]}).at_wavelength(wl)
    fitted = water_photons(det, beam, s["jet_thickness_um"] * 1e-6, TABLE)[0]
    assert fitted.mean() == pytest.approx(water.mean(), rel=0.1)
    assert report["measured"]["background_photons_per_px"] == pytest.approx(water.mean(), rel=0.1)
    # The spot strength: the pulse's photons (at the true crystal size) and the spots' photons above the cut.
    assert s["beam"]["photons_per_pulse"] == pytest.approx(TRUE_PHOTONS, rel=0.1)
    row = report["size_fit"][0]
    assert row["median_net_photons_above_cut"] == pytest.approx(
        report["measured"]["median_net_photons_above_cut"], rel=0.1)
    # The cut at I/sigma 5 on 3 photons/pixel: net / sqrt(net + 25 * 3) = 5, ~59 photons.
    assert s["peak_finder"]["score_min_photons"] == pytest.approx(58.6, rel=0.1)
    assert s["simulation"]["psf_fwhm_um"] == pytest.approx(TRUE_PSF_UM, abs=25.0)
    # Poisson noise of the counting detector is no hot pixel: nothing is drawn beyond what the noise makes.
    assert report["outlier_fit"]["measured_per_mpx"] > 100
    assert s["outliers_from_frames"] is False and s["overlay"]["outlier_pixels_per_mpx"] == 0.0


def test_hand_set_values_are_kept_and_the_rest_fitted_around_them(counting_experiment):
    """A hand-set beam fixes the scale: the jet then follows from the background at that beam, so the water level is
    the same; a hand-set PSF and photon cut are kept as they are."""
    tmp, det, water, wl = counting_experiment
    fixed = {"simulation.ncells": NCELLS, "beam.photons_per_pulse": 2.0e11, "simulation.psf_fwhm_um": 90.0,
             "peak_finder.score_min_photons": 70.0, "outliers_from_frames": True}
    report = run_calibration(counting_experiment, fixed, trial_frames=2)
    s = report["settings"]
    assert report["hand_set"] == sorted(fixed)
    assert s["beam"]["photons_per_pulse"] == 2.0e11 and s["simulation"]["psf_fwhm_um"] == 90.0
    assert s["peak_finder"]["score_min_photons"] == 70.0 and s["outliers_from_frames"] is True
    assert s["jet_thickness_um"] == pytest.approx(TRUE_JET_UM * TRUE_PHOTONS / 2.0e11, rel=0.1)
    # outliers drawn by hand, at the excess over noise: none here
    assert s["overlay"]["outlier_pixels_per_mpx"] < 0.2 * report["outlier_fit"]["measured_per_mpx"]


def test_an_integrating_detector_reads_as_one_with_its_readout_noise(counting_experiment, tmp_path):
    from braggflow.calibration import measure_experiment
    from braggflow.formats.frames import read_frame_photons, read_frames_info, read_untrusted_pixels

    src, det, water, wl = counting_experiment
    info = read_frames_info(src / "frames.h5")
    rng = np.random.default_rng(1)
    q = water_photons(det, Beam.from_config(config_sections()[0]).at_wavelength(wl), 1e-6, TABLE)[1]
    cases = [(src / "frames.h5", True, 0.0)]
    for sigma in (0.15, 0.6):  # readout noise in photons, then clipped at 0 as the readers do
        frames = [np.clip(read_frame_photons(src / "frames.h5", i) + rng.normal(0.0, sigma, (1, 256, 256)), 0, None)
                  for i in range(info.n_frames)]
        write_frames_file(tmp_path / f"{sigma}.h5", np.stack(frames), det, wl, INCIDENT_UNIT, ["x"] * info.n_frames,
                          np.arange(info.n_frames), 1.0, "synthetic integrating detector")
        cases.append((tmp_path / f"{sigma}.h5", False, sigma if sigma < 0.25 else None))
    for path, counting, readout in cases:
        m = measure_experiment(read_frames_info(path), src / "export.npz", q, read_untrusted_pixels(path), None)
        assert m.counting is counting
        if readout is None:  # wider than ~0.25 photons: not resolved from Poisson's, the configured value stays
            assert math.isnan(m.readout_noise_photons)
        else:
            assert m.readout_noise_photons == pytest.approx(readout, abs=0.02)
        assert m.indexed_frames == N_FRAMES and len(m.net_photons) > 100


def test_photon_cut_reads_the_power_law_at_the_cut():
    rng = np.random.default_rng(0)
    ios = rng.uniform(1.0, 20.0, 400)
    net = 3.0 * ios**1.6 * rng.lognormal(0.0, 0.1, ios.size)
    net[:5] = 1e4  # overlapped spots do not move a Theil-Sen fit
    cut = photon_cut(ios, net, 5.0)
    assert cut["photons"] == pytest.approx(3.0 * 5.0**1.6, rel=0.03) and cut["exponent"] == pytest.approx(1.6, abs=0.05)
    with pytest.raises(ValueError, match="3 integrated reflections with I/sigma 2.5-10"):
        photon_cut(np.array([3.0, 4.0, 5.0]), np.array([10.0, 20.0, 30.0]), 5.0)


def test_a_box_beside_a_brighter_spot_is_not_counted_as_that_spot():
    image = np.zeros((1, 20, 20))
    image[0, 10, 10] = 100.0
    net, share = spot_boxes(image, np.array([0, 0, 0, 0]), np.array([[10.5, 10.5], [11.6, 10.5], [13.5, 10.5],
                                                                        [1.0, 1.0]]), noise_free=True)
    assert net[0] == 100.0 and share[0] == 1.0
    assert net[1] == 100.0  # one pixel off: still its spot
    assert np.isnan(net[2]) and np.isnan(net[3])  # the bright pixel 3 px away; a box off the panel


def test_calibration_file_round_trip_and_what_reads_it(tmp_path):
    settings = {"beam": {"photons_per_pulse": 2e11}, "jet_thickness_um": 1.2,
                "simulation": {"psf_fwhm_um": 100.0, "ncells": {"dist": "fixed", "value": 25}},
                "overlay": {"readout_noise_adu": 0.1, "outlier_pixels_per_mpx": 50.0, "label_min_photons": 8.0},
                "outliers_from_frames": True, "peak_finder": {"score_min_photons": 40.0}}
    write_calibration(tmp_path / "c.json", {"settings": settings})
    assert read_calibration(tmp_path / "c.json") == settings
    beam, sim, overlay, jet_m = calibrated(settings, beam={"photons_per_pulse": 1e11, "size_um": [1, 1]},
                                           simulation={"psf_fwhm_um": 0.0, "oversample": 1},
                                           overlay={"label_min_photons": 1.0, "blank_fraction": 0.1})
    assert beam == {"photons_per_pulse": 2e11, "size_um": [1, 1]} and jet_m == pytest.approx(1.2e-6)
    assert sim["oversample"] == 1 and sim["ncells"] == {"dist": "fixed", "value": 25}
    assert overlay["blank_fraction"] == 0.1 and overlay["label_min_photons"] == 8.0
    params = {"peak_finder": {"score_min_photons": 10.0, "epochs": 3}, "match_radius_px": 3.0}
    assert calibrated_training(params, settings)["peak_finder"] == {"score_min_photons": 40.0, "epochs": 3}
    assert calibrated_training({"hit_classifier": {}}, settings) == {"hit_classifier": {}}
    assert params["peak_finder"]["score_min_photons"] == 10.0  # not changed in place
    (tmp_path / "bad.json").write_text(json.dumps({"settings": {**settings, "jet_thickness_um": -1}}))
    with pytest.raises(InputError, match="bad.json.*out of range"):
        read_calibration(tmp_path / "bad.json")
    (tmp_path / "none.json").write_text("{}")
    with pytest.raises(InputError, match="none.json.*unreadable calibration"):
        read_calibration(tmp_path / "none.json")
    assert scaled_ncells({"dist": "uniform", "low": 20, "high": 40}, 0.5) == {"dist": "uniform", "low": 10.0,
                                                                            "high": 20.0}


def test_no_indexed_frame_is_a_clear_error(counting_experiment, tmp_path):
    tmp, *_ = counting_experiment
    arrays = dict(np.load(tmp / "export.npz"))
    arrays["indexed"] = np.zeros_like(arrays["indexed"])
    dials_export.write_dials_export(tmp_path / "export.npz", arrays)
    beam_cfg, sim, overlay = config_sections()
    with pytest.raises(InputError, match=r"export.npz.*DIALS indexed none of the experiment's frames"):
        calibrate(frames_path=tmp / "frames.h5", export_npz=tmp_path / "export.npz", mtz_path=tmp / "sf.mtz",
                  water_table=TABLE, outliers_json=None, beam_cfg=beam_cfg, simulation=sim, overlay=overlay, fixed={},
                  min_i_over_sigma=5.0, trial_frames=1, seed=0, dataset_index=0)


def test_the_crystal_size_is_chosen_where_the_spots_photons_cross_and_kept_where_they_do_not_tell():
    from braggflow.calibration import _choose_size

    def rows(mismatch):
        return [{"ncells_factor": f, "photons_per_pulse": p, "log_mismatch": m}
                for f, p, m in zip((0.5, 1.0, 2.0), (4e11, 1e11, 2.5e10), mismatch)]

    f, p = _choose_size(rows((-0.2, 0.2, 0.5)))  # crosses halfway between 0.5x and 1x
    assert f == pytest.approx(math.sqrt(0.5), rel=1e-3) and p == pytest.approx(2e11, rel=1e-3)
    assert _choose_size(rows((0.9, 0.5, 0.1))) == (2.0, 2.5e10)
    assert _choose_size(rows((-0.35, -0.26, -0.35))) == (1.0, 1e11)  # the CSPAD's four stills: no size fits better
