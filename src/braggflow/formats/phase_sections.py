"""Central sections of the phase evaluation's density maps (``evaluation/sections.h5``): one dataset per map kind
(``truth``, then each model's name), each (samples, grid, grid): the z = 0 section of the map made from a test
sample's true amplitudes with the true phases or with that model's; ``samples`` the samples' indices in the
dataset; attributes ``crystals``, ``splits`` (per sample) and ``models``."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError
from ..io import atomic_path


def write_sections(path: str | Path, sections: dict[str, np.ndarray], crystals: list[str], splits: list[str]) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for k, val in sections.items():
            f.create_dataset(k, data=val)
        f.attrs["crystals"] = crystals
        f.attrs["splits"] = splits
        f.attrs["models"] = [k for k in sections if k not in ("samples", "truth")]
        f.attrs["meaning"] = "z = 0 sections of maps from the true amplitudes with the true / each model's phases"


def read_sections(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    try:
        with h5py.File(path, "r") as f:
            data = {k: f[k][()] for k in f}
            attrs = {k: [str(x) for x in f.attrs[k]] for k in ("crystals", "splits", "models")}
    except (OSError, KeyError) as exc:
        raise InputError(path, f"not a braggflow phase-section file ({exc})") from None
    return data, attrs
