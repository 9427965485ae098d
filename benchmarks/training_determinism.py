"""What changes the bits of CPU training, and what pinning them costs (issue #18).

Each case runs in a fresh Python process, because the kernel variables (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA,
MKL_CBWR) are read once, when torch first computes. In each process: a PeakUNet (default config: 16 base channels,
batch 32 of 48 px tiles) trains through ``train.fit`` for 2 epochs of a few steps on fixed synthetic tiles
(peak_losses: its history of training and validation losses), and then predicts one synthetic frame with
``train.predict_probability`` (batch 1, as in tuning and scoring). A HitClassifier and an
EnergyDistanceNet (which has dropout) train a few steps too. The table gives a short sha256 of each result and
says whether it equals the reference case (today's code, defaults, 1 thread).

Cases: the thread count; emulated lower ISAs (ONEDNN_MAX_CPU_ISA=SSE41/AVX, ATEN_CPU_CAPABILITY=default,
MKL_CBWR=COMPATIBLE/SSE4_2), which swap kernels the way an AVX-512 or AMX machine does; mkldnn off; and the
fix (``determinism.pin_cpu_kernels`` and the layers of ``braggflow.ml.layers``) at 1 to 8 threads. "old code" puts
the ``nn`` layers back (the code before the fix). Then the CPU time per U-Net training step, fix vs old code and
mkldnn off vs on, in alternating fresh processes.

Run:  PYTHONPATH=src python benchmarks/training_determinism.py [--steps 6] [--repeats 5] [--timing-steps 20]
                                                             [--skip-bits] [--skip-timing]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


# ---------------------------------------------------------------- one case, in its own process

def worker(spec: dict) -> dict:
    if spec.get("pin"):
        from braggflow.ml.determinism import pin_cpu_kernels

        pin_cpu_kernels()
    import hashlib

    import numpy as np
    import torch
    from torch import nn

    from braggflow.ml import layers as L
    from braggflow.ml import models
    from braggflow.ml import fit as T
    from braggflow.ml.peak_finder import predict_probability
    from braggflow.ml.data import network_input
    from braggflow.ml.determinism import kernel_settings

    if spec.get("old_code"):  # the nn layers and the loss on all threads, as before the fix
        L.Conv1d._conv_forward, L.Conv2d._conv_forward = nn.Conv1d._conv_forward, nn.Conv2d._conv_forward
        L.ConvTranspose2d.forward, L.Dropout.forward = nn.ConvTranspose2d.forward, nn.Dropout.forward
        L.Linear.forward = nn.Linear.forward
        T._loss_threads = lambda device: contextlib.nullcontext()
    torch.set_num_threads(spec["threads"])
    torch.backends.mkldnn.enabled = spec.get("mkldnn", True)

    def digest(*tensors) -> str:
        h = hashlib.sha256()
        for t in tensors:
            h.update(t.detach().contiguous().numpy().tobytes())
        return h.hexdigest()[:10]

    def state_digest(m) -> str:
        return digest(*m.state_dict().values())

    rng = np.random.default_rng(0)
    shape = (320, 300)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    expected = np.full(shape, 1.0)
    for y, x in rng.uniform(10, 290, size=(60, 2)):
        expected += 30 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 2.0)
    counts = rng.poisson(expected).astype(np.int32)
    label = (expected > 3).astype(np.float32)
    full = network_input(counts)
    corners = rng.integers(0, [shape[0] - 48, shape[1] - 48], size=(32 * spec["steps"] + 64, 2))
    tiles = np.stack([full[:, y:y + 48, x:x + 48] for y, x in corners])
    labels = np.stack([label[None, y:y + 48, x:x + 48] for y, x in corners])
    tiles, labels, val_tiles, val_labels = tiles[64:], labels[64:], tiles[:64], labels[:64]

    out: dict = {"kernels": kernel_settings()}
    # Through train.fit, as in the workflow: steps batches of 32 tiles per epoch, 2 epochs, and the validation loss
    # of 64 fixed tiles after each (which the learning-rate schedule and early stopping read).
    weight = torch.tensor(4.0)

    def loss_fn(logits, y):
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=weight)

    def batches(epoch):
        for s in range(spec["steps"]):
            yield tiles[32 * s:32 * (s + 1)], labels[32 * s:32 * (s + 1)]

    val = [] if spec.get("timing_only") else [(val_tiles, val_labels)]
    epochs = 1 if spec.get("timing_only") else 2
    with T.seeded(0):
        unet = models.PeakUNet(16)
        out["peak_init"] = state_digest(unet)
        c0, t0 = time.process_time(), time.perf_counter()
        fit = T.fit(unet, batches, val, loss_fn, epochs=epochs, learning_rate=3e-3, patience=5,
                    device=torch.device("cpu"))
    out["cpu_s_per_step"] = (time.process_time() - c0) / (epochs * spec["steps"])
    out["wall_s_per_step"] = (time.perf_counter() - t0) / (epochs * spec["steps"])
    out["peak_weights"] = state_digest(unet)
    out["peak_losses"] = hashlib.sha256(json.dumps([[h["train_loss"], h["validation_loss"]]
                                                    for h in fit.history]).encode()).hexdigest()[:10]
    out["peak_predict"] = digest(torch.from_numpy(predict_probability(unet, counts, torch.device("cpu"))))
    if spec.get("timing_only"):
        return out

    with T.seeded(1):
        hit = models.HitClassifier(16)
    opt = torch.optim.Adam(hit.parameters(), lr=3e-3)
    xb = torch.from_numpy(rng.gamma(1.0, 1.0, (8, 2, 40, 37)).astype(np.float32))
    yb = torch.from_numpy((rng.random(8) < 0.5).astype(np.float32))
    for _ in range(spec["steps"]):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(hit(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    out["hit_weights"] = state_digest(hit)

    prof = torch.from_numpy(rng.normal(0, 1, (64, 8, 128)).astype(np.float32))
    e_cls, d_cls = torch.from_numpy(rng.integers(0, 3, 64)), torch.from_numpy(rng.integers(0, 2, 64))
    with T.seeded(2):
        ed = models.EnergyDistanceNet(8, 128, 3, 2, 32)
        ed.set_standardisation(prof)
        opt = torch.optim.Adam(ed.parameters(), lr=2e-3)
        for s in range(spec["steps"]):
            pe, pd = ed(prof[16 * (s % 4):16 * (s % 4 + 1)])
            loss = (torch.nn.functional.cross_entropy(pe, e_cls[16 * (s % 4):16 * (s % 4 + 1)])
                    + torch.nn.functional.cross_entropy(pd, d_cls[16 * (s % 4):16 * (s % 4 + 1)]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    out["energy_weights"] = state_digest(ed)
    return out


# ---------------------------------------------------------------- the driver

CASES = [  # name, environment, spec
    ("old code, 1 thread (reference)", {}, {"threads": 1, "old_code": True}),
    ("old code, 1 thread, rerun", {}, {"threads": 1, "old_code": True}),
    ("old code, 2 threads", {}, {"threads": 2, "old_code": True}),
    ("old code, 4 threads", {}, {"threads": 4, "old_code": True}),
    ("old code, 8 threads", {}, {"threads": 8, "old_code": True}),
    ("old code, ONEDNN_MAX_CPU_ISA=SSE41", {"ONEDNN_MAX_CPU_ISA": "SSE41"}, {"threads": 1, "old_code": True}),
    ("old code, ONEDNN_MAX_CPU_ISA=AVX", {"ONEDNN_MAX_CPU_ISA": "AVX"}, {"threads": 1, "old_code": True}),
    ("old code, ONEDNN_MAX_CPU_ISA=AVX2", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, {"threads": 1, "old_code": True}),
    ("old code, ATEN_CPU_CAPABILITY=default", {"ATEN_CPU_CAPABILITY": "default"},
     {"threads": 1, "old_code": True}),
    ("old code, ATEN_CPU_CAPABILITY=avx2", {"ATEN_CPU_CAPABILITY": "avx2"}, {"threads": 1, "old_code": True}),
    ("old code, MKL_CBWR=COMPATIBLE", {"MKL_CBWR": "COMPATIBLE"}, {"threads": 1, "old_code": True}),
    ("old code, MKL_CBWR=SSE4_2", {"MKL_CBWR": "SSE4_2"}, {"threads": 1, "old_code": True}),
    ("old code, MKL_CBWR=AVX2", {"MKL_CBWR": "AVX2"}, {"threads": 1, "old_code": True}),
    ("old code, mkldnn off, 1 thread", {}, {"threads": 1, "old_code": True, "mkldnn": False}),
    ("old code, mkldnn off, 2 threads", {}, {"threads": 2, "old_code": True, "mkldnn": False}),
    ("old code, mkldnn off, 2 threads, MKL_CBWR=COMPATIBLE", {"MKL_CBWR": "COMPATIBLE"},
     {"threads": 2, "old_code": True, "mkldnn": False}),
    ("old code, torch.use_deterministic_algorithms, 2 threads", {"BF_DETERMINISTIC": "1"},
     {"threads": 2, "old_code": True}),
    ("fix, 1 thread", {}, {"threads": 1, "pin": True}),
    ("fix, 2 threads", {}, {"threads": 2, "pin": True}),
    ("fix, 4 threads", {}, {"threads": 4, "pin": True}),
    ("fix, 8 threads", {}, {"threads": 8, "pin": True}),
    ("fix, 2 threads, MKL_CBWR unset (pin without MKL)", {"MKL_CBWR": ""}, {"threads": 2, "pin": True}),
    ("fix, 2 threads, ONEDNN_MAX_CPU_ISA=SSE41 (emulated other ISA)", {"ONEDNN_MAX_CPU_ISA": "SSE41"},
     {"threads": 2, "pin": True}),
]
RESULTS = ["peak_init", "peak_weights", "peak_losses", "peak_predict", "hit_weights", "energy_weights"]
KERNEL_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "OMP_NUM_THREADS",
               "MKL_NUM_THREADS")


def run_case(env: dict, spec: dict) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in KERNEL_VARS}
    base["PYTHONPATH"] = SRC + os.pathsep + base.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env={**base, **env},
                         capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"worker {spec} {env} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=6, help="Adam steps per model for the bit comparison")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats per setting (fresh processes)")
    ap.add_argument("--timing-steps", type=int, default=20, help="U-Net steps per timing process")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--skip-bits", action="store_true", help="only the timing")
    args = ap.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        if os.environ.get("BF_DETERMINISTIC"):
            import torch

            torch.use_deterministic_algorithms(True)
        print(json.dumps(worker(spec)))
        return

    import torch

    print(f"torch {torch.__version__}; {torch.backends.cpu.get_cpu_capability()} dispatch; "
          f"{os.cpu_count()} CPUs; BLAS: {'MKL' if torch.backends.mkl.is_available() else 'not MKL'}; "
          f"oneDNN: {torch.backends.mkldnn.is_available()}")
    cfg = [line.strip() for line in torch.__config__.show().splitlines()
           if "Math Kernel" in line or "MKL-DNN" in line or "CPU capability" in line]
    print("\n".join(cfg))
    rows = []
    for name, env, spec in [] if args.skip_bits else CASES:
        r = run_case(env, {**spec, "steps": args.steps})
        rows.append((name, r))
    if rows:
        ref = rows[0][1]
        w = max(len(n) for n, _ in rows)
        print("\nsha256[:10] of each result; '=' where equal to the reference (first row)\n")
        print(f"{'case':<{w}}  " + "  ".join(f"{k:<14}" for k in RESULTS) + "  kernels in force")
        for name, r in rows:
            cells = [(r[k] if r[k] != ref[k] or r is ref else "=") for k in RESULTS]
            k = r["kernels"]
            print(f"{name:<{w}}  " + "  ".join(f"{c:<14}" for c in cells)
                  + f"  aten={k['aten_cpu_capability']} onednn={k['onednn_max_cpu_isa'] or '-'}"
                    f" mkl_cbwr={k['mkl_cbwr'] or '-'}")
    if args.skip_timing:
        return

    print(f"\nCPU s per U-Net training step (batch 32 x 48 px, {args.timing_steps} steps per process, "
          f"{args.repeats} alternating fresh processes per setting; median, min-max)")
    settings = [("old code", {"old_code": True}), ("fix (pin + ml.layers)", {"pin": True}),
                ("old code, mkldnn off", {"old_code": True, "mkldnn": False})]
    for threads in (1, 2):
        times: dict[str, list] = {n: [] for n, _ in settings}
        walls: dict[str, list] = {n: [] for n, _ in settings}
        for _ in range(args.repeats):
            for n, s in settings:
                r = run_case({}, {**s, "threads": threads, "steps": args.timing_steps, "timing_only": True})
                times[n].append(r["cpu_s_per_step"])
                walls[n].append(r["wall_s_per_step"])
        base = sorted(times["old code"])[len(times["old code"]) // 2]
        for n, _ in settings:
            t = sorted(times[n])
            med, wmed = t[len(t) // 2], sorted(walls[n])[len(t) // 2]
            print(f"  {threads} thread(s), {n:<28} CPU {med:.3f} s ({t[0]:.3f}-{t[-1]:.3f}), ratio {med / base:.3f};"
                  f" wall {wmed:.3f} s")


if __name__ == "__main__":
    main()
