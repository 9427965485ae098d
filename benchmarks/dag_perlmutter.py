"""Seconds to build the DAG of config/perlmutter.yaml (9 datasets x 100,000 frames) in a dry run, and the jobs.

Runs `snakemake -n` in an empty working directory (nothing exists yet, so every job is planned), once plainly
(jobs per rule) and once with profiles/slurm: the SLURM jobs the groups make, and the sbatch calls of the job
arrays (the per-shard rules, slurm-array-jobs): at best one per slurm-array-limit tasks of a rule, when its shards
are ready together (simulate, after the one preparation job), at worst one per shard (shards that finish one at
a time between two status checks).

Run:  .venv/bin/python benchmarks/dag_perlmutter.py [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
CONFIG = ROOT / "config/perlmutter.yaml"


def dry_run(work: Path, *extra: str) -> tuple[float, str]:
    cmd = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--directory", str(work), "--configfile", str(CONFIG),
           "-n", *extra]
    env = dict(os.environ, BRAGGFLOW_SLURM_ACCOUNT=os.environ.get("BRAGGFLOW_SLURM_ACCOUNT", "m0000"))
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"dry run failed ({' '.join(cmd)}):\n{res.stderr[-3000:]}")
    return seconds, res.stdout + res.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "resources").symlink_to(ROOT / "resources")
        times = []
        for _ in range(args.repeats):
            seconds, out = dry_run(work, "--quiet", "rules")
            times.append(seconds)
        jobs = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", out, re.M))
        print(f"config/perlmutter.yaml dry run (DAG + job table): {min(times):.1f} s "
              f"(best of {args.repeats}; {os.cpu_count()} CPUs)")
        for rule, n in jobs.items():
            print(f"  {rule:28s} {n:>7}")

        seconds, out = dry_run(work, "--profile", str(ROOT / "profiles/slurm"))
        groups = Counter(re.findall(r"Group job (\w+)", out))
        grouped_rules = set(re.findall(r"^\s{4}rule (\w+):", out, re.M))
        single = Counter(r for r in re.findall(r"^(?:local)?rule (\w+):", out, re.M) if r not in grouped_rules)
        profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
        array_rules = [r.strip() for r in profile.get("slurm-array-jobs", "").split(",") if r.strip()]
        limit = int(profile.get("slurm-array-limit", 1000))
        arrays = {r: n for r, n in single.items() if r in array_rules}
        plain = {r: n for r, n in single.items() if r not in array_rules and r != "all"}
        fewest = sum(groups.values()) + sum(plain.values()) + sum(-(-n // limit) for n in arrays.values())
        most = sum(groups.values()) + sum(plain.values()) + sum(arrays.values())
        print(f"with profiles/slurm: {seconds:.1f} s; "
              + ", ".join(f"group {g} x {n}" for g, n in sorted(groups.items()))
              + "".join(f", {r} x {n}" for r, n in sorted(plain.items()))
              + "; arrays: " + ", ".join(f"{r} {n} tasks" for r, n in sorted(arrays.items()))
              + f"; sbatch calls: {fewest} (each array rule's shards ready together, {limit} tasks per array) "
              f"to {most} (shards ready one at a time)")


if __name__ == "__main__":
    main()
