"""benchmarks/gpu_check.sh, the script a GPU machine runs, runs here with --dry-run (every step at its smallest
size, the CuPy stand-in for the device path), so it cannot rot between the rare runs on a GPU."""

import json
import subprocess
import sys

from conftest import ROOT

SCRIPT = ROOT / "benchmarks/gpu_check.sh"


def test_the_gpu_check_runs_every_step_on_the_cpu_and_writes_one_json(tmp_path):
    res = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path), "--python", sys.executable],
                         capture_output=True, text=True, timeout=900)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert report["dry_run"] and report["ok"]
    assert set(report["steps"]) == {"parity", "simulate", "overlay", "inference", "training"}
    parity = report["steps"]["parity"]["figures"]
    assert parity["pass"] and set(parity["cases"]) == {"case1_mono", "case2_poly_mosaic"}
    assert all(c["max_rel_diff"] == 0.0 for c in parity["cases"].values())  # the stand-in computes with NumPy
    case_a = report["steps"]["simulate"]["figures"]["cases"]["a"]
    assert case_a["image_cpu_s"] > 0 and case_a["truth_cpu_s"] > 0
    assert report["steps"]["overlay"]["figures"]["cpu_s_per_frame"] > 0
    assert any("frames/s" in line for line in report["steps"]["inference"]["output"])
    assert any("tiles/s" in line for line in report["steps"]["training"]["output"])


def test_an_unknown_argument_is_refused_by_name(tmp_path):
    res = subprocess.run(["bash", str(SCRIPT), "--gpus", "2"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2 and "unknown argument '--gpus'" in res.stderr
