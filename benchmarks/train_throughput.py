"""Training throughput of the peak finder (frames/s and tiles/s) with the default config's settings.

One "frame" is what an epoch takes from a training frame: it is read (or synthesised), tiles_per_frame tiles
are cut (half around reflections) and fed in batches of batch_size through forward, backward and an Adam step.
With --shards the frames are real overlay shards (HDF5 read and decompression included); without, a synthetic
full Eiger 4M frame (2070 x 2167, Poisson water ~1 photon/px, 150 Gaussian spots) is reused.

Run:  PYTHONPATH=src python benchmarks/train_throughput.py [--device cpu|cuda] [--threads 1] [--frames 6]
                                                            [--shards 'results/overlays/1ic6/7keV_250mm/*.h5']
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from braggflow.ml import data as D
from braggflow.ml.models import peak_finder, peak_finder_arguments
from braggflow.config import section_defaults
from braggflow.settings import TrainingSettings

SHAPE = (2167, 2070)  # Eiger 4M (slow, fast)
SCHEMA = Path(__file__).resolve().parents[1] / "config/config.schema.yaml"


def default_training() -> TrainingSettings:
    """The schema's training defaults (what a config that leaves the section out trains with)."""
    return TrainingSettings.from_config(section_defaults(SCHEMA, "training"))


def synthetic_frame(rng: np.random.Generator, n_spots: int = 150):
    expected = np.full(SHAPE, 1.0)
    xy = rng.uniform(20, [SHAPE[1] - 20, SHAPE[0] - 20], size=(n_spots, 2))
    label = np.zeros(SHAPE, bool)
    for x, y in xy:
        i, j = int(y), int(x)
        yy, xx = np.mgrid[i - 3:i + 4, j - 3:j + 4] + 0.5
        spot = 40 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 1.0) / np.pi
        expected[i - 3:i + 4, j - 3:j + 4] += spot
        label[i - 3:i + 4, j - 3:j + 4] |= spot > 2
    counts = rng.poisson(expected).astype(np.int32)
    truth = pd.DataFrame({"x_px": xy[:, 0], "y_px": xy[:, 1], "photons": 40.0, "visible": True})
    return counts, label, truth


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--shards", default=None, help="glob of overlay shards (default: a synthetic frame)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = default_training().peak_finder
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = peak_finder(**peak_finder_arguments(p.architecture, p.base_channels, p.cell_px)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=p.learning_rate)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    rng = np.random.default_rng(0)
    refs = D.index_shards(sorted(glob.glob(args.shards))) if args.shards else []
    fixed = None if refs else synthetic_frame(rng)

    def frame(i):
        if refs:
            r = refs[i % len(refs)]
            counts, label = D.read_frame(r)
            return counts, label, D.read_frame_truth(r)
        return fixed

    def one(i):
        counts, label, truth = frame(i)
        x, y = D.sample_tiles(counts, label, truth, p.tiles_per_frame, p.tile_px, rng)
        for k in range(0, len(x), p.batch_size):
            xb = torch.from_numpy(x[k:k + p.batch_size]).to(device)
            yb = torch.from_numpy(y[k:k + p.batch_size]).to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xb).float(), yb)
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    one(0)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(args.frames):
        one(i + 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"peak finder training on {name}, {'shards' if refs else 'synthetic Eiger 4M frame'}: "
          f"{args.frames / wall:.3f} frames/s, {args.frames * p.tiles_per_frame / wall:.1f} tiles/s "
          f"({p.tiles_per_frame} tiles of {p.tile_px} px per frame, batch {p.batch_size}, "
          f"{p.base_channels} base channels); wall {wall:.2f} s, CPU {cpu:.2f} s")


if __name__ == "__main__":
    main()
