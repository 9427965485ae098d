import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "resources"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def run_snakemake(workdir: Path, *args: str, configfile: Path | None = None, timeout: int = 900):
    """Run the project's Snakefile in ``workdir`` (which sees the project's resources/ through a link)."""
    workdir.mkdir(parents=True, exist_ok=True)
    link = workdir / "resources"
    if not link.exists():
        link.symlink_to(RESOURCES)
    cmd = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2"]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def system_python_with(module: str) -> str | None:
    """/usr/bin/python3 where it can import ``module`` (Debian's cctbx and DIALS live there)."""
    exe = shutil.which("python3", path="/usr/bin")
    if exe is None:
        return None
    ok = subprocess.run([exe, "-c", f"import {module}"], capture_output=True).returncode == 0
    return exe if ok else None
