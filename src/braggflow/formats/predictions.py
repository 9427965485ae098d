"""Prediction files (``results/predictions/{experiment}/{model}/{experiment}_*_pred.h5``): one per (model, input).

  /pred          what the model predicts, as probabilities: peak finder float16 (frames, slow, fast) for a
                 single-panel input, (frames, panels, slow, fast) for several panels, one frame per chunk;
                 hit classifier float32 (frames,); energy / camera length float32 (frames, classes), the joint
                 (energy x camera length) probabilities named like the matrix datasets
  /classes       (C,) str: what the last axis or the values mean
  /model_id      the model card's uuid4; /panel_names (P,) str
  /energy_probability, /camera_length_probability   energy / camera-length model only: the two marginals
  /ood_score, /out_of_distribution   (frames,) each frame's score against the model's training envelope
                 (``ml.ood``) and whether it lies outside (the model extrapolates there)
  attrs          model (kind), model_datasets, input, layout, seconds_per_frame, and per kind: threshold and
                 min_spot_px (peak finder: its spot extraction), energies_kev and camera_lengths_m (classes)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import InputError
from ..io import atomic_path


EXTRAS = ("energy_probability", "camera_length_probability", "ood_score", "out_of_distribution", "skipped_blank")


def _text(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def write_prediction(path: str | Path, pred: np.ndarray, *, classes: Sequence[str], model_id: str,
                     panel_names: Sequence[str], attrs: dict[str, Any],
                     extras: dict[str, np.ndarray] | None = None) -> None:
    """One prediction file, atomically; ``extras``: the marginals, the out-of-distribution scores and flags."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        chunks = (1, *pred.shape[1:]) if pred.ndim > 2 else None
        f.create_dataset("pred", data=pred, chunks=chunks, compression="gzip" if chunks else None)
        f["classes"] = np.array(list(classes), dtype=h5py.string_dtype())
        f["model_id"] = model_id
        f["panel_names"] = np.array(list(panel_names), dtype=h5py.string_dtype())
        for k, v in (extras or {}).items():
            if k not in EXTRAS:
                raise ValueError(f"{path}: {k!r} is not a dataset of a prediction file ({EXTRAS})")
            f[k] = v
        for k, v in attrs.items():
            f.attrs[k] = v


def read_prediction(path: str | Path) -> dict[str, Any]:
    """Everything of a prediction file: pred, classes, model_id, panel_names, the marginals where present and
    every attribute (arrays as lists)."""
    try:
        with h5py.File(path, "r") as f:
            mid = f["model_id"][()]
            out = {"pred": f["pred"][()], "classes": _text(f["classes"][()]),
                   "model_id": mid.decode() if isinstance(mid, bytes) else mid,
                   "panel_names": _text(f["panel_names"][()]),
                   **{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}}
            for k in EXTRAS:
                if k in f:
                    out[k] = f[k][()]
    except (OSError, KeyError) as exc:
        raise InputError(path, f"not a braggflow prediction file ({exc})") from None
    return out


def read_out_of_distribution(path: str | Path) -> np.ndarray | None:
    """(frames,) bool: where the model extrapolates; None for a prediction made without a training envelope."""
    try:
        with h5py.File(path, "r") as f:
            return f["out_of_distribution"][()].astype(bool) if "out_of_distribution" in f else None
    except OSError as exc:
        raise InputError(path, f"not a braggflow prediction file ({exc})") from None


@contextlib.contextmanager
def peak_probabilities(path: str | Path) -> Iterator[tuple[Any, float, int]]:
    """A peak finder's prediction file open for reading frame by frame: (frame -> (panels, slow, fast)
    probabilities, threshold, min_spot_px)."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(path, f"not a braggflow prediction file ({exc})") from None
    with f:
        pred = f["pred"]
        multi = f.attrs["layout"] == "frames, panels, slow, fast"
        yield ((lambda i: pred[i] if multi else pred[i][None]), float(f.attrs["threshold"]),
               int(f.attrs["min_spot_px"]))
