"""Geometry written for DIALS (NXmx) and CrystFEL (.geom) describes the same experiment."""

import json
import re
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from braggflow import overlay
from braggflow.formats.crystfel import MIN_BANDWIDTH, crystfel_geometry_text, write_crystfel_geometry
from braggflow.draws import spectrum, spectrum_rel_sigma
from braggflow.experiments import import_hdf5
from braggflow.formats.hdf5_input import hdf5_layout
from braggflow.geometry import Geometry, dataset_geometry
from braggflow.matrix import Dataset
from braggflow.formats.nxmx import (DATA_PATH, DEAD_BIT, GAP_BIT, MASK_BITS, MASK_PATH, WAVELENGTH_PATH, WAVELENGTH_UNITS,
                            nxmx_writer, read_geometry)
from braggflow.formats.frames import read_frames_info
from braggflow.units import energy_kev
from conftest import crystfel_program

DET = {"pyfai_name": "Eiger4M", "sensor_material": "Si", "sensor_thickness_mm": 0.45}
CASES = {"centred": None, "off-centre": [1531.25, 300.5]}  # CXLS had the beam 1531 px along one axis


def geometry(beam_center_px, energy_kev=7.0, camera_length_m=0.25):
    return dataset_geometry({"detector": dict(DET, beam_center_px=beam_center_px)},
                            Dataset("7keV_250mm", energy_kev, camera_length_m, 0))


def write_frames(path, g, n=2):
    mask = g.gap_mask().astype(np.int32)
    with nxmx_writer(path, g, n, np.int32, [g.wavelength_angstrom] * n, mask=mask, saturation_value=10**6) as (_, d):
        for i in range(n):
            d[i] = np.full((g.n_slow, g.n_fast), i, np.int32)


def test_nxmx_layout(tmp_path):
    g = geometry(CASES["off-centre"])
    write_frames(tmp_path / "f.h5", g)
    with h5py.File(tmp_path / "f.h5") as f:
        assert f["entry/definition"][()] == b"NXmx"
        assert f[DATA_PATH].shape == (2, 2167, 2070) and f[DATA_PATH].chunks == (1, 2167, 2070)
        assert f[MASK_PATH][514, 0] == 1 and f[MASK_PATH][0, 0] == 0
        off = f["entry/instrument/detector/module/module_offset"].attrs["offset"]
        assert off[:2] == pytest.approx([1531.25 * 0.075, 300.5 * 0.075])
    assert read_geometry(tmp_path / "f.h5") == g


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_dials_reads_back_distance_wavelength_pixel_size_and_beam_centre(tmp_path, case):
    if shutil.which("dials.import") is None:
        pytest.skip("DIALS is not installed (Debian package dials; `make test` installs it)")
    g = geometry(CASES[case])
    write_frames(tmp_path / "frames.h5", g)
    subprocess.run(["dials.import", "frames.h5"], cwd=tmp_path, check=True, capture_output=True, timeout=300)
    show = subprocess.run(["dials.show", "imported.expt"], cwd=tmp_path, check=True, capture_output=True,
                          text=True, timeout=300).stdout
    bx, by = g.beam_center_px
    px = re.search(r"px: \(([-\d.]+),([-\d.]+)\)", show)
    assert float(px.group(1)) == pytest.approx(bx, abs=0.01) and float(px.group(2)) == pytest.approx(by, abs=0.01)
    assert float(re.search(r"\n\s+distance: ([\d.]+)", show).group(1)) == pytest.approx(250.0, abs=1e-3)
    assert float(re.search(r"wavelength: ([\d.]+)", show).group(1)) == pytest.approx(g.wavelength_angstrom, abs=1e-4)
    assert re.search(r"pixel_size:\{0.075,0.075\}", show) and re.search(r"image_size: \{2070,2167\}", show)
    assert "num stills: 2" in subprocess.run(["dials.import", "frames.h5", "output.experiments=again.expt"],
                                             cwd=tmp_path, capture_output=True, text=True).stdout
    # The experiment file holds the full-precision model: origin = -(beam centre) in mm, at z = -distance.
    expt = json.loads((tmp_path / "imported.expt").read_text())
    panel = expt["detector"][0]["panels"][0]
    assert panel["origin"] == pytest.approx([-bx * 0.075, by * 0.075, -250.0], abs=1e-6)
    assert panel["fast_axis"] == pytest.approx([1, 0, 0]) and panel["slow_axis"] == pytest.approx([0, -1, 0])
    assert expt["beam"][0]["wavelength"] == pytest.approx(g.wavelength_angstrom, rel=1e-9)


