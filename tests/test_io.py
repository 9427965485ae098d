"""Atomic writes: nothing partial, nothing temporary left behind (even by a killed writer), umask permissions."""

import os
import signal
import subprocess
import sys
import time

import pytest

from braggflow.io import atomic_path, remove_stale_temporaries, write_text_atomic


def test_outputs_get_the_permissions_of_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        os.umask(0o002)
        write_text_atomic(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o664


def test_a_failed_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.h5") as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


WRITER = """
import sys, time
from braggflow.io import atomic_path
from braggflow.logs import logged
with logged(sys.argv[2]):
    with atomic_path(sys.argv[1]) as tmp:
        tmp.write_text("partial")
        print("writing", flush=True)
        time.sleep(60)
"""


def _start_writer(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "out.h5"), str(tmp_path / "log.txt")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def _temporaries(tmp_path):
    return [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_terminated_writer_removes_its_temporary_file(tmp_path):
    proc = _start_writer(tmp_path)
    assert len(_temporaries(tmp_path)) == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert _temporaries(tmp_path) == [] and not (tmp_path / "out.h5").exists()
    assert "terminated" in (tmp_path / "log.txt").read_text()


def test_the_next_writer_removes_what_a_killed_writer_left(tmp_path):
    proc = _start_writer(tmp_path)
    proc.kill()  # SIGKILL: no cleanup can run
    proc.wait(timeout=30)
    left = _temporaries(tmp_path)
    assert len(left) == 1
    write_text_atomic(tmp_path / "out.h5", "done")
    assert _temporaries(tmp_path) == [] and (tmp_path / "out.h5").read_text() == "done"


def test_a_live_writers_temporary_file_is_kept(tmp_path):
    proc = _start_writer(tmp_path)
    try:
        assert remove_stale_temporaries(tmp_path / "out.h5") == []
        assert len(_temporaries(tmp_path)) == 1
    finally:
        proc.kill()
        proc.wait(timeout=30)
    time.sleep(0.1)
    assert len(remove_stale_temporaries(tmp_path / "out.h5")) == 1
