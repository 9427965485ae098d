"""DIALS stills processing: PHIL, setting/misorientation arithmetic, the rules on the tiny run, crashes vs no-index."""

import os
import shutil

import gemmi
import numpy as np
import pandas as pd
import pytest

from braggflow.dials import DialsSettings, _point_group_hkl_ops, dataset_scores, match_setting, stills_phil
from braggflow.shards import b_matrix
from braggflow.draws import random_rotation
from conftest import ROOT, TINY, run_snakemake
from test_dxtbx_import import CBFS, EXPORT, needs_dxtbx, run_program

SETTINGS = DialsSettings("real_space_grid_search", 2, 10, 0.01, 0.05, ())
CELL = (67.288, 67.288, 106.582, 90.0, 90.0, 90.0)


def test_phil_carries_the_structures_symmetry_and_the_gain():
    phil = stills_phil("P 43 21 2", CELL, 2.5, SETTINGS)
    assert "indexing.known_symmetry.space_group = P43212" in phil
    assert "indexing.known_symmetry.unit_cell = 67.2880,67.2880,106.5820,90.0000,90.0000,90.0000" in phil
    assert "values = 67.2880,67.2880,106.5820" in phil and "sigmas = 0.05,0.05" in phil
    assert "spotfinder.threshold.dispersion.gain = 2.5" in phil and "detector_gain = 2.5" in phil
    assert "indexing.method = real_space_grid_search" in phil and "composite_output = True" in phil
    assert "refine_candidates_with_known_symmetry" not in phil  # it rewrites the space group (DIALS notes)


def test_setting_and_misorientation_over_point_group_operations():
    rng = np.random.default_rng(5)
    b = b_matrix(CELL)
    a_true = random_rotation(rng) @ b
    ops = _point_group_hkl_ops("P 43 21 2")
    assert len(ops) == 8
    angle = np.radians(0.2)
    small = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    for m in ops:
        a_dials = small @ a_true @ m  # DIALS picked another equivalent setting, 0.2 deg off
        found, mis = match_setting(a_dials, a_true, ops)
        np.testing.assert_array_equal(found, m)
        assert mis == pytest.approx(0.2, abs=1e-6)
        h = np.array([3, -5, 7])
        np.testing.assert_allclose(a_dials @ h, small @ a_true @ (found @ h))  # h_true = M h_dials


def test_frames_dials_could_not_index_are_data():
    frames = pd.DataFrame({"hit": [1, 1, 0, 1], "n_visible": [40, 40, 0, 40], "indexed": [True, False, False, True],
                           "misorientation_deg": [0.1, np.nan, np.nan, 0.3], "cell_error_rel": [1e-4, np.nan, np.nan, 2e-4]})
    refl = pd.DataFrame({"x_cal_px": [1.0, 2.0], "x_true_px": [1.5, 2.0], "y_cal_px": [0.0, 0.0],
                         "y_true_px": [0.0, 0.0], "x_obs_px": [1.0, 2.0], "y_obs_px": [0.0, 0.0]})
    s = dataset_scores(frames, refl, "x", "7keV_250mm")
    assert s["indexing_rate"] == pytest.approx(2 / 3) and s["blank_frames_indexed"] == 0
    assert s["rmsd_cal_true_px"] == pytest.approx(np.sqrt(0.25 / 2)) and s["bar_applies"] and s["bar_met"] is False


needs_dials = pytest.mark.skipif(shutil.which("dials.stills_process") is None,
                                 reason="DIALS is not installed (Debian package dials; `make test` installs it)")


