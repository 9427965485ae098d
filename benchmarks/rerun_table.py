"""The rerun table: on a finished run, how many jobs `snakemake -n` wants after one edit of the config.

usage: .venv/bin/python benchmarks/rerun_table.py [RUN_DIR] [--configfile config/config.yaml]

RUN_DIR (default: this checkout) holds a finished run of the config file. Each row edits one key (or reorders the
file's keys, or runs the same checkout's files from another directory) and prints the jobs Snakemake would run,
by rule. The README's "Rebuilding only what changed" table and tests/test_rerun_contract.py (on the tiny config)
state what each row should be.
"""

from __future__ import annotations

import argparse
import copy
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def reordered(node):
    """The same mapping with every level's keys in reverse order."""
    if isinstance(node, dict):
        return {k: reordered(node[k]) for k in reversed(list(node))}
    return node


def with_value(config: dict, dotted: str, value) -> dict:
    out = copy.deepcopy(config)
    node = out
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return out


def jobs_by_rule(run_dir: Path, config: dict, snakefile: Path) -> dict[str, int]:
    """rule -> jobs of `snakemake -n` (the target rule `all` left out)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f, sort_keys=False)
    cmd = [str(SNAKEMAKE), "-n", "--quiet", "rules", "-s", str(snakefile), "--directory", str(run_dir),
           "--cores", "2", "--configfile", f.name]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=snakefile.parent)
    Path(f.name).unlink()
    if res.returncode != 0:
        raise SystemExit(f"snakemake -n failed:\n{(res.stdout + res.stderr)[-3000:]}")
    table = {}
    for line in res.stdout.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) not in ("all", "total", "job"):
            table[m.group(1)] = int(m.group(2))
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", default=str(ROOT))
    ap.add_argument("--configfile", default=str(ROOT / "config/config.yaml"))
    args = ap.parse_args()
    run_dir, base = Path(args.run_dir).resolve(), yaml.safe_load(Path(args.configfile).read_text())
    sim = base["simulation"]
    rows = [
        ("nothing (the finished run)", base),
        ("overlay.gallery_frames + 1", with_value(base, "overlay.gallery_frames", base["overlay"]["gallery_frames"] + 1)),
        ("simulation.frames_per_dataset + one shard",
         with_value(base, "simulation.frames_per_dataset", sim["frames_per_dataset"] + sim["frames_per_shard"])),
        ("simulation.backend numpy", with_value(base, "simulation.backend", "numpy")),
        ("training.threads 2", with_value(base, "training.threads", 2)),
        ("the same config, keys in reverse order", reordered(base)),
    ]
    for label, cfg in rows:
        jobs = jobs_by_rule(run_dir, cfg, ROOT / "Snakefile")
        print(f"{label}: {sum(jobs.values())} jobs {dict(sorted(jobs.items()))}")
    with tempfile.TemporaryDirectory() as moved:  # this checkout's files, from another directory
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-c", "--null", "-T", "-", "-f", f"{moved}/code.tar"], cwd=ROOT, input=files,
                       check=True)
        subprocess.run(["tar", "-x", "-f", "code.tar"], cwd=moved, check=True)
        jobs = jobs_by_rule(run_dir, base, Path(moved) / "Snakefile")
        print(f"the same run from a checkout in another directory: {sum(jobs.values())} jobs "
              f"{dict(sorted(jobs.items()))}")


if __name__ == "__main__":
    main()
