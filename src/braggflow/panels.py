"""Multi-panel detector geometry in the dxtbx lab frame, and the normalized frames file of an experiment.

The frames file (``results/experiments/{experiment}/frames.h5``) is what every reader of experimental data
writes (workflow/scripts/dxtbx_import.py for any format DIALS reads; ``experiments.import_hdf5`` for HDF5 with
a CrystFEL .geom or NXmx metadata), so predictions and the evaluator see one layout:

  /data                     float32 (frames, panels, slow, fast), photons (counts / adu_per_photon, >= 0);
                            untrusted pixels are exactly -1
  /panels/name              (P,) str; origin_mm, fast_axis, slow_axis (P, 3); pixel_size_mm (P, 2) (fast, slow);
                            image_size (P, 2) (fast, slow)
  /frames/wavelength_angstrom (n,); beam_direction (n, 3) (unit s0, toward the detector);
  /frames/source_file (n,) str; source_index (n,) frame within its source file
  attrs: adu_per_photon, format_class, n_panels, layout

Pixel coordinates are DIALS continuous coordinates (x = fast, y = slow; pixel i spans [i, i + 1)); a pixel's
lab position is origin + x * pixel_fast * fast_axis + y * pixel_slow * slow_axis (mm).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .errors import InputError
from .io import atomic_path

LAYOUT = "frames, panels, slow, fast"


@dataclass(frozen=True)
class Panels:
    name: tuple[str, ...]
    origin_mm: np.ndarray  # (P, 3)
    fast_axis: np.ndarray  # (P, 3) unit
    slow_axis: np.ndarray  # (P, 3) unit
    pixel_size_mm: np.ndarray  # (P, 2) (fast, slow)
    image_size: np.ndarray  # (P, 2) (fast, slow)

    def __len__(self) -> int:
        return len(self.name)

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.fast_axis, self.slow_axis)
        return n / np.linalg.norm(n, axis=1, keepdims=True)

    def to_lab(self, panel: np.ndarray, xy_px: np.ndarray) -> np.ndarray:
        """(n, 3) lab positions (mm) of (n, 2) pixel coordinates on the given panels."""
        p, xy = np.asarray(panel, int), np.asarray(xy_px, float).reshape(-1, 2)
        return (self.origin_mm[p] + (xy[:, :1] * self.pixel_size_mm[p, :1]) * self.fast_axis[p]
                + (xy[:, 1:] * self.pixel_size_mm[p, 1:]) * self.slow_axis[p])

    def intersect(self, panel: np.ndarray, rays: np.ndarray, shift_mm: np.ndarray | None = None) -> np.ndarray:
        """(n, 2) pixel coordinates where rays from the sample (n, 3) meet their panel's plane; the panels moved
        by ``shift_mm`` (3,) first (NaN where the ray runs away from the plane)."""
        p, d = np.asarray(panel, int), np.asarray(rays, float).reshape(-1, 3)
        origin = self.origin_mm[p] + (0.0 if shift_mm is None else np.asarray(shift_mm, float))
        n = self.normal[p]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.sum(origin * n, axis=1) / np.sum(d * n, axis=1)
        t = np.where(t > 0, t, np.nan)
        rel = d * t[:, None] - origin
        x = np.sum(rel * self.fast_axis[p], axis=1) / self.pixel_size_mm[p, 0]
        y = np.sum(rel * self.slow_axis[p], axis=1) / self.pixel_size_mm[p, 1]
        return np.stack([x, y], axis=1)

    def distance_mm(self, beam_direction: np.ndarray) -> float:
        """Sample-to-detector distance along the beam: mean over panels of where the beam axis meets each plane."""
        b = np.asarray(beam_direction, float)
        n = self.normal
        return float(np.mean(np.sum(self.origin_mm * n, axis=1) / (n @ b)))

    def beam_center_px(self, beam_direction: np.ndarray, panel: int = 0) -> tuple[float, float]:
        """(fast, slow) px where the direct beam meets ``panel``'s plane (outside the panel for a CSPAD)."""
        x, y = self.intersect(np.array([panel]), np.asarray(beam_direction, float)[None])[0]
        return float(x), float(y)


@dataclass(frozen=True)
class FramesInfo:
    path: str
    n_frames: int
    shape: tuple[int, int]  # (slow, fast) of every panel
    panels: Panels
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
            panels = Panels(_strings(g["name"]), g["origin_mm"][()], g["fast_axis"][()], g["slow_axis"][()],
                            g["pixel_size_mm"][()], g["image_size"][()])
            fr = f["frames"]
            return FramesInfo(str(path), int(data.shape[0]), (int(data.shape[2]), int(data.shape[3])), panels,
                              fr["wavelength_angstrom"][()], fr["beam_direction"][()], _strings(fr["source_file"]),
                              fr["source_index"][()], float(f.attrs["adu_per_photon"]),
                              str(f.attrs.get("format_class", "")))
    except (OSError, KeyError) as exc:
        raise InputError(path, f"not a braggflow frames file ({exc})") from None


def read_frame_photons(path: str | Path, frame: int) -> np.ndarray:
    """(panels, slow, fast) float32 photons of one frame; -1 marks untrusted pixels."""
    with h5py.File(path, "r") as f:
        return f["data"][frame]


def write_frames_file(path: str | Path, frames: np.ndarray | list, panels: Panels, wavelength_angstrom,
                      beam_direction, source_file, source_index, adu_per_photon: float, format_class: str) -> None:
    """The normalized frames file (atomic). ``frames``: (n, P, slow, fast) photons, -1 untrusted."""
    frames = np.asarray(frames, np.float32)
    n = frames.shape[0]
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("data", data=frames, chunks=(1, *frames.shape[1:]), compression="gzip",
                         compression_opts=4)
        g = f.create_group("panels")
        g["name"] = np.array(panels.name, dtype=h5py.string_dtype())
        g["origin_mm"], g["fast_axis"], g["slow_axis"] = panels.origin_mm, panels.fast_axis, panels.slow_axis
        g["pixel_size_mm"], g["image_size"] = panels.pixel_size_mm, panels.image_size.astype(np.int64)
        fr = f.create_group("frames")
        fr["wavelength_angstrom"] = np.broadcast_to(np.asarray(wavelength_angstrom, float), (n,))
        fr["beam_direction"] = np.broadcast_to(np.asarray(beam_direction, float), (n, 3))
        fr["source_file"] = np.array([str(s) for s in source_file], dtype=h5py.string_dtype())
        fr["source_index"] = np.asarray(source_index, np.int64)
        f.attrs["adu_per_photon"] = float(adu_per_photon)
        f.attrs["format_class"] = format_class
        f.attrs["n_panels"] = len(panels)
        f.attrs["layout"] = LAYOUT
