"""The shards, one layout family on an NXmx base (``formats.nxmx`` owns /entry): the simulated shard
(``results/simulated/{structure}/{dataset}/shard_{shard}.h5``, float32 expected photons), the overlay shard
(``results/overlays/...``, int32 counts DIALS reads, labels) and the matched training shard
(``results/matched/{experiment}/shard_{shard}.h5``, an experiment's panels stacked along slow).

  /entry/...                    NXmx: data (frames, slow, fast), detector, beam, per-frame wavelength
  /entry/braggflow_geometry     JSON: the dataset's geometry (matched: energy, camera length, stacking)
  /braggflow                    attrs: structure, dataset, provenance (JSON strings), kind, units, ...
  /braggflow/frames/<column>    the per-frame table (frame_index first; draws, overlay conditions, counts)
  /braggflow/truth/<column>     the per-reflection truth (TRUTH_COLUMNS; overlay and matched add ``visible``,
                                matched adds ``panel``, ``panel_x_px``, ``panel_y_px``)
  /braggflow/labels/peak_mask   overlay and matched: uint8 (frames, slow, fast), 1 = peak pixel
  /braggflow/water_photons      overlay and matched: expected water photons per pixel (before jet and fluence)
  /braggflow/panels/<key>       matched: the experiment's panels and each one's first stacked row
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import hdf5plugin
import numpy as np

from ..errors import InputError
from ..io import atomic_path
from .nxmx import DATA_PATH, GEOMETRY_PATH

if TYPE_CHECKING:  # pandas costs a simulation job ~0.5 CPU-s to import, and it reads no table
    import pandas as pd

GROUP = "braggflow"
FRAMES_PATH = GROUP + "/frames"
TRUTH_PATH = GROUP + "/truth"
LABEL_PATH = GROUP + "/labels/peak_mask"
WATER_PATH = GROUP + "/water_photons"
PANELS_PATH = GROUP + "/panels"
TRUTH_COLUMNS = ("frame_index", "h", "k", "l", "d_angstrom", "x_px", "y_px", "photons", "peak_fraction")
TABLE_COMPRESSION = {"compression": "gzip"}
# Simulated shards hold float photons read only by braggflow: Eiger's bitshuffle-LZ4 (hdf5plugin) keeps them small.
IMAGE_COMPRESSION = dict(hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))


# ---------------------------------------------------------------- writing (into an open h5py.File)

def write_attrs(f: h5py.File, attrs: Mapping[str, Any]) -> h5py.Group:
    """The /braggflow group's attributes (dicts and lists stored as sorted JSON strings)."""
    g = f.require_group(GROUP)
    for key, value in attrs.items():
        g.attrs[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
    return g


def write_table(f: h5py.File, path: str, columns: Mapping[str, Any], compression: dict | None = None) -> None:
    """One dataset per column under ``path`` (FRAMES_PATH or TRUTH_PATH), in the given order."""
    g = f.require_group(path)
    for name, values in columns.items():
        g.create_dataset(name, data=np.asarray(values), **(compression or {}))


@contextlib.contextmanager
def create_shard(path: str | Path) -> Iterator[h5py.File]:
    """A shard without NXmx metadata (the matched training shard), written atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        yield f


def create_images(f: h5py.File, shape: tuple[int, ...], dtype) -> h5py.Dataset:
    """The image stack at DATA_PATH, one frame per chunk (NXmx shards get it from ``nxmx.nxmx_writer``)."""
    return f.create_dataset(DATA_PATH, shape=shape, dtype=dtype, chunks=(1, *shape[1:]), compression="gzip",
                            compression_opts=4)


def create_labels(f: h5py.File, shape: tuple[int, ...]) -> h5py.Dataset:
    """The peak-label stack, one frame per chunk."""
    return f.require_group(GROUP + "/labels").create_dataset(
        "peak_mask", shape=shape, dtype=np.uint8, chunks=(1, *shape[1:]), compression="gzip", compression_opts=1)


def write_water(f: h5py.File, water: np.ndarray, shuffle: bool = False) -> None:
    f.create_dataset(WATER_PATH, data=water, compression="gzip", compression_opts=4, **({"shuffle": True} if shuffle
                                                                                          else {}))


def write_geometry(f: h5py.File, geometry: Mapping[str, Any]) -> None:
    """The geometry JSON (``formats.nxmx`` writes it for a dataset's Geometry; the matched shard writes its own)."""
    f.create_dataset(GEOMETRY_PATH, data=json.dumps(dict(geometry)))


def write_panels(f: h5py.File, detector, stacked_row_offset: np.ndarray) -> None:
    """The matched shard's panels (``braggflow.detector.Detector``) and each one's first stacked row."""
    g = f.require_group(PANELS_PATH)
    g["name"] = np.array(detector.name, dtype=h5py.string_dtype())
    g["stacked_row_offset"] = stacked_row_offset
    for key in ("origin_mm", "fast_axis", "slow_axis", "pixel_size_mm", "image_size"):
        g[key] = np.asarray(getattr(detector, key))


# ---------------------------------------------------------------- reading

def _open(path: str | Path, what: str = "shard"):
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(path, f"not a readable {what} ({exc})") from None


def read_geometry(path: str | Path) -> dict[str, Any]:
    with _open(path) as f:
        return json.loads(f[GEOMETRY_PATH][()])


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The /braggflow attributes as stored (JSON strings stay strings)."""
    with _open(path) as f:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f[GROUP].attrs.items()}


def n_frames(path: str | Path) -> int:
    with _open(path) as f:
        return int(f[DATA_PATH].shape[0])


def read_frame_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Every per-frame column, 1-D or not (draws: orientations, spectra)."""
    with _open(path) as f:
        return {k: v[()] for k, v in f[FRAMES_PATH].items()}


def read_frame_table(path: str | Path) -> pd.DataFrame:
    """The 1-D per-frame columns as a table."""
    import pandas as pd

    with _open(path) as f:
        g = f[FRAMES_PATH]
        return pd.DataFrame({k: g[k][()] for k in g if g[k].ndim == 1})


def read_truth(path: str | Path, columns: Sequence[str] = TRUTH_COLUMNS, frame_index: int | None = None
               ) -> pd.DataFrame:
    """The truth table (these columns; one frame's rows where ``frame_index`` is given)."""
    import pandas as pd

    return pd.DataFrame(read_truth_arrays(path, columns, frame_index))


def read_truth_arrays(path: str | Path, columns: Sequence[str] = TRUTH_COLUMNS, frame_index: int | None = None
                      ) -> dict[str, np.ndarray]:
    """The truth table as one array per column (no pandas: the per-shard jobs start faster without it)."""
    with _open(path) as f:
        g = f[TRUTH_PATH]
        sel = slice(None) if frame_index is None else g["frame_index"][()] == frame_index
        return {c: g[c][()][sel] for c in columns}


def read_images(path: str | Path, frames: slice | int | None = None) -> np.ndarray:
    """Image data: every frame, a slice of frames, or one frame."""
    with _open(path) as f:
        return f[DATA_PATH][frames if frames is not None else slice(None)]


def read_label(path: str | Path, frame: int) -> np.ndarray:
    with _open(path) as f:
        return f[LABEL_PATH][frame].astype(bool)


def read_water(path: str | Path) -> np.ndarray:
    with _open(path) as f:
        return f[WATER_PATH][()]


def index_training_shard(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """(geometry, the frame_index / hit / n_peaks columns, dataset) of an overlay or matched shard, checked
    against its image stack."""
    try:
        with h5py.File(path, "r") as f:
            geometry = json.loads(f[GEOMETRY_PATH][()])
            g = f[FRAMES_PATH]
            cols = {k: g[k][()] for k in ("frame_index", "hit", "n_peaks")}
            dataset = str(f[GROUP].attrs["dataset"])
            if f[DATA_PATH].shape[0] != len(cols["frame_index"]):
                raise InputError(path, f"{DATA_PATH} has {f[DATA_PATH].shape[0]} frames, the frame table "
                                       f"{len(cols['frame_index'])}")
    except (OSError, KeyError) as exc:
        raise InputError(path, f"not a readable overlay shard ({exc})") from None
    return geometry, cols, dataset
