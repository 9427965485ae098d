"""Inference throughput on full Eiger 4M frames (2070 x 2167): the U-Net peak finder (probability map and spot
extraction), the hit classifier, the energy / camera-length model, and the dispersion baseline for comparison.

Weights are random unless --weights (a peak_finder.pt of the default architecture) is given: the cost does not
depend on their values. Frames are synthetic (Poisson water ~1 photon/px plus 150 spots) unless --shards.

Run:  PYTHONPATH=src python benchmarks/infer_throughput.py [--device cpu|cuda] [--threads 1] [--frames 3]
"""

from __future__ import annotations

import argparse
import glob
import time

import numpy as np
import torch

from braggflow.ml import data as D
from braggflow.ml.baselines import DispersionSettings, find_spots
from braggflow.ml.models import EnergyDistanceNet, HitClassifier, PeakUNet
from braggflow.ml.peak_finder import cnn_spots

from train_throughput import default_training, synthetic_frame  # noqa: E402  (benchmarks/ is the script's directory)


def timed(fn, n, device):
    """(wall, CPU) seconds per call after one warm-up call; CPU time varies less on a shared machine."""
    fn(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i + 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--shards", default=None)
    ap.add_argument("--block-px", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = default_training()
    torch.manual_seed(0)
    peak = PeakUNet(cfg.peak_finder.base_channels)
    if args.weights:
        peak.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    peak = peak.to(device).eval()
    hit = HitClassifier(cfg.hit_classifier.channels).to(device).eval()
    e = cfg.energy_distance
    ed = EnergyDistanceNet(e.sectors, e.radial_bins, 3, 3, e.channels).to(device).eval()
    refs = D.index_shards(sorted(glob.glob(args.shards))) if args.shards else []
    frames = [D.read_counts_only(r) for r in refs[: args.frames + 1]] or [synthetic_frame(np.random.default_rng(0))[0]]
    centre = D.beam_center_px(refs[0]) if refs else (1035.0, 1083.5)

    def counts(i):
        return frames[i % len(frames)]

    def run_peak(i):
        cnn_spots(peak, counts(i), device, 0.9, 2)

    @torch.no_grad()
    def run_hit(i):
        hit(torch.from_numpy(D.binned_frame(counts(i), cfg.hit_classifier.bin_px)[None]).to(device))

    @torch.no_grad()
    def run_ed(i):
        ed(torch.from_numpy(D.polar_profile(counts(i), centre, e.radial_bins, e.sectors)[None]).to(device))

    def run_base(i):
        find_spots(counts(i), DispersionSettings())

    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"inference on full Eiger 4M frames, {name}:")
    for label, fn in (("U-Net peak finder (probability + spots)", run_peak), ("hit classifier", run_hit),
                      ("energy / camera length", run_ed), ("dispersion baseline (NumPy/SciPy, CPU)", run_base)):
        wall, cpu = timed(fn, args.frames, device)
        print(f"  {label:42s} {wall:8.3f} s/frame  {1 / wall:8.2f} frames/s  (CPU {cpu:.3f} s/frame)")


if __name__ == "__main__":
    main()