@pytest.mark.slow
@needs_dials
def test_tiny_run_indexes_hits_and_scores_them_against_the_truth(tiny_run):
    summary = pd.read_csv(tiny_run / "results/dials/1ic6/scores.tsv", sep="\t")
    frames = pd.read_csv(tiny_run / "results/dials/1ic6/frames.tsv", sep="\t")
    assert list(summary.dataset) == ["7keV_100mm", "8keV_100mm"]
    print(summary.to_string())
    for row in summary.itertuples():
        assert row.blank_frames_indexed == 0
        if row.bar_applies:
            assert row.indexing_rate >= 0.9 and row.cell_error_max_rel <= 0.005 and row.rmsd_cal_true_px <= 1.0
    idx = frames[frames.indexed]
    assert len(idx) >= 3 and (idx.n_matched > 10).all() and (idx.misorientation_deg < 1.0).all()
    from braggflow.formats.tables import read_table

    refl = read_table(tiny_run / "results/dials/1ic6/7keV_100mm/shard_0000/tables.h5", "reflections")
    assert {"h", "k", "l", "x_obs_px", "x_cal_px", "intensity", "sigma", "partiality", "d_angstrom"} <= set(refl)
    assert list((tiny_run / "results/dials/1ic6/7keV_100mm/shard_0000/dials").glob("*_integrated.refl"))


@pytest.mark.slow
@needs_dials
def test_dials_by_hand_as_the_readme_says_indexes_a_shard_of_the_tiny_run(tiny_run, tmp_path):
    """The README's commands for running DIALS by hand, on the tiny run's first 7 keV shard (a copy of its
    directory, so the run's own results stay as they are)."""
    import re
    import subprocess

    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "$(cat inputs.txt)" in b)
    shard = tiny_run / "results/dials/1ic6/7keV_100mm/shard_0000"
    work = tmp_path / "results/dials/1ic6/7keV_250mm/shard_0000"  # the README's path, below a checkout copy
    shutil.copytree(shard, work, ignore=shutil.ignore_patterns("dials"))
    (tmp_path / "workflow").symlink_to(ROOT / "workflow")
    res = subprocess.run(["bash", "-ec", block], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert list((work / "by_hand").glob("*_integrated.expt")), res.stdout[-3000:]


@pytest.mark.slow
@needs_dials
def test_a_dials_crash_fails_the_rule_and_shows_its_log(tmp_path):
    target = tmp_path / "results/overlays/1ic6/8keV_100mm/shard_0001.h5"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not an HDF5 file")  # DIALS cannot read it: a crash, not an unindexed frame
    res = run_snakemake(tmp_path, "results/dials/1ic6/8keV_100mm/shard_0001/export.npz",
                        "--allowed-rules", "dials_stills_process", configfile=TINY)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "Error in rule dials_stills_process" in out
    assert "Logfile logs/dials/1ic6/8keV_100mm/shard_0001.log:" in out  # DIALS' own log, shown
    assert "Unhandled path or option" in out or "Error" in (tmp_path / "logs/dials/1ic6/8keV_100mm/shard_0001.log").read_text()
    assert not (tmp_path / "results/dials/1ic6/8keV_100mm/shard_0001/export.npz").exists()


def test_empty_reflection_table_round_trip(tmp_path):
    from braggflow.formats.tables import read_table, write_tables

    empty = pd.DataFrame({"frame_index": np.zeros(0, int), "x_cal_px": np.zeros(0), "x_true_px": np.zeros(0),
                          "y_cal_px": np.zeros(0), "y_true_px": np.zeros(0), "x_obs_px": np.zeros(0),
                          "y_obs_px": np.zeros(0)})
    write_tables(tmp_path / "t.h5", {"reflections": empty})
    back = read_table(tmp_path / "t.h5", "reflections")
    assert back.dtypes.x_cal_px == float and len(back) == 0
    frames = pd.DataFrame({"hit": [0, 0], "n_visible": [0, 0], "indexed": [False, False],
                           "misorientation_deg": [np.nan] * 2, "cell_error_rel": [np.nan] * 2})
    s = dataset_scores(frames, back, "x", "6keV_350mm")
    assert s["blank_frames_indexed"] == 0 and np.isnan(s["rmsd_cal_true_px"]) and s["bar_met"] is None


@pytest.mark.slow
@needs_dxtbx
@pytest.mark.parametrize("args, named", [
    (["{dials}", "three", "{out}"], "argument n_frames: must be an integer >= 0, got 'three'"),
    (["{dials}", "-1", "{out}"], "argument n_frames: must be an integer >= 0, got '-1'"),
    (["{tmp}/absent", "2", "{out}"], "argument out_dir: {tmp}/absent: no such directory"),
    (["{dials}", "2", "{out}", "{tmp}/absent.txt"], "argument list_path: {tmp}/absent.txt: no such file"),
    (["{dials}", "2", "{tmp}/out"], "argument out_path: {tmp}/out is a directory"),
    (["{dials}", "2", "{out}", "{tmp}/empty.txt"], "dials_export.py: {tmp}/empty.txt lists no input files"),
    (["{dials}", "2", "{out}", "{tmp}/inputs.txt"],
     "dials_export.py: {tmp}/notes.txt (from {tmp}/inputs.txt): dxtbx recognises no image format in it"),
])
def test_bad_arguments_to_the_export_fail_naming_the_argument_or_file(tmp_path, args, named):
    (tmp_path / "dials").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / "inputs.txt").write_text(f"{CBFS[0]}\n{tmp_path / 'notes.txt'}\n")
    fill = {"dials": tmp_path / "dials", "out": tmp_path / "out/export.npz", "tmp": tmp_path}
    res = run_program(EXPORT, *(a.format(**fill) for a in args))
    assert res.returncode in (1, 2) and named.format(**fill) in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert list((tmp_path / "out").iterdir()) == []


