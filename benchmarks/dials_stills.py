"""Seconds per frame for dials.stills_process on this machine, on overlay shards the workflow made.

usage: python benchmarks/dials_stills.py [overlay shard ...]   (default: the default run's shards 0000 of
7keV_250mm and 8keV_150mm; run `make run` or the overlay rules first). Uses the PHIL the workflow builds.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from braggflow.config import load_config
from braggflow.dials import DialsSettings, stills_phil
from braggflow.formats import shards as S
from braggflow.structures import read_structure

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["results/overlays/1ic6/7keV_250mm/shard_0000.h5", "results/overlays/1ic6/8keV_150mm/shard_0000.h5"]


def main(paths: list[str]) -> None:
    cfg = load_config(ROOT / "config/config.yaml", ROOT / "config/config.schema.yaml")
    model = read_structure(ROOT / cfg["structures"]["1ic6"]["file"])
    nproc = int(cfg["dials"]["nproc"])
    phil = stills_phil(model.spacegroup_hm, model.cell, cfg["overlay"]["adu_per_photon"],
                       DialsSettings.from_config(cfg["dials"]))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "workflow/dials"))
    for p in paths:
        path = (ROOT / p).resolve()
        n, (ny, nx) = S.n_frames(path), S.read_images(path, 0).shape
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "params.phil").write_text(phil)
            t0 = time.perf_counter()
            subprocess.run(["dials.stills_process", str(path), "params.phil", f"mp.nproc={nproc}",
                            "output.output_dir=."], cwd=tmp, env=env, check=True, capture_output=True)
            dt = time.perf_counter() - t0
        print(f"{p}: {n} frames of {nx}x{ny} px, mp.nproc={nproc}: {dt:.1f} s wall, {dt / n:.1f} s/frame "
              f"(including ~4 s start-up)")


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT)