def _parse_geom(text):
    out = {}
    for line in text.splitlines():
        line = line.split(";")[0].strip()
        if "=" in line:
            k, v = (s.strip() for s in line.split("=", 1))
            out[k] = v
    return out


def _vec(s):
    comps = dict((axis, float(num)) for num, axis in re.findall(r"([+-]?[\d.]+)([xy])", s))
    return np.array([comps.get("x", 0.0), comps.get("y", 0.0)])


def _value_unit(text):
    value, unit = text.split(" ")
    return value, unit


@pytest.mark.parametrize("case", CASES)
def test_crystfel_geometry_places_pixels_where_dials_does(case):
    g = geometry(CASES[case])
    geom = _parse_geom(crystfel_geometry_text(g, adu_per_photon=2.0, bandwidth_rel_sigma=1e-3))
    clen, unit = _value_unit(geom["clen"])
    assert float(clen) == pytest.approx(0.25) and unit == "m" and float(geom["res"]) == pytest.approx(1 / 75e-6)
    assert float(geom["adu_per_photon"]) == 2.0 and geom["data"] == DATA_PATH and geom["mask"] == MASK_PATH
    assert (int(geom["panel0/max_fs"]), int(geom["panel0/max_ss"])) == (2069, 2166)
    corner = np.array([float(geom["panel0/corner_x"]), float(geom["panel0/corner_y"])])
    fs, ss = _vec(geom["panel0/fs"]), _vec(geom["panel0/ss"])
    bx, by = g.beam_center_px
    for f, s in [(0, 0), (bx, by), (1900.0, 70.0)]:
        crystfel_xy = corner + f * fs + s * ss  # pixels, CrystFEL lab frame (x = -DIALS x, y = DIALS y)
        dials_xy = np.array([(f - bx), -(s - by)])  # DIALS: fast along +x, slow along -y, beam at (bx, by)
        assert crystfel_xy == pytest.approx(np.array([-dials_xy[0], dials_xy[1]]))


# ---------------------------------------------------------------- CrystFEL issue #18: beam, mask, gain


def test_crystfel_reads_each_frames_wavelength_from_where_nxmx_writes_it(tmp_path):
    g = geometry(None)
    text = crystfel_geometry_text(g, adu_per_photon=2.0, bandwidth_rel_sigma=1e-3)
    geom = _parse_geom(text)
    assert "photon_energy" not in geom  # one wavelength directive only, or CrystFEL takes the last
    location, unit = _value_unit(geom["wavelength"])
    assert location == WAVELENGTH_PATH and WAVELENGTH_UNITS == "angstrom" and unit == "A"
    nominal = re.search(r"^; nominal photon_energy = ([\d.]+) eV", text, re.M)
    assert nominal and float(nominal.group(1)) == pytest.approx(7000.0)
    wl = g.wavelength_angstrom * np.array([1.0, 1.001, 0.999])
    with nxmx_writer(tmp_path / "f.h5", g, 3, np.int32, wl):
        pass  # the metadata is all this needs
    with h5py.File(tmp_path / "f.h5") as f:
        assert f[location].shape == (3,) and f[location].attrs["units"] == "angstrom"  # one per frame
        np.testing.assert_array_equal(f[location][()], wl)
    literal = _parse_geom(crystfel_geometry_text(g, adu_per_photon=2.0, bandwidth_rel_sigma=1e-3,
                                                 per_frame_wavelength=False))
    assert literal["photon_energy"] == "7000 eV" and "wavelength" not in literal


