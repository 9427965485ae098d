"""Geometry written for DIALS (NXmx) and CrystFEL (.geom) describes the same experiment."""

import json
import re
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from braggflow.crystfel import crystfel_geometry_text
from braggflow.geometry import dataset_geometry
from braggflow.matrix import Dataset
from braggflow.nxmx import DATA_PATH, MASK_PATH, nxmx_writer, read_geometry

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


@pytest.mark.parametrize("case", CASES)
def test_crystfel_geometry_places_pixels_where_dials_does(case):
    g = geometry(CASES[case])
    geom = _parse_geom(crystfel_geometry_text(g, adu_per_photon=2.0))
    assert float(geom["photon_energy"]) == pytest.approx(7000.0)
    assert float(geom["clen"]) == pytest.approx(0.25) and float(geom["res"]) == pytest.approx(1 / 75e-6)
    assert float(geom["adu_per_photon"]) == 2.0 and geom["data"] == DATA_PATH and geom["mask"] == MASK_PATH
    assert (int(geom["panel0/max_fs"]), int(geom["panel0/max_ss"])) == (2069, 2166)
    corner = np.array([float(geom["panel0/corner_x"]), float(geom["panel0/corner_y"])])
    fs, ss = _vec(geom["panel0/fs"]), _vec(geom["panel0/ss"])
    bx, by = g.beam_center_px
    for f, s in [(0, 0), (bx, by), (1900.0, 70.0)]:
        crystfel_xy = corner + f * fs + s * ss  # pixels, CrystFEL lab frame (x = -DIALS x, y = DIALS y)
        dials_xy = np.array([(f - bx), -(s - by)])  # DIALS: fast along +x, slow along -y, beam at (bx, by)
        assert crystfel_xy == pytest.approx(np.array([-dials_xy[0], dials_xy[1]]))
