"""Image files through dxtbx (workflow/scripts/dxtbx_import.py) and DIALS' stills results with their geometry
(workflow/scripts/dials_export.py): real LCLS CSPAD stills and braggflow's own NXmx files."""

import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from conftest import RESOURCES, ROOT, small_geometry

IMPORT = ROOT / "workflow/scripts/dxtbx_import.py"
EXPORT = ROOT / "workflow/scripts/dials_export.py"
SHIM = ROOT / "workflow/dials"
CSPAD = RESOURCES / "experimental/thermolysin_lcls_cspad"
CBFS = sorted(CSPAD.glob("*.cbf"))
GAIN = 28.0  # CSPAD ADU per photon (the README's spot-finding gain)

LIBTBX = shutil.which("libtbx.python")
needs_dxtbx = pytest.mark.skipif(LIBTBX is None, reason="DIALS' libtbx.python is not installed (Debian package "
                                                        "dials; `make test` installs it)")
needs_dials = pytest.mark.skipif(shutil.which("dials.stills_process") is None,
                                 reason="DIALS is not installed (Debian package dials; `make test` installs it)")

# The README's settings that index all four CSPAD shots, and the output settings of braggflow.dials.stills_phil.
CSPAD_PHIL = """\
spotfinder.filter.min_spot_size = 2
spotfinder.threshold.dispersion.gain = 28
spotfinder.threshold.dispersion.global_threshold = 40
spotfinder.threshold.dispersion.kernel_size = 2,2
spotfinder.threshold.dispersion.sigma_strong = 1
spotfinder.threshold.dispersion.sigma_background = 6
indexing.known_symmetry.space_group = P6122
indexing.known_symmetry.unit_cell = 93,93,130.4,90,90,120
indexing.method = fft1d
indexing.stills.ewald_proximal_volume_max = 0.01
integration.summation.detector_gain = 28
output.composite_output = True
output.experiments_filename = %s_imported.expt
output.strong_filename = %s_strong.refl
output.integration_pickle = None
"""


