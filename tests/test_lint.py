"""The workflow passes Snakemake's linter and is formatted as snakefmt (configured in pyproject.toml) wants it."""

import shutil
import subprocess

from conftest import ROOT, SNAKEMAKE

SNAKEFMT = SNAKEMAKE.with_name("snakefmt")


def test_snakemake_lint_is_clean():
    res = subprocess.run([str(SNAKEMAKE), "--lint"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "Lints for" not in out, out[-6000:]


def test_snakefmt_check_passes():
    exe = str(SNAKEFMT) if SNAKEFMT.exists() else shutil.which("snakefmt")
    assert exe, "snakefmt is missing: it is a test dependency (pip install -e '.[test]')"
    # Snakefile and rules/*.smk (snakefmt's default include pattern); settings from pyproject.toml [tool.snakefmt].
    res = subprocess.run([exe, "--check", "."], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        diff = subprocess.run([exe, "--compact-diff", "."], cwd=ROOT, capture_output=True, text=True, timeout=300)
        raise AssertionError(f"snakefmt would reformat (run `.venv/bin/snakefmt .`):\n{diff.stdout[-6000:]}"
                             f"{res.stderr[-2000:]}")
