"""CPU training gives the same bits whatever the thread count, on the pinned (AVX2) kernel path (issue #18).

The training runs each go in a fresh process: the kernel variables and the thread count take effect only there.
benchmarks/training_determinism.py measures the factors (threads, ISA, MKL branch, mkldnn) on the default models.
"""

import json
import os
import subprocess
import sys

import pytest

from braggflow.ml.determinism import KERNEL_ENV, cpu_has_avx2

from conftest import ROOT

# A tiny U-Net (4 base channels) trained through train.fit on 16 tiles of 24 px per batch (batch >= 16: the
# convolutions run in oneDNN, whose backward pass of the 1x1 head depends on the thread count), then a whole-frame
# prediction (batch 1: the head runs in oneDNN or PyTorch's GEMM path depending on the thread count); and the
# energy / camera-length net, which has dropout; the cell U-Net (pixel unshuffle, 4 px cells) likewise.
TRAIN = r"""
import hashlib, json, os, sys
import braggflow.ml.pipeline  # pins the CPU kernels before torch is imported
import numpy as np
import torch
from braggflow.ml import fit as T
from braggflow.ml import models
from braggflow.ml.peak_finder import predict_probability
from braggflow.ml.determinism import kernel_settings

torch.set_num_threads(int(sys.argv[1]))
rng = np.random.default_rng(0)
counts = rng.poisson(1.0 + 40 * (rng.random((72, 72)) < 0.01)).astype(np.int32)
x = rng.gamma(1.0, 1.0, (48, 3, 24, 24)).astype(np.float32)
y = (rng.random((48, 1, 24, 24)) < 0.05).astype(np.float32)
weight = torch.tensor(4.0)

def loss_fn(logits, t):
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), t, pos_weight=weight)

def batches(epoch):
    for i in range(0, 32, 16):
        yield x[i:i + 16], y[i:i + 16]

def digest(tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()

with T.seeded(0):
    unet = models.PeakUNet(4)
    fit = T.fit(unet, batches, [(x[32:], y[32:])], loss_fn, epochs=2, learning_rate=3e-3, patience=5,
                device=torch.device("cpu"))
prob = predict_probability(unet, counts, torch.device("cpu"), block_px=32, margin_px=16)
with T.seeded(0):
    cell = models.PeakCellUNet(4, 4)
    T.fit(cell, batches, [(x[32:], y[32:])], loss_fn, epochs=2, learning_rate=3e-3, patience=5,
          device=torch.device("cpu"))
cell_prob = predict_probability(cell, counts, torch.device("cpu"), block_px=32)
prof = torch.from_numpy(rng.normal(0, 1, (16, 4, 32)).astype(np.float32))
cls = torch.from_numpy(rng.integers(0, 2, 16))
with T.seeded(1):
    ed = models.EnergyDistanceNet(4, 32, 2, 2, 8)
    ed.set_standardisation(prof)
    opt = torch.optim.Adam(ed.parameters(), lr=2e-3)
    for _ in range(3):
        pe, pd = ed(prof)
        loss = torch.nn.functional.cross_entropy(pe, cls) + torch.nn.functional.cross_entropy(pd, cls)
        opt.zero_grad()
        loss.backward()
        opt.step()
print(json.dumps({"unet": digest(unet.state_dict().values()), "prob": digest([torch.from_numpy(prob)]),
                  "cell_unet": digest(cell.state_dict().values()), "cell_prob": digest([torch.from_numpy(cell_prob)]),
                  "validation_loss": [h["validation_loss"] for h in fit.history],
                  "energy_distance": digest(ed.state_dict().values()), "kernels": kernel_settings(),
                  "env": {k: os.environ.get(k) for k in %r}}))
""" % (list(KERNEL_ENV),)


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_ENV and not k.startswith(("OMP_", "MKL_"))}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return {**env, **extra}


def _train(threads: int, **env) -> tuple[dict, str]:
    res = subprocess.run([sys.executable, "-c", TRAIN, str(threads)], env=_clean_env(**env), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1]), res.stdout


def test_training_and_prediction_are_bit_identical_with_1_2_and_4_threads():
    runs = {t: _train(t)[0] for t in (1, 2, 4)}
    for t, r in runs.items():
        assert r["kernels"]["torch_threads"] == t
        for key in ("unet", "prob", "cell_unet", "cell_prob", "validation_loss", "energy_distance"):
            assert r[key] == runs[1][key], (t, key)


