"""Overlays: noise statistics of blank frames, labels against the truth, byte-identical reruns, DIALS import."""

import json
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from braggflow.beam import Beam
from braggflow.errors import InputError
from braggflow.formats.shards import read_images as read_counts, read_label
from braggflow.overlay import OverlaySettings, overlay_frame, read_overlay_frames, read_overlay_truth, write_overlay
from braggflow.shards import SimulationSettings, write_shard
from braggflow.formats.background import write_background
from braggflow.water import water_image
from conftest import RESOURCES, small_geometry

BEAM = Beam(1e12, (1e-6, 1e-6), 0.99, 0.0)
SIM = {"oversample": 1, "crystal_shape": "square", "rel_tol": 2e-4, "min_stored_photons": 1e-4, "psf_fwhm_um": 0.0,
       "sensor_layers": 0,
       "ncells": {"dist": "uniform", "low": 20, "high": 30}, "ncells_per_axis": False, "mosaic_spread_deg": 0.05,
       "mosaic_domains": 2, "mosaic_model": "nanobragg", "spectrum_shape": "gaussian", "bandwidth_frac": 0.002,
       "spectrum_samples": 2, "energy_jitter_rel_sigma": 5e-4, "fluence_rel_sigma": 0.1}
OVERLAY = OverlaySettings(blank_fraction=0.5, jet_thickness_rel_sigma=0.15, adu_per_photon=1.0, readout_noise_adu=0.0,
                          saturation_adu=65535, bad_pixel_fraction=1e-3, label_nsigma=2.0, label_min_photons=1.0,
                          outlier_pixels_per_mpx=0.0, outlier_photons=(5.0, 500.0))
SEED = 3


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, mtz_1ic6_7kev):
    tmp = tmp_path_factory.mktemp("overlay")
    g = small_geometry()
    write_background(tmp / "water.h5", water_image(g, BEAM, 20e-6, RESOURCES / "water/water_scattering_25C.csv"))
    settings = SimulationSettings.from_config(SIM, g, BEAM)
    write_shard(tmp / "peaks.h5", mtz_path=mtz_1ic6_7kev, geometry=g, beam=BEAM, settings=settings, seed=SEED,
                dataset="7keV_100mm", dataset_index=4, frames=range(0, 6), structure="1ic6")
    return tmp


def make_overlay(inputs, out, settings=OVERLAY):
    return write_overlay(out, peaks_path=inputs / "peaks.h5", water_path=inputs / "water.h5", settings=settings,
                         seed=SEED, dataset_index=4, nominal_fluence_per_m2=BEAM.fluence_per_m2)


@pytest.fixture(scope="module")
def overlay(inputs):
    make_overlay(inputs, inputs / "overlay.h5")
    return inputs / "overlay.h5"


def test_noise_model_mean_and_variance(tmp_path):
    rng = np.random.default_rng(0)
    water = np.full((600, 600), 20.0, np.float32)
    untrusted = np.zeros(water.shape, bool)
    s = OverlaySettings(0.0, 0.0, adu_per_photon=2.0, readout_noise_adu=1.5, saturation_adu=10**6,
                        bad_pixel_fraction=0.0, label_nsigma=2.0, label_min_photons=1.0, outlier_pixels_per_mpx=0.0,
                        outlier_photons=(5.0, 500.0))
    fr = overlay_frame(np.zeros_like(water), water, untrusted, hit=False, jet_factor=1.0, fluence_factor=1.0,
                       s=s, rng=rng)
    c = fr.counts.astype(float)
    assert c.mean() == pytest.approx(2.0 * 20.0, abs=0.05)
    # gain^2 * lambda (Poisson) + readout noise^2 + 1/12 (rounding to integer ADU)
    assert c.var() == pytest.approx(4.0 * 20.0 + 1.5**2 + 1 / 12, rel=0.02)
    assert not fr.label.any()


def test_blank_frames_are_water_and_poisson_noise_only(overlay):
    frames = read_overlay_frames(overlay)
    assert set(frames.hit) == {0, 1}, "the fixture's seed must give both hits and blanks"
    with h5py.File(overlay) as f:
        water = f["braggflow/water_photons"][()]
        mask = f["entry/instrument/detector/pixel_mask"][()]
    for i, row in frames[frames.hit == 0].iterrows():
        counts = read_counts(overlay, i).astype(float)
        expected = water * row.jet_factor * row.fluence_factor  # gain 1, no readout noise
        good = mask == 0
        z = (counts[good] - expected[good]) / np.sqrt(expected[good])
        assert abs(z.mean()) < 0.01 and z.var() == pytest.approx(1.0, abs=0.02)
        assert np.all(counts[~good] == -1)
        assert not read_label(overlay, i).any() and row.n_peaks == 0 and row.bragg_photons == 0
    truth = read_overlay_truth(overlay)
    assert set(truth.frame_index) == set(frames.frame_index[frames.hit == 1])


def test_labels_cover_the_truth_spots(overlay):
    frames, truth = read_overlay_frames(overlay), read_overlay_truth(overlay)
    with h5py.File(overlay) as f:
        water = f["braggflow/water_photons"][()]
        mask = f["entry/instrument/detector/pixel_mask"][()]
    for i, row in frames[frames.hit == 1].iterrows():
        label = read_label(overlay, i)
        t = truth[truth.frame_index == row.frame_index]
        assert row.n_peaks == t.visible.sum() > 10
        # Every reflection whose spot clearly stands out of the water noise is covered by the labels.
        x, y = t.x_px.astype(int).to_numpy(), t.y_px.astype(int).to_numpy()
        noise = np.sqrt(water[y, x] * row.jet_factor * row.fluence_factor)
        clear = (t.photons.to_numpy() > 20 * noise + 20) & (mask[y, x] == 0)
        assert clear.sum() > 5
        assert t.visible.to_numpy()[clear].all()
        assert not label[mask != 0].any()


