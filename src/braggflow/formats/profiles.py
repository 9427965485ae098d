"""The energy / camera-length profiles (``results/models/{structure}/energy_distance_profiles.h5``): what both
energy / camera-length models train and are scored on, a few kB per frame.

  /{split}/polar      (frames, sectors, radial_bins) polar profiles (the CNN's input)
  /{split}/profile    (frames, radial_bins) azimuthal averages (the logistic baseline's input)
  /{split}/energy, /{split}/distance   (frames,) class indices
  /{split}/frame      (frames,) str "dataset/frame_index"
  attrs               energies_kev, camera_lengths_m (the classes), sources (JSON list of the shards)
for split in train, validation, test.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError
from ..io import atomic_path

ARRAYS = ("polar", "profile", "energy", "distance")


@contextlib.contextmanager
def profiles_writer(path: str | Path, *, energies_kev: Sequence[float], camera_lengths_m: Sequence[float],
                    sources: Sequence[str | Path]):
    """Open a profiles file (atomic); yields ``write(split, arrays, frames)``."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        def write(split: str, arrays: dict[str, np.ndarray], frames: Sequence[str]) -> None:
            g = f.create_group(split)
            for k in ARRAYS:
                g[k] = arrays[k]
            g["frame"] = np.array(list(frames), dtype=h5py.string_dtype())

        yield write
        f.attrs["energies_kev"], f.attrs["camera_lengths_m"] = list(energies_kev), list(camera_lengths_m)
        f.attrs["sources"] = json.dumps([Path(p).as_posix() for p in sources])


def read_profiles(path: str | Path, splits: Sequence[str]
                  ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, list[str]], dict[str, list[float]]]:
    """(arrays per split, frame names per split, classes)."""
    try:
        with h5py.File(path, "r") as f:
            arrays = {s: {k: f[s][k][()] for k in ARRAYS} for s in splits}
            frames = {s: [v.decode() for v in f[s]["frame"][()]] for s in splits}
            classes = {"energies_kev": [float(v) for v in f.attrs["energies_kev"]],
                       "camera_lengths_m": [float(v) for v in f.attrs["camera_lengths_m"]]}
    except (OSError, KeyError) as exc:
        raise InputError(path, f"not a braggflow profiles file ({exc})") from None
    return arrays, frames, classes