@pytest.mark.skipif(not cpu_has_avx2(), reason="the kernels are pinned only on x86-64 CPUs with AVX2")
def test_pinned_kernels_are_in_force_in_the_training_process():
    result, stdout = _train(2, ONEDNN_VERBOSE="1")
    assert result["env"] == KERNEL_ENV
    k = result["kernels"]
    assert k["aten_cpu_capability"] == "AVX2" and k["pinned_before_torch"] and k["mkldnn"]
    assert k["onednn_max_cpu_isa"] == "AVX2" and k["mkl_cbwr"] == "AVX2"
    # oneDNN says which ISA it dispatches to, and the convolutions ran through it.
    assert "isa:Intel AVX2" in stdout and ",convolution," in stdout and "avx512" not in stdout.lower()


def test_pin_leaves_what_the_user_set():
    script = ("import os, json; from braggflow.ml.determinism import pin_cpu_kernels\n"
              "set_now = pin_cpu_kernels(avx2=True)\n"
              "import torch\n"
              "print(json.dumps([set_now, os.environ['ONEDNN_MAX_CPU_ISA'], pin_cpu_kernels()]))")
    res = subprocess.run([sys.executable, "-c", script], env=_clean_env(ONEDNN_MAX_CPU_ISA="AVX"),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    set_now, onednn, after_import = json.loads(res.stdout)
    assert "ONEDNN_MAX_CPU_ISA" not in set_now and set(set_now) == set(KERNEL_ENV) - {"ONEDNN_MAX_CPU_ISA"}
    assert onednn == "AVX" and after_import == {}


def test_cpu_has_avx2_reads_the_flags(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx fma avx2\n")
    assert cpu_has_avx2(str(f))
    f.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx\n")
    assert not cpu_has_avx2(str(f))
    assert not cpu_has_avx2(str(tmp_path / "absent"))


@pytest.mark.parametrize("kind", ["conv2d", "conv2d_1x1", "conv_transpose2d", "conv1d", "linear"])
def test_layers_give_the_bits_of_the_nn_layers_on_one_thread(kind):
    """braggflow.ml.layers at 3 threads == the nn layers at 1 thread (today's single-threaded results)."""
    import torch
    from torch import nn

    from braggflow.ml import layers as L

    shapes = {"conv2d": ((nn.Conv2d, L.Conv2d), (4, 8, 3), {"padding": 1}, (16, 4, 20, 20)),
              "conv2d_1x1": ((nn.Conv2d, L.Conv2d), (8, 1, 1), {}, (16, 8, 20, 20)),
              "conv_transpose2d": ((nn.ConvTranspose2d, L.ConvTranspose2d), (8, 4, 2), {"stride": 2},
                                   (16, 8, 10, 10)),
              "conv1d": ((nn.Conv1d, L.Conv1d), (8, 4, 5), {"padding": 2}, (16, 8, 64)),
              "linear": ((nn.Linear, L.Linear), (2048, 64), {}, (16, 2048))}
    (ref_cls, new_cls), args, kwargs, shape = shapes[kind]
    n = torch.get_num_threads()
    results = []
    try:
        for cls, threads in ((ref_cls, 1), (new_cls, 3)):
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            layer = cls(*args, **kwargs)
            x = torch.rand(shape, generator=torch.Generator().manual_seed(1), requires_grad=True)
            out = layer(x)
            (out * out).sum().backward()
            results.append([out.detach(), x.grad, layer.weight.grad, layer.bias.grad])
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def _vendor() -> str:
    try:
        return next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("vendor_id")), "")
    except OSError:
        return ""


@pytest.mark.skipif(_vendor() == "GenuineIntel", reason="on Intel CPUs nn.Dropout draws its masks with MKL")
def test_portable_dropout_draws_the_masks_of_torch_own_path():
    import torch

    from braggflow.ml.layers import Dropout

    x = torch.ones(64, 300)
    masks = []
    for layer in (torch.nn.Dropout(0.2), Dropout(0.2)):
        torch.manual_seed(5)
        masks.append(layer.train()(x))
    assert torch.equal(*masks) and 0.15 < float((masks[0] == 0).float().mean()) < 0.25
