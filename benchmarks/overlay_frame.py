"""CPU seconds of the overlay per full Eiger 4M frame (2070 x 2167), as the overlay rule spends them: Poisson
photons of Bragg + water, outliers, gain and readout noise, the label, the label's regions, and the frame and
label written with the shards' compression. The overlay runs on the CPU in the workflow (no GPU path).

Frames are synthetic: water ~1 photon/px and 150 Gaussian spots (benchmarks/train_throughput.py), the schema's
overlay defaults.

Run:  PYTHONPATH=src python benchmarks/overlay_frame.py [--frames 3] [--json F]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one CPU core, set before NumPy loads BLAS

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from braggflow.config import section_defaults  # noqa: E402
from braggflow.formats import shards as S  # noqa: E402
from braggflow.overlay import OverlaySettings, frame_rng, overlay_frame  # noqa: E402
from train_throughput import SCHEMA, SHAPE  # noqa: E402


def synthetic_bragg(rng: np.random.Generator, n_spots: int = 150) -> np.ndarray:
    bragg = np.zeros(SHAPE)
    yy, xx = np.mgrid[-4:5, -4:5]
    for x, y in rng.uniform(20, [SHAPE[1] - 20, SHAPE[0] - 20], size=(n_spots, 2)).astype(int):
        bragg[y - 4:y + 5, x - 4:x + 5] += rng.uniform(20, 2000) * np.exp(-(xx * xx + yy * yy) / 2.0) / (2 * np.pi)
    return bragg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    settings = OverlaySettings.from_config(section_defaults(SCHEMA, "overlay"))
    rng = np.random.default_rng(0)
    water = np.full(SHAPE, 1.0, np.float32)
    untrusted = np.zeros(SHAPE, bool)
    untrusted[:, 1030:1040] = True  # a module gap
    frames = [synthetic_bragg(rng) for _ in range(args.frames)]
    cpu = []
    with tempfile.TemporaryDirectory() as tmp, h5py.File(Path(tmp) / "o.h5", "w") as f:
        data = S.create_images(f, (args.frames, *SHAPE), np.int32)
        labels = S.create_labels(f, (args.frames, *SHAPE))
        for i, bragg in enumerate(frames):
            c0 = time.process_time()
            fr = overlay_frame(bragg, water, untrusted, True, 1.0, 1.0, settings, frame_rng(1, 0, i))
            data[i] = fr.counts
            labels[i] = fr.label.astype(np.uint8)
            ndimage.label(fr.label, structure=np.ones((3, 3)))
            cpu.append(time.process_time() - c0)
    fig = {"cpu_s_per_frame": float(np.median(cpu)), "frames": args.frames, "device": "cpu"}
    print(f"overlay, Eiger 4M frame: {fig['cpu_s_per_frame']:.3f} CPU-s per frame (median of {args.frames}; "
          f"{', '.join(f'{c:.3f}' for c in cpu)})")
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1) + "\n")


if __name__ == "__main__":
    main()
