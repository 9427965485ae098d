"""Trained networks as ONNX files, and ONNX Runtime as a second inference engine.

Every training rule writes its model twice: the torch state dict and an ONNX graph of the same network with the
same weights (opset ``OPSET``, torch's ``torch.export``-based exporter), named and hashed in the model card. The
graph has named inputs and outputs (``SIGNATURES``) and free batch and image sizes, so any ONNX consumer runs it:
ONNX Runtime here (``training.inference_engine: onnxruntime``), TensorFlow through onnx2tf, TensorRT, OpenVINO.
Each export is checked: ONNX Runtime must give the torch logits on a test input, or no file is written.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 18
EXPORT_TOLERANCE = 1e-4  # largest |logit| difference allowed between torch and ONNX Runtime on the check input
ENGINES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class Signature:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    shapes: dict[str, str]  # name -> axes, as the card states them


SIGNATURES = {
    "peak_finder": Signature(("network_input",), ("peak_logit",),
                             {"network_input": "(frames, 3, slow, fast), slow and fast multiples of 4 (unet) or "
                                               "2 cell_px (cell_unet): braggflow.ml.data.network_input",
                              "peak_logit": "(frames, 1, slow, fast); sigmoid gives the peak probability"}),
    "hit_classifier": Signature(("binned_frame",), ("hit_logit",),
                                {"binned_frame": "(frames, 2, slow / bin, fast / bin): braggflow.ml.data.binned_frame",
                                 "hit_logit": "(frames,); sigmoid gives the hit probability"}),
    "energy_distance": Signature(("polar_profile",), ("energy_logit", "camera_length_logit"),
                                 {"polar_profile": "(frames, sectors, radial_bins): braggflow.ml.data.polar_profile",
                                  "energy_logit": "(frames, energies); softmax over the card's energies_kev",
                                  "camera_length_logit": "(frames, camera lengths); softmax over camera_lengths_m"}),
}


def _example(model, kind: str, arguments: dict[str, Any]):
    """A check input and its dynamic axes. Batch 2 and sizes other than 1: torch.export fixes axes of size 1."""
    import torch
    from torch.export import Dim

    g = torch.Generator().manual_seed(0)
    n = Dim("frames", min=1, max=4096)
    if kind == "peak_finder":
        m = model.multiple_px  # the sizes the network takes: multiples of m
        x = torch.rand(2, 3, 8 * m, 12 * m, generator=g) * 2
        return x, ({0: n, 2: m * Dim("slow_blocks", min=1, max=4096), 3: m * Dim("fast_blocks", min=1, max=4096)},)
    if kind == "hit_classifier":
        x = torch.rand(2, 2, 40, 36, generator=g) * 2
        return x, ({0: n, 2: Dim("slow", min=4, max=8192), 3: Dim("fast", min=4, max=8192)},)
    if kind == "energy_distance":
        x = torch.rand(2, arguments["sectors"], arguments["radial_bins"], generator=g) * 5
        return x, ({0: n},)
    raise ValueError(f"unknown model kind {kind!r}; known: {sorted(SIGNATURES)}")


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx logs a warning per optional torchvision op it does not find, and its pytree use warns."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _outputs(result) -> list[np.ndarray]:
    return [t.detach().cpu().numpy() for t in (result if isinstance(result, tuple) else (result,))]


def export_onnx(model, kind: str, arguments: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Write ``model`` (eval mode, CPU) as ONNX to ``path`` atomically; returns the card's ``onnx`` entry. The
    bytes depend only on the weights and the software versions (the card's ``software``)."""
    import torch

    from ..io import atomic_path
    from ..io import file_sha256
    from .layers import plain_layers

    sig = SIGNATURES[kind]
    x, dynamic = _example(model, kind, arguments)
    model = model.cpu().eval()
    with torch.no_grad(), plain_layers(), _quiet_exporter():
        program = torch.onnx.export(model, (x,), dynamo=True, opset_version=OPSET, input_names=list(sig.inputs),
                                    output_names=list(sig.outputs), dynamic_shapes=dynamic, verbose=False)
        buf = io.BytesIO()
        program.save(buf)
        expected = _outputs(model(x))
    data = buf.getvalue()
    got = OnnxModel.from_bytes(data, threads=1).run(x.numpy())
    worst = max(float(np.abs(a - b).max()) for a, b in zip(expected, got))
    if not worst <= EXPORT_TOLERANCE:
        raise RuntimeError(f"{path}: ONNX Runtime gives logits {worst:.3g} away from torch's on the check input "
                           f"(allowed {EXPORT_TOLERANCE:g}); not written")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return {"path": Path(path).name, "sha256": file_sha256(path), "opset": OPSET,
            "format": f"ONNX opset {OPSET}; onnxruntime.InferenceSession(path).run(None, {{'{sig.inputs[0]}': x}})",
            "inputs": {k: sig.shapes[k] for k in sig.inputs}, "outputs": {k: sig.shapes[k] for k in sig.outputs},
            "export_check_max_abs_logit_difference": worst}


class OnnxModel:
    """An ONNX file through ONNX Runtime, called like the torch network on torch tensors (``predict`` uses either
    unchanged). CUDA where the torch device is CUDA and this onnxruntime build has it, else the CPU."""

    multiple_px, margin_px, block_px = 1, 0, 0  # a peak finder's: its torch network's (from_bytes' like)

    def __init__(self, session):
        self.session = session
        self.input = session.get_inputs()[0].name
        self.provider = session.get_providers()[0]

    @classmethod
    def from_bytes(cls, model: bytes | str | Path, threads: int = 1, device: str = "cpu",
                   like=None) -> "OnnxModel":
        """``like``: the torch peak finder whose block layout (multiple, margin, block) the whole-frame
        prediction keeps."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        source = model if isinstance(model, bytes) else str(model)
        out = cls(ort.InferenceSession(source, so, providers=providers))
        if like is not None:
            out.multiple_px, out.margin_px, out.block_px = like.multiple_px, like.margin_px, like.block_px
        return out

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input: np.ascontiguousarray(x, np.float32)})

    def __call__(self, x):
        import torch

        out = [torch.from_numpy(o).to(x.device) for o in self.run(x.detach().cpu().numpy())]
        return out[0] if len(out) == 1 else tuple(out)

    def eval(self) -> "OnnxModel":
        return self

    def to(self, device) -> "OnnxModel":
        return self


def load_onnx(card: dict[str, Any], path: str | Path, threads: int, device: str = "cpu") -> OnnxModel:
    """The card's ONNX file, its hash checked against the card's."""
    from ..io import file_sha256

    entry = card.get("onnx")
    if entry is None:
        raise ValueError(f"{path}: the model card of {card['model_id']} lists no ONNX file (trained before ONNX "
                         "export; retrain, or set training.inference_engine: torch)")
    if file_sha256(path) != entry["sha256"]:
        raise ValueError(f"{path}: sha256 {file_sha256(path)[:12]} is not the model card's {entry['sha256'][:12]}")
    from .models import build_model

    like = build_model("peak_finder", card["arguments"]) if card["model"] == "peak_finder" else None
    return OnnxModel.from_bytes(path, threads=threads, device=device, like=like)
