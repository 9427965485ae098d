import os
import subprocess
import sys

import pytest

from braggflow.gpu import claim_gpu

CLAIM = "import sys, time; from braggflow.gpu import claim_gpu; print(claim_gpu(3, sys.argv[1]), flush=True); time.sleep(3)"


def test_concurrent_jobs_get_different_devices_and_free_them_on_exit(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(3)]
    got = sorted(int(p.stdout.readline()) for p in procs)
    assert got == [0, 1, 2]
    for p in procs:
        p.wait(timeout=30)
    again = subprocess.run([sys.executable, "-c", CLAIM.replace("time.sleep(3)", "pass"), str(tmp_path)],
                           capture_output=True, text=True, env=env, check=True)
    assert again.stdout.strip() == "0"


def test_scheduler_choice_and_single_gpu_nodes_are_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert claim_gpu(4, tmp_path) is None and os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert claim_gpu(1, tmp_path) is None and "CUDA_VISIBLE_DEVICES" not in os.environ


def test_more_jobs_than_devices_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert claim_gpu(1 + 1, tmp_path) == 0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert claim_gpu(2, tmp_path) == 1
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(RuntimeError, match="all 2 GPUs of this node are claimed"):
        claim_gpu(2, tmp_path)
