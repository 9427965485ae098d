"""The normalized frames file of an experiment (one module owns its layout).

The frames file (``results/experiments/{experiment}/frames.h5``) is what every reader of experimental data
writes (workflow/scripts/dxtbx_import.py for any format DIALS reads; ``experiments.import_hdf5`` for HDF5 with
a CrystFEL .geom or NXmx metadata), so predictions and the evaluator see one layout:

  /data                     float32 (frames, panels, slow, fast), photons (counts / adu_per_photon, >= 0);
                            untrusted pixels are exactly -1
  /panels/name              (P,) str; origin_mm, fast_axis, slow_axis (P, 3); pixel_size_mm (P, 2) (fast, slow);
                            image_size (P, 2) (fast, slow)
  /frames/wavelength_angstrom (n,); beam_direction (n, 3) (unit s0, toward the detector);
  /frames/source_file (n,) str; source_index (n,) frame within its source file
  attrs: adu_per_photon, format_class, n_panels, layout (dxtbx_import.py adds untrusted_border_px)

The panels are a ``braggflow.detector.Detector`` (pixel coordinates and lab frame as stated there). NumPy, h5py and
the standard library only: DIALS' Python imports this module (dxtbx_import.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..detector import Detector
from ..errors import InputError
from ..io import atomic_path

LAYOUT = "frames, panels, slow, fast"


@dataclass(frozen=True)
class FramesInfo:
    path: str
    n_frames: int
    shape: tuple[int, int]  # (slow, fast) of every panel
    panels: Detector
    wavelength_angstrom: np.ndarray
    beam_direction: np.ndarray
    source_file: tuple[str, ...]
    source_index: np.ndarray
    adu_per_photon: float
    format_class: str

    @property
    def n_panels(self) -> int:
        return len(self.panels)


def _strings(ds) -> tuple[str, ...]:
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in ds[()])


def read_frames_info(path: str | Path) -> FramesInfo:
    try:
        with h5py.File(path, "r") as f:
            data = f["data"]
            if data.ndim != 4:
                raise InputError(path, f"/data has shape {data.shape}; expected ({LAYOUT})")
            g = f["panels"]
            panels = Detector.from_arrays(_strings(g["name"]), g["origin_mm"][()], g["fast_axis"][()], g["slow_axis"][()],
                            g["pixel_size_mm"][()], g["image_size"][()])
            fr = f["frames"]
            return FramesInfo(str(path), int(data.shape[0]), (int(data.shape[2]), int(data.shape[3])), panels,
                              fr["wavelength_angstrom"][()], fr["beam_direction"][()], _strings(fr["source_file"]),
                              fr["source_index"][()], float(f.attrs["adu_per_photon"]),
                              str(f.attrs.get("format_class", "")))
    except (OSError, KeyError) as exc:
        raise InputError(path, f"not a braggflow frames file ({exc})") from None


def frame_count(path: str | Path) -> int:
    """Frames in a frames file (without reading its geometry: DIALS-side scripts ask this)."""
    try:
        with h5py.File(path, "r") as f:
            return int(f["data"].shape[0])
    except (OSError, KeyError) as exc:
        raise InputError(path, f"not a braggflow frames file ({exc})") from None


def read_frame_photons(path: str | Path, frame: int) -> np.ndarray:
    """(panels, slow, fast) float32 photons of one frame; -1 marks untrusted pixels."""
    with h5py.File(path, "r") as f:
        return f["data"][frame]


def read_untrusted_pixels(path: str | Path) -> np.ndarray:
    """(panels, slow, fast) bool: pixels marked untrusted (-1) in every frame (read one frame at a time)."""
    with h5py.File(path, "r") as f:
        data = f["data"]
        out = np.ones(data.shape[1:], bool)
        for i in range(data.shape[0]):
            out &= data[i] < 0
    return out


class FrameColumns:
    """The per-frame columns a frames writer fills while it writes the frames."""

    def __init__(self, n: int):
        self.wavelength_angstrom = np.zeros(n, np.float64)
        self.beam_direction = np.zeros((n, 3), np.float64)
        self.source_file = [""] * n
        self.source_index = np.zeros(n, np.int64)

    def set(self, k: int, wavelength_angstrom: float, beam_direction, source_file: str, source_index: int) -> None:
        self.wavelength_angstrom[k] = wavelength_angstrom
        self.beam_direction[k] = beam_direction
        self.source_file[k] = str(source_file)
        self.source_index[k] = source_index


@contextlib.contextmanager
def frames_writer(path: str | Path, n_frames: int, panels: Detector, adu_per_photon: float, format_class: str,
                  untrusted_border_px: int | None = None) -> Iterator[tuple[h5py.Dataset, FrameColumns]]:
    """Open a frames file for frame-by-frame writing: yields (the /data dataset, the per-frame columns to fill);
    the columns are written on success, and the file is atomic (renamed on success, removed on failure)."""
    shape = (int(panels.image_size[0, 1]), int(panels.image_size[0, 0]))
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["adu_per_photon"] = float(adu_per_photon)
        f.attrs["format_class"] = format_class
        f.attrs["n_panels"] = len(panels)
        f.attrs["layout"] = LAYOUT
        if untrusted_border_px is not None:
            f.attrs["untrusted_border_px"] = int(untrusted_border_px)
        data = f.create_dataset("data", shape=(n_frames, len(panels), *shape), dtype=np.float32,
                                chunks=(1, len(panels), *shape), compression="gzip", compression_opts=4)
        g = f.create_group("panels")
        g["name"] = np.array(panels.name, dtype=h5py.string_dtype())
        g["origin_mm"], g["fast_axis"], g["slow_axis"] = panels.origin_mm, panels.fast_axis, panels.slow_axis
        g["pixel_size_mm"], g["image_size"] = panels.pixel_size_mm, panels.image_size.astype(np.int64)
        columns = FrameColumns(n_frames)
        yield data, columns
        fr = f.create_group("frames")
        fr["wavelength_angstrom"] = columns.wavelength_angstrom
        fr["beam_direction"] = columns.beam_direction
        fr["source_file"] = np.array(columns.source_file, dtype=h5py.string_dtype())
        fr["source_index"] = columns.source_index


def write_frames_file(path: str | Path, frames: np.ndarray | list, panels: Detector, wavelength_angstrom,
                      beam_direction, source_file, source_index, adu_per_photon: float, format_class: str) -> None:
    """The normalized frames file (atomic). ``frames``: (n, P, slow, fast) photons, -1 untrusted."""
    frames = np.asarray(frames, np.float32)
    n = frames.shape[0]
    wavelengths = np.broadcast_to(np.asarray(wavelength_angstrom, float), (n,))
    directions = np.broadcast_to(np.asarray(beam_direction, float), (n, 3))
    with frames_writer(path, n, panels, adu_per_photon, format_class) as (data, columns):
        for k in range(n):
            data[k] = frames[k]
            columns.set(k, wavelengths[k], directions[k], source_file[k], source_index[k])
