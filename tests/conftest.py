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
    cmd += list(args)
    if configfile is not None:  # last: --configfile takes several values and would swallow a target
        cmd += ["--configfile", str(configfile)]
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


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


def crystfel_program(name: str) -> tuple[str, dict[str, str]]:
    """A CrystFEL program and its environment, or a skip: CrystFEL is not in Debian (build it from source,
    https://gitlab.desy.de/thomas.white/crystfel, with libccp4 for MTZ files)."""
    exe = shutil.which(name)
    if exe is None:
        pytest.skip(f"CrystFEL's {name} is not on PATH (CrystFEL is not packaged in Debian; build it from source)")
    env = dict(os.environ)
    # libccp4 reads its space-group table from $CLIBD/syminfo.lib and knows no default location.
    if "CLIBD" not in env and Path("/usr/share/ccp4/syminfo.lib").is_file():
        env["CLIBD"] = "/usr/share/ccp4"
    return exe, env


SMALL_DETECTOR = {"pyfai_name": "Eiger1M", "beam_center_px": [500.3, 540.7], "sensor_material": "Si",
                  "sensor_thickness_mm": 0.45}


def small_geometry(energy_kev: float = 7.0, camera_length_m: float = 0.1, index: int = 4):
    """An Eiger 1M (with module gaps) at 100 mm: every stage in seconds."""
    from braggflow.geometry import dataset_geometry
    from braggflow.matrix import Dataset, dataset_name

    return dataset_geometry({"detector": SMALL_DETECTOR},
                            Dataset(dataset_name(energy_kev, camera_length_m), energy_kev, camera_length_m, index))


@pytest.fixture(scope="session")
def mtz_1ic6_7kev(tmp_path_factory):
    """1IC6 structure factors at 7 keV to the small geometry's corner resolution."""
    from braggflow.formats.mtz import write_mtz
    from braggflow.sf import compute_sf_table
    from braggflow.structures import read_structure

    model = read_structure(RESOURCES / "structures/1ic6.pdb")
    path = tmp_path_factory.mktemp("sf") / "7keV.mtz"
    write_mtz(path, model, compute_sf_table(model, 7.0, 0.95 * small_geometry().d_min_angstrom()), 7.0)
    return path


TINY = ROOT / "tests/configs/tiny.yaml"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The whole workflow on tests/configs/tiny.yaml, once per test session (workflow and report tests share it)."""
    work = tmp_path_factory.mktemp("tiny")
    res = run_snakemake(work, configfile=TINY)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return work