def test_crystfel_mask_covers_every_pixel_mask_bit_braggflow_sets():
    geom = _parse_geom(crystfel_geometry_text(geometry(None), adu_per_photon=1.0, bandwidth_rel_sigma=1e-3))
    bad = int(geom["mask_bad"], 16)
    assert bad == MASK_BITS and bad & GAP_BIT and bad & DEAD_BIT and int(geom["mask_good"], 16) == 0
    assert overlay.DEAD_BIT == DEAD_BIT  # the overlay's dead pixels are the bit nxmx names


def test_crystfel_gain_and_bandwidth_are_the_configured_ones():
    g = geometry(None)
    sigma = spectrum_rel_sigma("gaussian", 0.002, 3)
    geom = _parse_geom(crystfel_geometry_text(g, adu_per_photon=3.5, bandwidth_rel_sigma=sigma))
    assert float(geom["adu_per_photon"]) == 3.5 and float(geom["bandwidth"]) == pytest.approx(sigma, rel=1e-5)
    mono = _parse_geom(crystfel_geometry_text(g, adu_per_photon=1.0, bandwidth_rel_sigma=0.0))
    assert float(mono["bandwidth"]) == MIN_BANDWIDTH  # CrystFEL's own floor: no zero-width Gaussian
    with pytest.raises(ValueError, match="adu_per_photon"):
        crystfel_geometry_text(g, adu_per_photon=0.0, bandwidth_rel_sigma=1e-3)


@pytest.mark.parametrize("shape, bw, n, expect", [
    ("tophat", 0.002, 2, 0.001),  # samples at -bw/2 and +bw/2
    ("gaussian", 0.002, 2, 0.002),  # samples at -bw and +bw
    ("gaussian", 0.002, 3, 0.002 * np.sqrt(2 * 2**-4 / (1 + 2 * 2**-4))),  # end weights exp(-4 ln 2) = 1/16
    ("tophat", 0.002, 1, 0.0),
])
def test_bandwidth_is_the_standard_deviation_of_the_sampled_spectrum(shape, bw, n, expect):
    assert spectrum_rel_sigma(shape, bw, n) == pytest.approx(expect, rel=1e-9, abs=1e-15)
    lam, w = spectrum(1.5, shape, bw, n)
    assert np.sqrt(w @ (lam - 1.5) ** 2) / 1.5 == pytest.approx(expect, rel=1e-9, abs=1e-15)  # any wavelength


def _small_nxmx(path, n=3):
    """A 60 x 80 NXmx file like an overlay shard: per-frame wavelengths, a gap row and dead pixels."""
    g = Geometry("test", 80, 60, 110e-6, 0.13, (30.5, 20.25), 9.7, "Si", 0.1)
    wl = g.wavelength_angstrom * (1.0 + 1e-3 * np.arange(n))
    mask = np.zeros((60, 80), np.int32)
    mask[30] = GAP_BIT
    mask[10, 10:13] = DEAD_BIT
    with nxmx_writer(path, g, n, np.int32, wl, mask=mask) as (_, d):
        for i in range(n):
            d[i] = np.where(mask != 0, -1, 2 * (i + 1))
    return g, wl


