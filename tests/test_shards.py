"""Simulated shards: shard-size independence, byte-identical reruns, truth vs image vs DIALS, bad inputs."""

import json
import subprocess

import numpy as np
import pytest

from braggflow.beam import Beam
from braggflow.errors import InputError
from braggflow.formats.nxmx import nxmx_writer
from braggflow.formats.shards import read_attrs, read_frame_arrays, read_images, read_truth
from braggflow.shards import THIN_SENSOR_MM, SimulationSettings, write_shard
from conftest import ROOT, small_geometry, system_python_with

BEAM = Beam(1e12, (1e-6, 1e-6), 0.99, 0.0)
SIM = {"oversample": 1, "crystal_shape": "square", "rel_tol": 2e-4, "min_stored_photons": 1e-4, "psf_fwhm_um": 0.0,
       "sensor_layers": 0,
       "ncells": {"dist": "uniform", "low": 20, "high": 30}, "ncells_per_axis": False, "mosaic_spread_deg": 0.05,
       "mosaic_domains": 3, "mosaic_model": "nanobragg", "spectrum_shape": "gaussian", "bandwidth_frac": 0.002,
       "spectrum_samples": 3, "energy_jitter_rel_sigma": 5e-4, "fluence_rel_sigma": 0.1}


@pytest.fixture(scope="module")
def mtz(mtz_1ic6_7kev):
    return mtz_1ic6_7kev


def shard(path, mtz, frames, sim=SIM, **kw):
    g = small_geometry()
    settings = SimulationSettings.from_config(sim, g, BEAM)
    return write_shard(path, mtz_path=mtz, geometry=g, beam=BEAM, settings=settings, seed=11, dataset="7keV_100mm",
                       dataset_index=4, frames=frames, structure="1ic6", **kw)