def savez_then(*lines: str) -> str:
    """A patch of the program's np.savez: it writes part of a zip file, then runs ``lines``."""
    body = "".join(f"    {line}\n" for line in ("f.write(b'PK partial')", *lines))
    return f"def savez(f, **arrays):\n{body}program.np.savez = savez\n"


@pytest.mark.slow
@needs_dxtbx
def test_the_export_writes_through_a_temporary_file_it_removes_on_failure_and_sigterm(tmp_path):
    dials_dir, out = tmp_path / "dials", tmp_path / "out/export.npz"
    dials_dir.mkdir()  # stills_process found nothing to write: every frame unindexed, no geometry (P = 0)
    # np.savez failing half-way: neither the .npz nor its temporary file stays.
    fail = savez_then("print('writing:', *sorted(os.listdir(os.path.dirname(sys.argv[4]))))",
                      "raise OSError('disk full')")
    res = run_program(EXPORT, dials_dir, 3, out, patch=fail)
    assert res.returncode == 1 and "OSError: disk full" in res.stderr, res.stderr
    written = res.stdout.split("writing:", 1)[1].split()
    assert len(written) == 1 and written[0].startswith(".export.npz.") and written[0].endswith(".tmp")
    assert list(out.parent.iterdir()) == []
    # SIGTERM (Snakemake or SLURM cancelling the job) while writing: exit status 128 + 15, nothing left.
    term = savez_then("os.kill(os.getpid(), signal.SIGTERM)", "time.sleep(60)")
    res = run_program(EXPORT, dials_dir, 3, out, patch=term)
    assert res.returncode == 143 and "terminated by signal 15" in res.stderr, res.stderr
    assert list(out.parent.iterdir()) == []
    # The same run unpatched: the .npz itself (named as given, no ".npz" added to the temporary name).
    res = run_program(EXPORT, dials_dir, 3, out)
    assert res.returncode == 0, res.stderr
    assert [p.name for p in out.parent.iterdir()] == ["export.npz"]
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
    ex = np.load(out)
    assert ex["n_strong"].tolist() == [0, 0, 0] and ex["indexed"].tolist() == [False] * 3
    assert ex["panel_origin_mm"].shape == (3, 0, 3) and ex["refl_panel"].dtype == np.int64
    assert len(ex["refl_h"]) == len(ex["strong_x"]) == 0 and np.isnan(ex["a_matrix"]).all()
