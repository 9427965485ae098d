"""The library's layering: file layouts live in ``formats/`` alone, figures in ``figures/`` alone, and the modules
DIALS' own Python imports need nothing beyond NumPy, h5py and the standard library."""

import ast
import subprocess
import sys

from conftest import ROOT

SRC = ROOT / "src/braggflow"
SCRIPTS = ROOT / "workflow/scripts"


def imported_modules(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def python_files(*roots):
    return [p for r in roots for p in sorted(r.rglob("*.py"))]


def test_only_the_formats_layer_opens_files_of_its_kinds():
    offenders = []
    for path in python_files(SRC, SCRIPTS):
        rel = path.relative_to(ROOT)
        if rel.parts[:3] == ("src", "braggflow", "formats"):
            continue
        text = path.read_text()
        if "h5py" in imported_modules(path) or "np.savez" in text or "np.load(" in text:
            offenders.append(str(rel))
    offenders += [str(p.relative_to(ROOT)) for p in sorted(SCRIPTS.glob("*.sh")) if "h5py" in p.read_text()]
    assert offenders == [], f"HDF5 / npz files read or written outside src/braggflow/formats: {offenders}"


def test_only_the_figures_package_draws():
    offenders = [str(p.relative_to(ROOT)) for p in python_files(SRC, SCRIPTS)
                 if "matplotlib" in imported_modules(p) and p.relative_to(SRC).parts[0] != "figures"]
    assert offenders == [], f"matplotlib used outside src/braggflow/figures: {offenders}"


def test_the_modules_dials_python_imports_need_only_numpy_h5py_and_the_standard_library():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "import braggflow.formats.frames, braggflow.formats.dials_export, braggflow.cli, braggflow.logs, "
            "braggflow.detector; "
            "print(sorted(m for m in ('pandas', 'scipy', 'torch', 'gemmi', 'yaml', 'matplotlib', 'jsonschema') "
            "if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code, str(ROOT / "src")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", res.stdout


def test_the_evaluator_and_the_figures_import_without_torch():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import braggflow.evaluate, braggflow.figures.evaluation, "
            "braggflow.figures.overlays, braggflow.figures.training; print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code, str(ROOT / "src")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