def test_braggflow_reads_its_own_geom_with_per_frame_wavelengths(tmp_path):
    g, wl = _small_nxmx(tmp_path / "shard.h5")
    write_crystfel_geometry(tmp_path / "d.geom", g, adu_per_photon=2.0, bandwidth_rel_sigma=1e-3)
    layout = hdf5_layout(tmp_path / "shard.h5", None, tmp_path / "d.geom")
    np.testing.assert_allclose(layout.wavelengths_angstrom, wl, rtol=1e-12)
    assert layout.adu_per_photon == 2.0 and layout.geometry.camera_length_m == pytest.approx(0.13)
    assert layout.geometry.energy_kev == pytest.approx(energy_kev(wl.mean()))
    import_hdf5(tmp_path / "frames.h5", tmp_path / "nxmx.h5", tmp_path / "shard.h5", None, tmp_path / "d.geom", None)
    info = read_frames_info(tmp_path / "frames.h5")
    np.testing.assert_allclose(info.wavelength_angstrom, wl, rtol=1e-12)
    with h5py.File(tmp_path / "nxmx.h5") as f:
        np.testing.assert_allclose(f[WAVELENGTH_PATH][()], wl, rtol=1e-12)


def _stream_chunks(text):
    chunks = text.split("----- Begin chunk -----")[1:]
    out = {}
    for c in chunks:
        ev = int(re.search(r"^Event: //(\d+)", c, re.M).group(1))
        out[ev] = {"energy_ev": float(re.search(r"^photon_energy_eV = ([\d.]+)", c, re.M).group(1)),
                   "bandwidth": float(re.search(r"^beam_bandwidth = ([\d.e+-]+)", c, re.M).group(1)),
                   "peaks": [(float(fs), float(ss)) for fs, ss in
                             re.findall(r"^\s*([\d.]+)\s+([\d.]+)\s+[\d.]+\s+[-\d.]+\s+panel0$", c, re.M)]}
    return out


@pytest.mark.slow
def test_crystfel_indexamajig_reads_per_frame_energy_bandwidth_and_the_whole_mask(tmp_path):
    """Real CrystFEL: each frame's photon energy from the file, the bandwidth, and no peak on a dead pixel."""
    exe, env = crystfel_program("indexamajig")
    g = Geometry("test", 80, 60, 110e-6, 0.13, (30.5, 20.25), 9.7, "Si", 0.1)
    n = 2
    wl = g.wavelength_angstrom * np.array([1.0, 1.002])
    mask = np.zeros((60, 80), np.int32)
    rng = np.random.default_rng(0)
    counts = rng.poisson(10.0, (n, 60, 80)).astype(np.int32)
    # (ss, fs) of 3 x 3 bright blobs, more than CrystFEL's integration radius (7 px) apart from other bad pixels
    spots = {"trusted": (20, 15), "dead": (12, 60), "gap": (45, 30)}
    for name, (ss, fs) in spots.items():
        counts[:, ss - 1:ss + 2, fs - 1:fs + 2] += 2000
    mask[11:14, 59:62] = DEAD_BIT  # bright, but untrusted: only mask_bad with the dead bit hides it
    mask[44:47, :] = GAP_BIT
    with nxmx_writer(tmp_path / "shard.h5", g, n, np.int32, wl, mask=mask) as (_, d):
        d[:] = counts
    write_crystfel_geometry(tmp_path / "d.geom", g, adu_per_photon=2.0, bandwidth_rel_sigma=1.5e-3)
    (tmp_path / "files.lst").write_text(f"{tmp_path / 'shard.h5'}\n")
    run = subprocess.run([exe, "-i", "files.lst", "-g", "d.geom", "-o", "out.stream", "--indexing=none",
                          "--peaks=zaef", "--threshold=500", "--min-snr=5", "-j", "1"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    chunks = _stream_chunks((tmp_path / "out.stream").read_text())
    assert sorted(chunks) == [0, 1]
    for i, c in chunks.items():
        assert c["energy_ev"] == pytest.approx(energy_kev(wl[i]) * 1000, rel=1e-5)  # CrystFEL's h c differ
        assert c["bandwidth"] == pytest.approx(1.5e-3)
        ss, fs = spots["trusted"]
        assert len(c["peaks"]) == 1, c["peaks"]  # the dead and gap blobs are masked
        assert c["peaks"][0] == pytest.approx((fs + 0.5, ss + 0.5), abs=0.5)  # CrystFEL: pixel corners
