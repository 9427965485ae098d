"""Inference throughput on full Eiger 4M frames (2070 x 2167), both engines, 1 and 2 threads, in one run: the
peak finders (probability map and spot extraction, as the predict rule runs them: the full-resolution U-Net and
the cell U-Net), the hit classifier, the energy / camera-length model, and the dispersion finder on the same
frames; each peak finder's frames/s as a ratio to the dispersion finder's.

Weights are random unless --weights (a peak_finder.pt of the first of --architectures) is given: the cost does not
depend on their values. Frames are synthetic (Poisson water ~1 photon/px plus 150 spots) unless --shards.

Run:  PYTHONPATH=src python benchmarks/infer_throughput.py [--device cpu|cuda] [--threads 1 2] [--frames 3]
"""

from __future__ import annotations

import argparse
import glob
import tempfile
import time

import numpy as np
import torch

from braggflow.ml import data as D
from braggflow.ml.baselines import DispersionSettings, find_spots
from braggflow.ml.models import EnergyDistanceNet, HitClassifier, peak_finder, peak_finder_arguments
from braggflow.ml.onnx_models import ENGINES, OnnxModel, export_onnx
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
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--architectures", nargs="+", default=["unet", "cell_unet"], choices=["unet", "cell_unet"])
    ap.add_argument("--unet-channels", type=int, default=16)
    ap.add_argument("--cell-channels", type=int, default=24)
    ap.add_argument("--cell-px", type=int, default=4)
    ap.add_argument("--weights", default=None, help="weights of the first of --architectures")
    ap.add_argument("--hit-weights", default=None,
                    help="a trained hit_classifier.pt: also time hit finding first (experiments.<name>.hit_gate) on "
                         "every frame of --shards with the first of --architectures, torch, --threads[0]")
    ap.add_argument("--hit-gate", type=float, default=0.5)
    ap.add_argument("--shards", default=None)
    ap.add_argument("--workers", type=int, default=2,
                    help="also run the peak finders with this many single-threaded processes, a frame each (the way a "
                         "detector-speed pipeline uses its cores); 0: not")
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = default_training()
    torch.manual_seed(0)
    e = cfg.energy_distance
    nets = {}
    for arch, channels in (("unet", args.unet_channels), ("cell_unet", args.cell_channels)):
        if arch in args.architectures:
            a = peak_finder_arguments(arch, channels, args.cell_px)
            nets[f"peak_finder {arch}"] = (peak_finder(**a), a)
    nets.update({"hit_classifier": (HitClassifier(cfg.hit_classifier.channels), {"channels": cfg.hit_classifier.channels}),
                 "energy_distance": (EnergyDistanceNet(e.sectors, e.radial_bins, 3, 3, e.channels),
                                     {"sectors": e.sectors, "radial_bins": e.radial_bins})})
    if args.weights:
        net, a = nets[f"peak_finder {args.architectures[0]}"]
        net.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    tmp = tempfile.TemporaryDirectory()
    onnx_files = {}
    if "onnxruntime" in args.engines:
        for k, (m, a) in nets.items():
            onnx_files[k] = f"{tmp.name}/{k.replace(' ', '_')}.onnx"
            export_onnx(m.eval(), k.split()[0], a, onnx_files[k])
    refs = D.index_shards(sorted(glob.glob(args.shards))) if args.shards else []
    frames = [D.read_counts_only(r) for r in refs[: args.frames + 1]] or [synthetic_frame(np.random.default_rng(0))[0]]
    centre = D.beam_center_px(refs[0]) if refs else (1035.0, 1083.5)

    def counts(i):
        return frames[i % len(frames)]

    def runners(models):
        hit, ed = models["hit_classifier"], models["energy_distance"]

        def run_peak(peak):
            def run(i):
                c = counts(i)
                cnn_spots(peak, c, device, 0.9, 2)
            return run

        @torch.no_grad()
        def run_hit(i):
            hit(torch.from_numpy(D.binned_frame(counts(i), cfg.hit_classifier.bin_px)[None]).to(device))

        @torch.no_grad()
        def run_ed(i):
            ed(torch.from_numpy(D.polar_profile(counts(i), centre, e.radial_bins, e.sectors)[None]).to(device))

        peaks = [(f"{k} (probability + spots)", run_peak(m)) for k, m in models.items() if k.startswith("peak")]
        return (*peaks, ("hit classifier", run_hit), ("energy / camera length", run_ed))

    def run_base(i):
        find_spots(counts(i), DispersionSettings())

    where = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    print(f"inference on full Eiger 4M frames ({frames[0].shape[0]} x {frames[0].shape[1]}), {where}, "
          f"{args.frames} frames per figure after one warm-up:")
    for threads in args.threads:
        torch.set_num_threads(threads)
        wall, cpu = timed(run_base, args.frames, device)
        base_fps = 1 / wall
        print(f"  {threads} thread(s): dispersion finder (NumPy/SciPy) {wall:7.3f} s/frame  {base_fps:7.2f} frames/s"
              f"  (CPU {cpu:.3f} s/frame)")
        for engine in args.engines:
            models = {k: m.to(device).eval() for k, (m, _) in nets.items()}
            if engine == "onnxruntime":
                for k, p in onnx_files.items():
                    models[k] = OnnxModel.from_bytes(p, threads=threads, device=str(device),
                                                     like=nets[k][0] if k.startswith("peak") else None)
            for label, fn in runners(models):
                wall, cpu = timed(fn, args.frames, device)
                ratio = f"  {1 / wall / base_fps:5.2f}x the dispersion finder's frames/s" if "peak" in label else ""
                print(f"  {threads} thread(s), {engine:11s} {label:44s} {wall:7.3f} s/frame  {1 / wall:7.2f} frames/s"
                      f"  (CPU {cpu:.3f} s/frame){ratio}")
    if args.workers and device.type == "cpu":
        import multiprocessing as mp

        frame_file = f"{tmp.name}/frames.npy"
        np.save(frame_file, np.stack(frames))
        print(f"  {args.workers} single-threaded processes, one frame each at a time ({args.workers * args.frames} "
              f"frames after a warm-up frame per process):")
        for k, (m, a) in nets.items():
            if not k.startswith("peak"):
                continue
            torch.save(m.state_dict(), f"{tmp.name}/{k.replace(' ', '_')}.pt")
            for engine in args.engines:
                model_file = onnx_files[k] if engine == "onnxruntime" else f"{tmp.name}/{k.replace(' ', '_')}.pt"
                ctx = mp.get_context("spawn")  # fresh processes: no thread pool inherited from this one
                with ctx.Pool(args.workers, _worker_init, (engine, a, model_file, frame_file)) as pool:
                    pool.map(_worker_frame, range(args.workers), chunksize=1)
                    t0 = time.perf_counter()
                    pool.map(_worker_frame, range(args.workers * args.frames), chunksize=1)
                    wall = (time.perf_counter() - t0) / (args.workers * args.frames)
                print(f"  {args.workers} processes, {engine:11s} {k + ' (probability + spots)':44s} "
                      f"{1 / wall:7.2f} frames/s")
    tmp.cleanup()
    if args.hit_weights:
        torch.set_num_threads(args.threads[0])
        hit_gate(args, refs, nets[f"peak_finder {args.architectures[0]}"][0].to(device).eval(), cfg, device)