def dials_env():
    """DIALS' environment as workflow/scripts/dials_stills_process.sh sets it: the empty xfel_mono_sim_ext
    stand-in goes on PYTHONPATH only where DIALS lacks the compiled module."""
    env = dict(os.environ)
    if subprocess.run([LIBTBX, "-c", "import xfel_mono_sim_ext"], capture_output=True).returncode != 0:
        env["PYTHONPATH"] = str(SHIM) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def dxtbx_import(out, adu_per_photon, *inputs, check=True):
    res = subprocess.run([LIBTBX, str(IMPORT), str(out), str(adu_per_photon), *map(str, inputs)],
                         capture_output=True, text=True, timeout=300)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def run_program(script, *args, patch=""):
    """The program's ``run([...])`` in DIALS' Python, the program loaded as a module named ``program`` (not
    __main__: loading it must do nothing), after the code ``patch`` (which may replace one of its steps)."""
    code = ("import importlib.util, os, signal, sys, time\n"
            "spec = importlib.util.spec_from_file_location('program', sys.argv[1])\n"
            "program = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(program)\n"
            f"{patch}\n"
            "program.run(sys.argv[2:])\n")
    return subprocess.run([LIBTBX, "-c", code, str(script), *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def ray_hits_panel(direction, origin, fast, slow, pixel_size):
    """Where rays from the sample along ``direction`` hit the panel plane origin + x px_f fast + y px_s slow:
    DIALS pixel coordinates (x fast, y slow). Arguments are single vectors or stacks of them (n, 3) / (n, 2)."""
    direction, origin, fast, slow, pixel_size = (np.asarray(v, float) for v in
                                                 (direction, origin, fast, slow, pixel_size))
    system = np.stack([fast * pixel_size[..., :1], slow * pixel_size[..., 1:], -direction], axis=-1)
    xyt = np.linalg.solve(system, -origin[..., None])[..., 0]  # origin + M (x, y) = t direction
    return xyt[..., :2]


def predict_stills(a_matrix, s0, hkl, origin, fast, slow, pixel_size, mu=None, t0=None, model="dials"):
    """Stills prediction in NumPy: q = A h (A = UB, lab frame, 1/A) brought onto the Ewald sphere, the ray along
    s1 intersected with each reflection's panel (panel arrays per reflection), in DIALS pixel coordinates.

    model "dials": DIALS' StillsReflectionPredictor (delta-psi model): q rotated about q x s0 onto the sphere,
    |q| kept, s1 = s0 + q'. model "rescale": s1 = s0 + q scaled to |s0| (an approximation, ~0.1 px off here).
    With ``mu`` (1/mm) and ``t0`` (mm) per reflection, dxtbx's parallax correction (ParallaxCorrectedPxMmStrategy)
    follows: the point moves by (u.fast, u.slow) o, u the unit ray, o = 1/mu - (t0/cos + 1/mu) exp(-mu t0/cos),
    cos = u.normal (normal towards the panel)."""
    q = np.asarray(hkl, float) @ np.asarray(a_matrix, float).reshape(3, 3).T
    s0 = np.asarray(s0, float)
    if model == "dials":
        k = np.linalg.norm(s0)
        unit_s0 = s0 / k
        perp = q - (q @ unit_s0)[:, None] * unit_s0
        qq = np.einsum("ij,ij->i", q, q)
        along = qq / (2 * k)  # |s0 + q'| = |s0|: q'.unit_s0 = -|q|^2 / (2 |s0|)
        s1 = s0 - along[:, None] * unit_s0 + np.sqrt(qq - along**2)[:, None] * perp / np.linalg.norm(
            perp, axis=1)[:, None]
    else:
        s1 = s0 + q
        s1 *= (np.linalg.norm(s0) / np.linalg.norm(s1, axis=1))[:, None]
    xy = ray_hits_panel(s1, origin, fast, slow, pixel_size)
    if mu is None:
        return xy
    mu, t0 = np.asarray(mu, float), np.asarray(t0, float)
    u = s1 / np.linalg.norm(s1, axis=1)[:, None]
    normal = np.cross(fast, slow)
    normal *= np.sign(np.einsum("ij,ij->i", origin, normal))[:, None]
    cos = np.einsum("ij,ij->i", u, normal)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(mu > 0, 1 / mu - (t0 / cos + 1 / mu) * np.exp(-mu * t0 / cos), 0.0)
    shift = np.column_stack([np.einsum("ij,ij->i", u, fast), np.einsum("ij,ij->i", u, slow)]) * depth[:, None]
    return xy + shift / pixel_size


@pytest.fixture(scope="module")
def cspad_h5(tmp_path_factory):
    if LIBTBX is None:
        pytest.skip("DIALS' libtbx.python is not installed (Debian package dials; `make test` installs it)")
    out = tmp_path_factory.mktemp("cspad") / "cspad.h5"
    dxtbx_import(out, GAIN, *CBFS)
    return out


@pytest.mark.slow
@needs_dxtbx
def test_cspad_cbfs_import_as_photons_with_untrusted_pixels_marked(cspad_h5, tmp_path):
    assert len(CBFS) == 4
    with h5py.File(cspad_h5) as f:
        data = f["data"][()]
        assert data.shape == (4, 64, 185, 194) and data.dtype == np.float32
        assert f["data"].chunks == (1, 64, 185, 194) and f["data"].compression == "gzip"
        assert f.attrs["layout"] == "frames, panels, slow, fast" and f.attrs["n_panels"] == 64
        assert f.attrs["adu_per_photon"] == GAIN and f.attrs["format_class"] == "FormatCBFCspad"
        names = f["panels/name"].asstr()[()]
        assert len(set(names)) == 64 and all(names)
        assert f["panels/origin_mm"].shape == (64, 3) and f["panels/image_size"][0].tolist() == [194, 185]
        np.testing.assert_allclose(np.linalg.norm(f["panels/fast_axis"][()], axis=1), 1.0)
        np.testing.assert_allclose(np.einsum("ij,ij->i", f["panels/fast_axis"][()], f["panels/slow_axis"][()]), 0,
                                   atol=1e-9)
        np.testing.assert_allclose(f["panels/pixel_size_mm"][()], 0.10992, rtol=1e-3)
        assert f["frames/wavelength_angstrom"][0] == pytest.approx(1.27261, abs=1e-4)
        np.testing.assert_allclose(f["frames/wavelength_angstrom"][()], 1.2726, atol=0.002)
        np.testing.assert_allclose(f["frames/beam_direction"][()], [[0, 0, -1]] * 4, atol=1e-9)
        assert list(f["frames/source_file"].asstr()[()]) == [str(p) for p in CBFS]
        assert f["frames/source_index"][()].tolist() == [0, 0, 0, 0]
    assert ((data >= 0) | (data == -1.0)).all()
    assert 0 < (data == -1.0).sum() < 1000 and data.max() > 10
    # Photons are dxtbx's raw counts / 28, read independently; untrusted pixels are where dxtbx masks.
    frame, panel = 1, 19
    code = ("import sys, numpy as np\n"
            "from dxtbx.model.experiment_list import ExperimentListFactory\n"
            "iset = ExperimentListFactory.from_filenames([sys.argv[1]]).imagesets()[0]\n"
            "p = int(sys.argv[2])\n"
            "np.save(sys.argv[3], iset.get_raw_data(0)[p].as_numpy_array().astype(float))\n"
            "np.save(sys.argv[4], iset.get_mask(0)[p].as_numpy_array())\n")
    subprocess.run([LIBTBX, "-c", code, str(CBFS[frame]), str(panel), str(tmp_path / "raw.npy"),
                    str(tmp_path / "mask.npy")], check=True, capture_output=True, timeout=300)
    raw, mask = np.load(tmp_path / "raw.npy"), np.load(tmp_path / "mask.npy")
    got = data[frame, panel]
    np.testing.assert_array_equal(got == -1.0, ~mask)
    np.testing.assert_allclose(got[mask], np.clip(raw[mask] / GAIN, 0, None), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@needs_dxtbx
def test_an_untrusted_border_masks_every_panels_edge_pixels_only(cspad_h5, tmp_path):
    out = tmp_path / "border.h5"
    res = subprocess.run([LIBTBX, str(IMPORT), "--untrusted-border-px=1", str(out), str(GAIN), str(CBFS[0])],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    with h5py.File(out) as f, h5py.File(cspad_h5) as g:
        got, plain = f["data"][0], g["data"][0]
        assert f.attrs["untrusted_border_px"] == 1
    for edge in (got[:, 0], got[:, -1], got[:, :, 0], got[:, :, -1]):
        assert (edge == -1.0).all()
    np.testing.assert_array_equal(got[:, 1:-1, 1:-1], plain[:, 1:-1, 1:-1])
    bad = subprocess.run([LIBTBX, str(IMPORT), "--untrusted-border-px=-2", str(tmp_path / "x.h5"), str(GAIN),
                          str(CBFS[0])], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--untrusted-border-px" in bad.stderr and not (tmp_path / "x.h5").exists()


@pytest.mark.slow
@needs_dxtbx
def test_braggflow_nxmx_imports_with_its_beam_centre_and_distance(tmp_path):
    from braggflow.formats.nxmx import nxmx_writer

    g = small_geometry()
    n, adu = 3, 2.5
    mask = g.gap_mask().astype(np.int32)
    frames = np.random.default_rng(0).integers(-1, 50, size=(n, g.n_slow, g.n_fast)).astype(np.int32)
    frames[:, 3, 7], frames[:, 4, 9] = -5, 2 * 10**6  # below the underload, above the saturation: untrusted
    with nxmx_writer(tmp_path / "frames.h5", g, n, np.int32, [g.wavelength_angstrom] * n, mask=mask,
                     saturation_value=10**6) as (_, d):
        for i in range(n):
            d[i] = frames[i]
    dxtbx_import(tmp_path / "out.h5", adu, tmp_path / "frames.h5")
    with h5py.File(tmp_path / "out.h5") as f:
        data = f["data"][()]
        assert data.shape == (n, 1, g.n_slow, g.n_fast) and f.attrs["format_class"] == "FormatNXmx"
        assert f["frames/source_index"][()].tolist() == [0, 1, 2]
        assert list(f["frames/source_file"].asstr()[()]) == [str(tmp_path / "frames.h5")] * n
        np.testing.assert_allclose(f["frames/wavelength_angstrom"][()], g.wavelength_angstrom, rtol=1e-9)
        direction = f["frames/beam_direction"][0]
        origin, fast, slow = (f[f"panels/{k}"][0] for k in ("origin_mm", "fast_axis", "slow_axis"))
        pixel_size = f["panels/pixel_size_mm"][0]
        assert f["panels/image_size"][0].tolist() == [g.n_fast, g.n_slow]
    np.testing.assert_allclose(pixel_size, g.pixel_size_m * 1e3)
    normal = np.cross(fast, slow)
    assert abs(origin @ normal) == pytest.approx(g.camera_length_m * 1e3, abs=1e-6)
    np.testing.assert_allclose(ray_hits_panel(direction, origin, fast, slow, pixel_size), g.beam_center_px,
                               atol=0.01)
    gap = mask.astype(bool)
    assert gap.any() and (data[:, 0][:, gap] == -1.0).all()
    assert (data[:, 0, 3, 7] == -1.0).all() and (data[:, 0, 4, 9] == -1.0).all()
    gap[3, 7] = gap[4, 9] = True
    np.testing.assert_allclose(data[:, 0][:, ~gap], np.clip(frames[:, ~gap] / adu, 0, None), rtol=1e-6)


@pytest.mark.slow
@needs_dxtbx
@pytest.mark.parametrize("case", ["missing", "not an image"])
def test_an_unreadable_input_fails_naming_the_file_and_leaves_no_output(tmp_path, case):
    bad = tmp_path / "bad.cbf"
    if case == "not an image":
        bad.write_text("this is not a CBF\n")
    out = tmp_path / "out.h5"
    res = dxtbx_import(out, GAIN, CBFS[0], bad, check=False)
    assert res.returncode != 0 and str(bad) in res.stderr
    assert [p.name for p in tmp_path.iterdir() if p != bad] == []  # neither out.h5 nor .out.h5.*.tmp


@pytest.mark.slow
@needs_dials
def test_stills_process_on_cspad_exports_geometry_that_repredicts_dials_positions(tmp_path):
    (tmp_path / "params.phil").write_text(CSPAD_PHIL)
    res = subprocess.run(["dials.stills_process", *map(str, CBFS), "params.phil", "mp.nproc=2",
                          "output.output_dir=dials"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env=dials_env())
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    (tmp_path / "inputs.txt").write_text("".join(f"{p}\n" for p in CBFS))
    res = subprocess.run([LIBTBX, str(EXPORT), "dials", "4", "export.npz", "inputs.txt"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    ex = np.load(tmp_path / "export.npz")
    assert ex["indexed"].tolist() == [True] * 4 and (ex["n_integrated"] > 50).all()
    assert ((ex["cell"][:, 0] > 92) & (ex["cell"][:, 0] < 95)).all()
    frames = ex["refl_frame"]
    assert set(frames.tolist()) == {0, 1, 2, 3}
    panel = ex["refl_panel"]
    assert panel.dtype.kind == "i" and panel.min() >= 0 and panel.max() <= 63 and len(set(panel.tolist())) > 10
    assert np.isfinite(ex["refl_i_over_sigma"]).mean() > 0.9
    # Strong spots of every frame, as many as n_strong counts.
    assert (ex["n_strong"] > 50).all()
    np.testing.assert_array_equal(np.bincount(ex["strong_frame"], minlength=4), ex["n_strong"])
    assert len(ex["strong_x"]) == len(ex["strong_y"]) == len(ex["strong_panel"]) == ex["n_strong"].sum()
    assert ex["strong_panel"].max() <= 63 and (ex["strong_x"] >= 0).all() and (ex["strong_x"] <= 194).all()
    for key, last in (("panel_origin_mm", 3), ("panel_fast_axis", 3), ("panel_slow_axis", 3),
                      ("panel_pixel_size_mm", 2), ("panel_image_size", 2)):
        assert ex[key].shape == (4, 64, last) and np.isfinite(ex[key]).all()
    assert ex["s0"].shape == (4, 3)
    np.testing.assert_allclose(np.linalg.norm(ex["s0"], axis=1), 1 / 1.2726, rtol=2e-3)
    # NumPy stills prediction from the exported A, s0 and panels reproduces DIALS' xyzcal. DIALS' pixel
    # coordinates include the parallax of the CSPAD's 0.5 mm silicon (~0.5 px), which the export carries too.
    np.testing.assert_allclose(ex["panel_parallax_t0_mm"], 0.5)
    assert ((ex["panel_parallax_mu_per_mm"] > 8) & (ex["panel_parallax_mu_per_mm"] < 9)).all()
    for f in range(4):
        sel = frames == f
        hkl = np.column_stack([ex["refl_h"][sel], ex["refl_k"][sel], ex["refl_l"][sel]])
        p = panel[sel]
        args = (ex["a_matrix"][f], ex["s0"][f], hkl, ex["panel_origin_mm"][f, p], ex["panel_fast_axis"][f, p],
                ex["panel_slow_axis"][f, p], ex["panel_pixel_size_mm"][f, p])
        parallax = {"mu": ex["panel_parallax_mu_per_mm"][f, p], "t0": ex["panel_parallax_t0_mm"][f, p]}
        cal = np.column_stack([ex["refl_x_cal"][sel], ex["refl_y_cal"][sel]])
        exact = np.hypot(*(predict_stills(*args, **parallax) - cal).T)
        assert np.max(exact) < 1e-6, (f, np.max(exact))  # DIALS' own model: to rounding
        approx = np.hypot(*(predict_stills(*args, **parallax, model="rescale") - cal).T)
        assert np.median(approx) < 0.5, (f, np.median(approx))


@pytest.mark.slow
@needs_dxtbx
@pytest.mark.parametrize("args, named", [
    (["--untrusted-border-px=wide", "{out}", GAIN, "{cbf}"],
     "argument --untrusted-border-px: must be an integer >= 0, got 'wide'"),
    (["{out}", "lots", "{cbf}"], "argument adu_per_photon: must be a number, got 'lots'"),
    (["{out}", "0", "{cbf}"], "argument adu_per_photon: must be > 0, got '0'"),
    (["{out}", GAIN], "the following arguments are required: input_file"),
    (["{tmp}", GAIN, "{cbf}"], "argument out_path: {tmp} is a directory"),
    (["{out}", GAIN, "{cbf}", "{tmp}/absent.cbf"], "dxtbx_import.py: {tmp}/absent.cbf: no such file"),
])
def test_bad_arguments_to_run_fail_naming_the_argument_or_file(tmp_path, args, named):
    fill = {"out": tmp_path / "out.h5", "cbf": CBFS[0], "tmp": tmp_path}
    res = run_program(IMPORT, *(str(a).format(**fill) for a in args))
    assert res.returncode in (1, 2) and named.format(**fill) in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@needs_dxtbx
def test_run_writes_through_a_temporary_file_it_removes_on_failure_and_sigterm(cspad_h5, tmp_path):
    out = tmp_path / "out.h5"
    # A step failing half-way (the second file's frame): the message names the file, no output, no temporary.
    fail = ("real = program.photons\n"
            "def photons(imageset, i, *args):\n"
            "    if 'frames_done' in globals():\n"
            "        raise OSError('device lost')\n"
            "    globals()['frames_done'] = 1\n"
            "    return real(imageset, i, *args)\n"
            "program.photons = photons\n")
    res = run_program(IMPORT, out, GAIN, CBFS[0], CBFS[1], patch=fail)
    assert res.returncode == 1, res.stderr
    assert f"dxtbx_import.py: {CBFS[1]}: frame 0: OSError: device lost" in res.stderr
    assert list(tmp_path.iterdir()) == []
    # SIGTERM (Snakemake or SLURM cancelling the job) while writing: exit status 128 + 15, the temporary removed.
    term = ("def photons(*args):\n"
            "    print('writing:', *sorted(os.listdir(os.path.dirname(sys.argv[2]))))\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(60)\n"
            "program.photons = photons\n")
    res = run_program(IMPORT, out, GAIN, CBFS[0], patch=term)
    assert res.returncode == 143 and "terminated by signal 15" in res.stderr, res.stdout + res.stderr
    written = res.stdout.split("writing:", 1)[1].split()
    assert len(written) == 1 and written[0].startswith(".out.h5.") and written[0].endswith(".tmp")
    assert list(tmp_path.iterdir()) == []
    # And a run that succeeds: the same photons as from the command line, with the umask's permissions.
    res = run_program(IMPORT, "--untrusted-border-px=0", out, GAIN, CBFS[0])
    assert res.returncode == 0, res.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]
    with h5py.File(out) as f, h5py.File(cspad_h5) as g:
        np.testing.assert_array_equal(f["data"][0], g["data"][0])
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.slow
@needs_dxtbx
@pytest.mark.parametrize("script", [IMPORT, EXPORT], ids=["dxtbx_import", "dials_export"])
def test_loading_a_program_as_a_module_runs_nothing(script, tmp_path):
    stop = "print('loaded:', callable(program.run), sorted(os.listdir('.'))); sys.exit(0)"
    res = subprocess.run([LIBTBX, "-c", "import importlib.util, os, sys\n"
                          "spec = importlib.util.spec_from_file_location('program', sys.argv[1])\n"
                          "program = importlib.util.module_from_spec(spec)\n"
                          f"spec.loader.exec_module(program)\n{stop}\n", str(script)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout == "loaded: True []\n" and res.stderr == "", res.stdout + res.stderr