def test_rerun_gives_the_same_bytes(inputs, overlay, tmp_path):
    make_overlay(inputs, tmp_path / "again.h5")
    assert (tmp_path / "again.h5").read_bytes() == overlay.read_bytes()


def test_mismatched_peaks_and_background_stop_clearly(inputs, tmp_path):
    other = small_geometry(energy_kev=8.0)
    write_background(tmp_path / "water8.h5", water_image(other, BEAM, 20e-6, RESOURCES / "water/water_scattering_25C.csv"))
    with pytest.raises(InputError, match=r"peaks\.h5: peaks shard and water background .*water8\.h5 describe different "
                                         r"experiments: energy_kev 7 keV vs 8 keV"):
        write_overlay(tmp_path / "o.h5", peaks_path=inputs / "peaks.h5", water_path=tmp_path / "water8.h5",
                      settings=OVERLAY, seed=SEED, dataset_index=4, nominal_fluence_per_m2=BEAM.fluence_per_m2)
    from braggflow.geometry import dataset_geometry
    from braggflow.matrix import Dataset

    big = dataset_geometry({"detector": {"pyfai_name": "Eiger500k", "beam_center_px": None, "sensor_material": "Si",
                                         "sensor_thickness_mm": 0.45}}, Dataset("7keV_100mm", 7.0, 0.1, 4))
    write_background(tmp_path / "w500k.h5", water_image(big, BEAM, 20e-6, RESOURCES / "water/water_scattering_25C.csv"))
    with pytest.raises(InputError, match=r"detector shape 1065x1030 vs 514x1030"):
        write_overlay(tmp_path / "o.h5", peaks_path=inputs / "peaks.h5", water_path=tmp_path / "w500k.h5",
                      settings=OVERLAY, seed=SEED, dataset_index=4, nominal_fluence_per_m2=BEAM.fluence_per_m2)
    assert not (tmp_path / "o.h5").exists() and not list(tmp_path.glob(".o.h5*"))


@pytest.mark.slow
def test_dials_imports_the_frames_with_the_dataset_geometry(overlay, tmp_path):
    if shutil.which("dials.import") is None:
        pytest.skip("DIALS is not installed (Debian package dials; `make test` installs it)")
    subprocess.run(["dials.import", str(overlay)], cwd=tmp_path, check=True, capture_output=True, timeout=300)
    expt = json.loads((tmp_path / "imported.expt").read_text())
    g = small_geometry()
    assert len(expt["experiment"]) == 6
    panel = expt["detector"][0]["panels"][0]
    bx, by = g.beam_center_px
    assert panel["origin"] == pytest.approx([-bx * 0.075, by * 0.075, -100.0], abs=1e-6)
    assert panel["image_size"] == [1030, 1065] and panel["pixel_size"] == pytest.approx([0.075, 0.075])
    assert panel["thickness"] < 1e-3  # thin sensor: no parallax correction, like the simulator
    assert expt["beam"][0]["wavelength"] == pytest.approx(g.wavelength_angstrom, rel=2e-3)  # jittered energy


def test_outlier_pixels_are_isolated_unlabelled_and_follow_their_settings():
    rng = np.random.default_rng(3)
    water = np.full((500, 400), 0.5, np.float32)
    untrusted = np.zeros(water.shape, bool)
    untrusted[:100] = True
    base = dict(blank_fraction=0.0, jet_thickness_rel_sigma=0.0, adu_per_photon=1.0, readout_noise_adu=0.0,
                saturation_adu=10**6, bad_pixel_fraction=0.0, label_nsigma=2.0, label_min_photons=1.0)
    s = OverlaySettings(**base, outlier_pixels_per_mpx=2000.0, outlier_photons=(20.0, 400.0))
    counts, amplitudes = [], []
    for _ in range(20):
        fr = overlay_frame(np.zeros_like(water), water, untrusted, hit=False, jet_factor=1.0, fluence_factor=1.0,
                           s=s, rng=rng)
        bright = fr.counts >= 20  # Poisson(0.5) never reaches 20: these are the outliers
        assert bright.sum() == fr.params["outlier_pixels"]
        assert not bright[:100].any() and not fr.label.any()
        assert fr.counts[bright].max() <= 400 + 10
        counts.append(fr.params["outlier_pixels"])
        amplitudes.append(fr.counts[bright])
    expected = 2000.0 * 400 * 400 / 1e6  # trusted pixels only
    assert np.mean(counts) == pytest.approx(expected, rel=0.05)
    amp = np.concatenate(amplitudes)
    assert np.mean(amp < np.sqrt(20.0 * 400.0)) == pytest.approx(0.5, abs=0.03)  # log-uniform: median sqrt(lo*hi)
    # rate 0 draws nothing: the frame is byte-identical to one made without outlier settings
    plain = OverlaySettings(**base, outlier_pixels_per_mpx=0.0, outlier_photons=(20.0, 400.0))
    a = overlay_frame(np.zeros_like(water), water, untrusted, False, 1.0, 1.0, plain, np.random.default_rng(5))
    b = overlay_frame(np.zeros_like(water), water, untrusted, False, 1.0, 1.0,
                      OverlaySettings(**base, outlier_pixels_per_mpx=0.0, outlier_photons=(5.0, 500.0)), np.random.default_rng(5))
    np.testing.assert_array_equal(a.counts, b.counts)
    assert a.params["outlier_pixels"] == 0
    with pytest.raises(ValueError, match=r"'overlay.outlier_photons': value \(50.0, 5.0\) is out of range"):
        OverlaySettings(**base, outlier_pixels_per_mpx=1.0, outlier_photons=(50.0, 5.0))