def test_frames_do_not_depend_on_the_shard_size_and_reruns_are_byte_identical(tmp_path, mtz):
    shard(tmp_path / "one.h5", mtz, range(0, 3))
    shard(tmp_path / "a.h5", mtz, range(0, 2))
    shard(tmp_path / "b.h5", mtz, range(2, 3))
    whole = read_images(tmp_path / "one.h5")
    np.testing.assert_array_equal(whole[:2], read_images(tmp_path / "a.h5"))
    np.testing.assert_array_equal(whole[2:], read_images(tmp_path / "b.h5"))
    f_one, f_b = read_frame_arrays(tmp_path / "one.h5"), read_frame_arrays(tmp_path / "b.h5")
    for key in ("A_matrix", "ncells", "mosaic_umats", "wavelengths_angstrom", "weights", "fluence_photons_per_m2"):
        np.testing.assert_array_equal(f_one[key][2:], f_b[key])
    t_one, t_b = read_truth(tmp_path / "one.h5"), read_truth(tmp_path / "b.h5")
    np.testing.assert_array_equal(t_one[t_one.frame_index == 2].to_numpy(), t_b.to_numpy())
    assert len(set(f_one["ncells"][:, 0])) > 1 and whole.max() > 100  # real draws, real spots
    shard(tmp_path / "again.h5", mtz, range(2, 3))
    assert (tmp_path / "again.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()


def test_truth_positions_are_the_centroids_of_isolated_spots(tmp_path, mtz):
    mono = dict(SIM, mosaic_domains=1, spectrum_samples=1, bandwidth_frac=0.0, crystal_shape="round",
                ncells={"dist": "fixed", "value": 25})
    shard(tmp_path / "s.h5", mtz, range(0, 2), sim=mono)
    images, truth = read_images(tmp_path / "s.h5"), read_truth(tmp_path / "s.h5")
    checked = 0
    for row in truth[truth.peak_fraction > 0.5].itertuples():
        img = images[row.frame_index]
        x0, y0 = int(row.x_px), int(row.y_px)
        if not (6 <= x0 < img.shape[1] - 6 and 6 <= y0 < img.shape[0] - 6):
            continue
        box = img[y0 - 6:y0 + 7, x0 - 6:x0 + 7].astype(float)
        if box.sum() < 50 or np.any(box[[0, -1], :] > 0.01 * box.max()) or np.any(box[:, [0, -1]] > 0.01 * box.max()):
            continue  # not isolated, or weak
        yy, xx = np.mgrid[y0 - 6:y0 + 7, x0 - 6:x0 + 7] + 0.5  # pixel centres, DIALS continuous coordinates
        cx, cy = (box * xx).sum() / box.sum(), (box * yy).sum() / box.sum()
        assert abs(cx - row.x_px) <= 0.1 and abs(cy - row.y_px) <= 0.1, (row, cx, cy)
        checked += 1
    assert checked >= 5


@pytest.mark.slow
@pytest.mark.parametrize("case", ["mono", "default"])
def test_dials_predicts_the_simulated_spot_positions(tmp_path, mtz, case):
    exe = system_python_with("dials.algorithms.spot_prediction")
    if exe is None:
        pytest.skip("DIALS is not installed (Debian package dials; `make test` installs it)")
    sim = SIM if case == "default" else dict(SIM, mosaic_domains=1, spectrum_samples=1, bandwidth_frac=0.0,
                                             energy_jitter_rel_sigma=0.0, crystal_shape="round")
    shard(tmp_path / "s.h5", mtz, range(0, 3), sim=sim)
    frames, truth = read_frame_arrays(tmp_path / "s.h5"), read_truth(tmp_path / "s.h5")
    g = small_geometry()
    # The same geometry and thin sensor DIALS would read from the overlay files, integer frames.
    with nxmx_writer(tmp_path / "f.h5", g, 3, np.int32, frames["central_wavelength_angstrom"],
                     sensor_thickness_mm=THIN_SENSOR_MM) as (_, d):
        d[:] = 0
    (tmp_path / "A.json").write_text(json.dumps([a.ravel().tolist() for a in frames["A_matrix"]]))
    subprocess.run([exe, str(ROOT / "tests/helpers/dials_predict.py"), "f.h5", "A.json", "pred.json"], cwd=tmp_path,
                   check=True, capture_output=True, timeout=300)
    pred = json.loads((tmp_path / "pred.json").read_text())
    offsets = []
    for i, frame_pred in enumerate(pred):
        dials = {tuple(h): xy for h, xy in frame_pred}
        for row in truth[(truth.frame_index == i) & (truth.peak_fraction > 0.3)].itertuples():
            if (row.h, row.k, row.l) in dials:
                x, y = dials[(row.h, row.k, row.l)]
                offsets.append(np.hypot(row.x_px - x, row.y_px - y))
    offsets = np.array(offsets)
    assert len(offsets) >= 10
    print(f"{case}: {len(offsets)} reflections, DIALS vs simulated median {np.median(offsets):.3f} px, "
          f"max {offsets.max():.3f} px")
    # DIALS' stills predictor rotates the lattice point onto the Ewald sphere (|r| kept); the intensity centroid
    # of a spot (our truth, checked above to 0.1 px) lies at the sphere's point where the lattice transform peaks.
    # The two differ by a fraction of the excitation error: ~0.1 px here. Spectrum and mosaic domains spread
    # the spot further from DIALS' single-wavelength, single-domain point.
    limit_median, limit_max = (0.15, 0.6) if case == "mono" else (0.4, 1.0)
    assert np.median(offsets) <= limit_median and offsets.max() <= limit_max


def test_impossible_values_fail_clearly_and_leave_no_file(tmp_path, mtz):
    out = tmp_path / "x.h5"
    with pytest.raises(ValueError, match=r"config key 'simulation': ncells.low must be > 0, got -5"):
        shard(out, mtz, range(1), sim=dict(SIM, ncells={"dist": "uniform", "low": -5, "high": 3}))
    with pytest.raises(ValueError, match=r"beam.photons_per_pulse must be > 0, got 0"):
        Beam(0.0, (1e-6, 1e-6), 0.99, 0.0)
    with pytest.raises(InputError, match=r"8keV\.mtz: unreadable MTZ"):
        shard(out, tmp_path / "8keV.mtz", range(1))  # an energy with no structure factors
    with pytest.raises(ValueError, match=r"detector 1030x1065 px needs more than the memory limit"):
        shard(out, mtz, range(1), max_detector_bytes=2**20)
    with pytest.raises(ValueError, match=r"shard 9 is outside the 6 frames"):
        __import__("braggflow.shards", fromlist=["x"]).frame_indices(9, 1, 6)
    assert list(tmp_path.iterdir()) == []


def test_cpu_path_never_imports_cupy(tmp_path, mtz):
    code = (
        "import sys; sys.path[:0] = [%r, %r]\n"
        "from test_shards import shard\n"
        "from pathlib import Path\n"
        "shard(Path(%r) / 's.h5', Path(%r), range(1))\n"
        "assert 'cupy' not in sys.modules, 'cupy imported on the CPU path'\n"
    ) % (str(ROOT / "tests"), str(ROOT / "src"), str(tmp_path), str(mtz))
    subprocess.run([__import__("sys").executable, "-c", code], check=True, timeout=300, cwd=ROOT / "tests")


def test_a_simulated_sensor_is_stated_in_the_files_and_moves_the_spots(tmp_path, mtz):
    from braggflow.formats.nxmx import read_sensor_thickness_mm

    shard(tmp_path / "thin.h5", mtz, range(0, 1))
    shard(tmp_path / "thick.h5", mtz, range(0, 1), sim=dict(SIM, sensor_layers=2))
    assert read_sensor_thickness_mm(tmp_path / "thin.h5") == THIN_SENSOR_MM
    g = small_geometry()
    assert read_sensor_thickness_mm(tmp_path / "thick.h5") == g.sensor_thickness_mm > 0.1
    thin, thick = read_truth(tmp_path / "thin.h5"), read_truth(tmp_path / "thick.h5")
    assert (thin[["h", "k", "l"]].to_numpy() == thick[["h", "k", "l"]].to_numpy()).all()
    c = np.array(g.beam_center_px)
    r0 = np.hypot(thin.x_px - c[0], thin.y_px - c[1])
    r1 = np.hypot(thick.x_px - c[0], thick.y_px - c[1])
    far = r0 > 50
    assert far.sum() > 5 and ((r1 - r0)[far] > 0.01).all()  # parallax: outward, more at larger angles
    # the sensor stops less than every photon
    assert read_images(tmp_path / "thick.h5").sum() < read_images(tmp_path / "thin.h5").sum()
    assert json.loads(read_attrs(tmp_path / "thick.h5")["simulation"])["sensor_layers"] == 2


def test_a_divergent_beam_reaches_the_frames_and_their_provenance(tmp_path, mtz):
    from dataclasses import replace

    g = small_geometry()
    beam = replace(BEAM, divergence_mrad=(4.0, 2.0), divergence_steps=(3, 3))
    settings = SimulationSettings.from_config(SIM, g, beam)
    write_shard(tmp_path / "div.h5", mtz_path=mtz, geometry=g, beam=beam, settings=settings, seed=11,
                dataset="7keV_100mm", dataset_index=4, frames=range(0, 1), structure="1ic6")
    shard(tmp_path / "par.h5", mtz, range(0, 1))
    div, par = read_images(tmp_path / "div.h5"), read_images(tmp_path / "par.h5")
    assert np.abs(div - par).max() > 0.05 * par.max()  # 5 directions x 3 spectrum samples
    assert div.sum() == pytest.approx(par.sum(), rel=0.05)
    assert json.loads(read_attrs(tmp_path / "div.h5")["simulation"])["beam"]["divergence_mrad"] == [4.0, 2.0]
