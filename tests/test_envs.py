"""pyproject.toml, envs/braggflow.yaml and the container definition name the same dependencies.

Neither conda nor apptainer runs here, so agreement is checked on the files themselves.
"""

import re
import tomllib

import yaml

from conftest import ROOT

CONDA_NAMES = {"pyfai": "pyfai", "torch": "pytorch"}  # PyPI name (lower case) -> conda-forge name, where they differ


def _split(spec: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*(.*)$", spec)
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def test_conda_env_matches_pyproject():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(_split(s) for s in meta["dependencies"] + meta["optional-dependencies"]["test"])
    wanted["python"] = meta["requires-python"]
    env = yaml.safe_load((ROOT / "envs/braggflow.yaml").read_text())
    conda = dict(_split(s) for s in env["dependencies"] if isinstance(s, str) and s != "pip")
    pip = [s for d in env["dependencies"] if isinstance(d, dict) for s in d.get("pip", [])]  # from PyPI
    conda.update(_split(s) for s in pip)
    assert conda == {CONDA_NAMES.get(k, k): v for k, v in wanted.items()}
    assert "conda-forge" in env["channels"]


def test_container_builds_that_env_and_installs_the_package():
    recipe = (ROOT / "containers/braggflow.def").read_text()
    assert re.search(r"^\s*envs/braggflow\.yaml\s+(\S+)", recipe, re.M)
    target = re.search(r"^\s*envs/braggflow\.yaml\s+(\S+)", recipe, re.M).group(1)
    assert re.search(rf"micromamba install .*-f {re.escape(target)}", recipe)
    assert re.search(r"pip install --no-deps .*/opt/braggflow\b", recipe)
    for path in ("pyproject.toml", "src"):
        assert re.search(rf"^\s*{path}\s+/opt/braggflow/{path}", recipe, re.M)
    assert "import braggflow" in recipe


def test_gpu_env_is_the_cpu_env_plus_cupy_and_its_container_builds_it():
    cpu = yaml.safe_load((ROOT / "envs/braggflow.yaml").read_text())["dependencies"]
    gpu = yaml.safe_load((ROOT / "envs/braggflow-gpu.yaml").read_text())["dependencies"]
    extra = [d for d in gpu if d not in cpu]
    assert [d for d in cpu if d not in gpu] == []
    assert sorted(_split(d)[0] for d in extra) == ["cuda-version", "cupy"]
    recipe = (ROOT / "containers/braggflow-gpu.def").read_text()
    assert re.search(r"^From: nvidia/cuda:", recipe, re.M)
    assert re.search(r"micromamba install .*-f /opt/braggflow/envs/braggflow-gpu\.yaml", recipe)
    assert "import braggflow, cupy" in recipe
