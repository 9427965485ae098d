"""Model cards: one JSON per trained model, next to its weights."""

from __future__ import annotations

import json
import os
import platform
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io import write_text_atomic
from ..io import file_sha256

CARD_FIELDS = ("model_id", "model", "architecture", "arguments", "datasets", "config_hash", "input_data",
               "weights", "onnx", "split", "metrics", "training", "hardware", "software")


def hardware(device: str) -> dict[str, Any]:
    import torch

    info = {"device": device, "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def software() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("braggflow", "torch", "numpy", "scikit-learn", "h5py", "onnx", "onnxscript", "onnxruntime"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def model_card(*, model: str, architecture: str, arguments: dict, datasets: Sequence[str], config_hash: str,
               inputs: Sequence[str | Path], weights_path: str | Path, split: dict[str, list[str]],
               metrics: dict, training: dict, device: str, onnx: dict[str, Any]) -> dict[str, Any]:
    """``onnx``: the ONNX file's entry (``onnx_models.export_onnx``)."""
    return {"model_id": str(uuid.uuid4()), "model": model, "architecture": architecture, "arguments": arguments,
            "datasets": list(datasets), "config_hash": config_hash,
            "input_data": {Path(p).as_posix(): file_sha256(p) for p in inputs},
            "weights": {"path": Path(weights_path).name, "sha256": file_sha256(weights_path),
                        "format": "torch state_dict; torch.load(path, weights_only=True)"},
            "onnx": onnx,
            "split": split, "metrics": metrics, "training": training, "hardware": hardware(device),
            "software": software()}


def write_card(path: str | Path, card: dict[str, Any]) -> None:
    missing = [k for k in CARD_FIELDS if k not in card]
    if missing:
        raise ValueError(f"model card for {path} lacks {missing}")
    write_text_atomic(path, json.dumps(card, indent=1, sort_keys=False, allow_nan=True) + "\n")


def read_card(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
