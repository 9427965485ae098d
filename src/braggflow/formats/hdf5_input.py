"""A user's HDF5 frames (``experiments.<name>.reader: hdf5``): where the frames are in the file, their geometry
(a CrystFEL .geom, ``formats.crystfel``, or the file's own NXmx metadata, ``formats.nxmx``), and the raw counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError
from ..geometry import Geometry
from .crystfel import read_crystfel_geometry
from .nxmx import MASK_PATH, read_nxmx_geometry

DEFAULT_DATA_PATHS = ("/entry/data/data", "/entry_1/data_1/data")


@dataclass(frozen=True)
class Hdf5Layout:
    dataset_path: str
    n_frames: int
    shape: tuple[int, int]  # (slow, fast)
    geometry: Geometry
    adu_per_photon: float | None  # from the .geom, where it says
    wavelengths_angstrom: np.ndarray | None = None  # per frame, where the .geom reads them from the file


def hdf5_layout(path: str | Path, dataset_path: str | None, geom_path: str | Path | None) -> Hdf5Layout:
    """Where the frames are and the geometry, checked: InputError naming the file for a missing dataset, a rank
    other than 2 or 3, or no geometry (neither a .geom nor NXmx detector metadata)."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(path, f"not an HDF5 file ({exc})") from None
    with f:
        if dataset_path is None:
            found = [p for p in DEFAULT_DATA_PATHS if p in f]
            if not found:
                raise InputError(path, f"no frames dataset at {' or '.join(DEFAULT_DATA_PATHS)}; set "
                                       "experiments.<name>.dataset_path")
            dataset_path = found[0]
        if dataset_path not in f or not isinstance(f[dataset_path], h5py.Dataset):
            raise InputError(path, f"no dataset {dataset_path!r} (config key experiments.<name>.dataset_path)")
        ds = f[dataset_path]
        if ds.ndim not in (2, 3):
            raise InputError(path, f"dataset {dataset_path!r} has rank {ds.ndim} (shape {ds.shape}); expected "
                                   "(frames, slow, fast) or (slow, fast)")
        shape = tuple(int(v) for v in ds.shape[-2:])
        n = 1 if ds.ndim == 2 else int(ds.shape[0])
        wavelengths = None
        if geom_path is not None:
            geometry, adu, wavelengths = read_crystfel_geometry(geom_path, shape, f, n)
        else:
            geometry, adu = read_nxmx_geometry(f, path, shape), None
    return Hdf5Layout(dataset_path, n, shape, geometry, adu, wavelengths)


def read_raw_frames(path: str | Path, layout: Hdf5Layout) -> tuple[np.ndarray, np.ndarray]:
    """(counts float32 (frames, slow, fast), untrusted (slow, fast) bool from an NXmx pixel_mask where present)."""
    with h5py.File(path, "r") as f:
        ds = f[layout.dataset_path]
        raw = ds[()] if ds.ndim == 3 else ds[()][None]
        mask = f[MASK_PATH][()] != 0 if MASK_PATH in f else np.zeros(layout.shape, bool)
    return raw.astype(np.float32), mask