_WORKER: dict = {}


def _worker_init(engine: str, arguments: dict, model_file: str, frame_file: str) -> None:
    torch.set_num_threads(1)
    if engine == "onnxruntime":
        model = OnnxModel.from_bytes(model_file, threads=1, like=peak_finder(**arguments))
    else:
        model = peak_finder(**arguments)
        model.load_state_dict(torch.load(model_file, weights_only=True))
        model.eval()
    _WORKER.update(model=model, frames=np.load(frame_file, mmap_mode="r"))


def _worker_frame(i: int) -> int:
    frames = _WORKER["frames"]
    c = np.asarray(frames[i % len(frames)])
    return len(cnn_spots(_WORKER["model"], c, torch.device("cpu"), 0.9, 2))


def hit_gate(args, refs, peak, cfg, device) -> None:
    """Peak finder on every frame against hit classifier on every frame and the peak finder on the hits only, on
    the same frames (CPU seconds per frame; which frames the gate skips, against the shards' truth)."""
    if not refs:
        raise SystemExit("--hit-weights needs --shards (frames with truth hit flags)")
    hit = HitClassifier(cfg.hit_classifier.channels)
    hit.load_state_dict(torch.load(args.hit_weights, map_location="cpu", weights_only=True))
    hit = hit.to(device).eval()
    frames = [(D.read_counts_only(r), r.hit) for r in refs]
    c0 = time.process_time()
    for c, _ in frames:
        cnn_spots(peak, c, device, 0.9, 2)
    every = (time.process_time() - c0) / len(frames)
    c0, skipped = time.process_time(), []
    for c, _ in frames:
        with torch.no_grad():
            x = torch.from_numpy(D.binned_frame(c, cfg.hit_classifier.bin_px)[None]).to(device)
            p = float(torch.sigmoid(hit(x))[0])
        skipped.append(p < args.hit_gate)
        if not skipped[-1]:
            cnn_spots(peak, c, device, 0.9, 2)
    gated = (time.process_time() - c0) / len(frames)
    truth = np.array([h for _, h in frames], bool)
    skipped = np.array(skipped)
    print(f"hit finding first (gate {args.hit_gate:g}) on {len(frames)} frames ({int((~truth).sum())} blank):")
    print(f"  peak finder on every frame        {every:7.3f} CPU-s/frame")
    print(f"  hit classifier, then peak finder  {gated:7.3f} CPU-s/frame ({gated / every:.2f}x; "
          f"{int(skipped.sum())} frames skipped: {int((skipped & ~truth).sum())} blank, "
          f"{int((skipped & truth).sum())} hits)")


if __name__ == "__main__":
    main()
