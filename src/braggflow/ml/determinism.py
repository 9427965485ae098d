"""Bit-reproducible CPU training and prediction: the same weights and probabilities whatever the thread count, and
the same kernels on every x86-64 machine with AVX2 (Intel or AMD, with or without AVX-512 / AMX).

What changes the bits of a CPU run (``benchmarks/training_determinism.py`` measures each factor):

* The instruction set the kernels are chosen for. PyTorch's own kernels (ATen: weight initialisation, element-wise
  ops, reductions) dispatch on the CPU (AVX2 or AVX-512), oneDNN JIT-compiles the convolutions for the best ISA
  (AVX2, AVX-512, AMX) and MKL picks a GEMM code branch per ISA. :func:`pin_cpu_kernels` caps all three at AVX2
  through their environment variables (``KERNEL_ENV``). Each library reads its variable once, when it first
  computes, so the pin must come before ``import torch``. On an AVX2-only machine AVX2 is what PyTorch and
  oneDNN choose anyway: there the pin changes no bits of the U-Net or the energy / camera-length net (measured on
  an AMD EPYC). MKL_CBWR also turns on MKL's reproducibility mode (fixed cache sizes, deterministic reductions),
  which changes the last bits of the hit classifier's linear head there. On an AVX-512 machine the pin costs
  speed.
* The thread count. oneDNN splits the weight-gradient sum of a convolution over the minibatch across threads
  where the layer has few output channels for the thread count (the U-Net's 1-channel head with 2 threads, its
  16-channel layers with 4 or 8); MKL splits the sums of small GEMMs; PyTorch sends a single small image, or one
  through a 1x1 kernel, to a different backend depending on the thread count; a mean over a batch is summed in
  thread-sized chunks. The layers of ``layers`` and ``train.fit`` run exactly those ops on one intra-op thread
  (:func:`one_thread`), everything else on all threads, and so give the bits of a single-threaded run.
* The CPU vendor: ``nn.Dropout`` draws its masks with MKL's generator on Intel CPUs (``layers.Dropout`` does not).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any

# The kernel path of an AVX2 machine, for every machine that has AVX2 (and FMA, which all AVX2 x86-64 CPUs have).
KERNEL_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's dispatch (torch.backends.cpu.get_cpu_capability() reports it)
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (mkldnn) convolutions
    "MKL_CBWR": "AVX2",  # MKL GEMM branch (honoured on Intel CPUs; MKL runs its AUTO branch on AMD)
}

_state: dict[str, Any] = {"pinned": None}


def cpu_has_avx2(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this is an x86-64 CPU with AVX2 and FMA (from /proc/cpuinfo; False where that cannot be read)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return {"avx2", "fma"} <= flags
    except OSError:
        pass
    return False


def pin_cpu_kernels(environ: MutableMapping[str, str] | None = None, *, avx2: bool | None = None) -> dict[str, str]:
    """Cap PyTorch's, oneDNN's and MKL's kernels at AVX2 (``KERNEL_ENV``) for this process and its children.

    Call it before ``import torch``: afterwards the settings would not reach torch, so it leaves the environment
    as it is and returns {}. A variable that is already set (by the user, or by a parent process that pinned)
    is left alone. On CPUs without AVX2 (and on other architectures) it does nothing, because these values would
    be wrong there; runs on such machines give different bits anyway. Returns the variables it set."""
    env = os.environ if environ is None else environ
    if "torch" in sys.modules:
        if _state["pinned"] is None:
            _state["pinned"] = False
        return {}
    if not (cpu_has_avx2() if avx2 is None else avx2):
        _state["pinned"] = False
        return {}
    set_now = {k: v for k, v in KERNEL_ENV.items() if k not in env}
    env.update(set_now)
    _state["pinned"] = True
    return set_now


def kernel_settings() -> dict[str, Any]:
    """The kernel path in force in this process (for model cards and logs): PyTorch's dispatch, the oneDNN and
    MKL variables, the intra-op thread count, and whether :func:`pin_cpu_kernels` ran before torch was imported."""
    import torch

    return {"aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            **{k.lower(): os.environ.get(k, "") for k in KERNEL_ENV if k != "ATEN_CPU_CAPABILITY"},
            "mkldnn": bool(torch.backends.mkldnn.enabled and torch.backends.mkldnn.is_available()),
            "pinned_before_torch": bool(_state["pinned"]), "torch_threads": torch.get_num_threads()}


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the block on at most ``n`` intra-op threads and then restore the thread count (about 0.4 us a switch)."""
    import torch

    before = torch.get_num_threads()
    if n >= before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_thread():
    """Run the block on one intra-op thread: for the ops whose result depends on the thread count (docstring)."""
    return intra_op_threads(1)
