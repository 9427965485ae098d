"""Layers whose CPU results do not depend on the thread count or the CPU vendor.

Drop-in subclasses of ``nn.Conv1d``, ``nn.Conv2d``, ``nn.ConvTranspose2d``, ``nn.Linear`` and ``nn.Dropout``, with
the same parameters and state-dict keys. On other devices, and within ``plain_layers()`` (the ONNX export), they
are the ``nn`` layers. On CPU:

* Convolutions give the bits of a single-threaded run in the forward pass and in both gradients
  (``as_on_one_thread``). oneDNN splits the weight-gradient sum over the minibatch across threads where a layer
  has few output channels for the thread count (the U-Net's 1-channel head with 2 threads, its 16-channel layers
  with 4 or 8). A single small image goes to PyTorch's im2col + MKL GEMM code, whose sums MKL splits across
  threads, and a single image through a 1x1 kernel goes to oneDNN or to that code depending on the thread count.
  Each such op runs on as many threads as give the bits of one (often half of them, or one); all others (most of
  the work) on all threads. The same ops and backends as the ``nn`` layer on one thread, so the same bits as
  today's single-threaded runs.
* Linear layers run forward and backward on one thread: MKL splits the sums of small GEMMs across threads.
* Dropout draws its masks from torch's generator on every CPU. ``nn.Dropout`` draws them with MKL's generator on
  Intel CPUs and with torch's own elsewhere, so the same seed gives other masks on Intel machines.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .determinism import intra_op_threads, one_thread


_THREADS: dict[tuple, int] = {}  # (op, thread count, shapes) -> threads that give the bits of one thread
_PLAIN = [False]  # set by plain_layers(): every layer is its nn layer (for export; the math is the same)
_PROBE = torch.Generator().manual_seed(0x5EED)  # probe inputs; never the global generator


def _same(a, b) -> bool:
    if isinstance(a, (tuple, list)):
        return all(_same(u, v) for u, v in zip(a, b))
    return a is None or torch.equal(a, b)


@contextlib.contextmanager
def plain_layers():
    """Within: every layer here runs as its ``nn`` parent (standard ops only, no thread probing), as an exporter
    tracing the graph (ONNX) needs; the results are the same up to the summation order of the threads."""
    previous, _PLAIN[0] = _PLAIN[0], True
    try:
        yield
    finally:
        _PLAIN[0] = previous


def _plain(x: torch.Tensor) -> bool:
    return _PLAIN[0] or x.device.type != "cpu"


def as_on_one_thread(op: str, fn, *tensors):
    """``fn(*tensors)`` with the bits it has on one intra-op thread, on as many threads as give those bits: all of
    them, or half, a quarter ... or one. Decided once per (op, shapes, strides, thread count, mkldnn on/off) by
    running ``fn`` on random tensors of the same shapes: where the threads split a sum, the bits differ."""
    n = torch.get_num_threads()
    if n == 1:
        return fn(*tensors)
    key = (op, n, torch.backends.mkldnn.enabled,
           *(None if t is None else (tuple(t.shape), t.stride(), t.dtype) for t in tensors))
    threads = _THREADS.get(key)
    if threads is None:
        probe = [None if t is None else torch.empty_like(t).normal_(generator=_PROBE) for t in tensors]
        with one_thread():
            reference = fn(*probe)
        threads = 1
        for k in [n >> i for i in range(n.bit_length()) if n >> i > 1]:
            with intra_op_threads(k):
                if _same(reference, fn(*probe)):
                    threads = k
                    break
        _THREADS[key] = threads
    with intra_op_threads(threads):
        return fn(*tensors)


class _Convolution(torch.autograd.Function):
    """``aten.convolution`` whose forward, input gradient and weight / bias gradients each give the bits of a
    single-threaded run (``as_on_one_thread``)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
        ctx.save_for_backward(x, weight)
        ctx.params = params = (stride, padding, dilation, transposed, output_padding, groups)
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        return as_on_one_thread(("convolution", str(params)),
                                lambda x, w, b: torch.ops.aten.convolution(x, w, b, *params), x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        params, bias_sizes = ctx.params, ctx.bias_sizes

        def backward(mask):
            return lambda g, x, w: torch.ops.aten.convolution_backward(g, x, w, bias_sizes, *params, mask)

        if need_x:
            mask = [True, False, False]
            grad_x = as_on_one_thread(("convolution_backward", str(params), str(mask)), backward(mask), grad, x,
                                      weight)[0]
        if need_w or need_b:
            mask = [False, need_w, need_b and bias_sizes is not None]
            _, grad_w, grad_b = as_on_one_thread(("convolution_backward", str(params), str(mask)), backward(mask),
                                                 grad, x, weight)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


def _convolution(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    return _Convolution.apply(x, weight, bias, list(stride), list(padding), list(dilation), transposed,
                              list(output_padding), groups)


class Conv1d(nn.Conv1d):
    def _conv_forward(self, x, weight, bias):
        if _plain(x) or self.padding_mode != "zeros" or isinstance(self.padding, str) or x.dim() != 3:
            return super()._conv_forward(x, weight, bias)
        return _convolution(x, weight, bias, self.stride, self.padding, self.dilation, False, [0], self.groups)


class Conv2d(nn.Conv2d):
    def _conv_forward(self, x, weight, bias):
        if _plain(x) or self.padding_mode != "zeros" or isinstance(self.padding, str) or x.dim() != 4:
            return super()._conv_forward(x, weight, bias)
        return _convolution(x, weight, bias, self.stride, self.padding, self.dilation, False, [0, 0], self.groups)


class ConvTranspose2d(nn.ConvTranspose2d):
    def forward(self, x, output_size=None):
        if _plain(x) or x.dim() != 4:
            return super().forward(x, output_size)
        output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, 2,
                                              self.dilation)
        return _convolution(x, self.weight, self.bias, self.stride, self.padding, self.dilation, True,
                            output_padding, self.groups)


class _OnOneThread(torch.autograd.Function):
    """``fn(*tensors)`` with its forward and backward on one intra-op thread: the backward replays PyTorch's own
    autograd graph of ``fn`` there, so the bits are those of a single-threaded run."""

    @staticmethod
    def forward(ctx, fn, *tensors):
        with torch.enable_grad(), one_thread():
            leaves = [t.detach().requires_grad_(t.requires_grad) for t in tensors]
            out = fn(*leaves)
        ctx.graph = (out, leaves)
        return out.detach()

    @staticmethod
    def backward(ctx, grad):
        out, leaves = ctx.graph
        wanted = [t for t in leaves if t.requires_grad]
        with one_thread():
            grads = iter(torch.autograd.grad(out, wanted, grad, allow_unused=True))
        del ctx.graph
        return (None, *(next(grads) if t.requires_grad else None for t in leaves))


class Linear(nn.Linear):
    """MKL splits a GEMM's sum across threads when the matrices are small (the heads; the 2048-input layer of the
    energy / camera-length net with 8 threads): forward and backward run on one thread, which costs little here."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _plain(x):
            return super().forward(x)
        params = [self.weight] + ([] if self.bias is None else [self.bias])
        if not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params))):
            with one_thread():
                return super().forward(x)
        return _OnOneThread.apply(lambda *t: nn.functional.linear(*t), x, *params)


class Dropout(nn.Dropout):
    """Masks from torch's generator, drawn as PyTorch's own CPU path draws them (one float64 uniform per element,
    kept if below 1 - p), so the bits are those of ``nn.Dropout`` on a non-Intel CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or _plain(x) or self.inplace:
            return super().forward(x)
        keep = torch.rand(x.shape, dtype=torch.float64) < (1 - self.p)
        noise = keep.to(x.dtype)
        noise.div_(1 - self.p)
        return x * noise
