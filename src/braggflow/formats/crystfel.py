"""CrystFEL geometry files (.geom): written for braggflow's images, so CrystFEL users can process them, and read
(single-panel) for a user's HDF5 frames.

CrystFEL's lab frame has z along the beam and y up; DIALS has z toward the source and y up, so CrystFEL
x = -DIALS x. DIALS fast (+x) is CrystFEL -x and DIALS slow (-y) is CrystFEL -y; the first pixel's corner
lies at (+bx, +by) pixels from the beam.

Checked against CrystFEL 0.12 (libcrystfel datatemplate.c, crystfel_geometry(5)): ``wavelength = <location>
A|m`` takes a per-frame value from the HDF5 file (an array indexed by the frame, '%' = dim0), the unit is
mandatory; ``bandwidth`` is the relative standard deviation of a Gaussian spectrum (not a FWHM).
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError
from ..geometry import Geometry
from ..io import write_text_atomic
from ..units import energy_kev, wavelength_angstrom
from .nxmx import DATA_PATH, MASK_BITS, MASK_PATH, WAVELENGTH_PATH, WAVELENGTH_UNITS

# CrystFEL's wavelength unit suffixes; a file location must carry one.
_CRYSTFEL_WAVELENGTH_UNIT = {"angstrom": "A", "m": "m"}
# CrystFEL's own default: a zero-width Gaussian is degenerate in its reflection prediction.
MIN_BANDWIDTH = 1e-8


def crystfel_geometry_text(geometry: Geometry, *, adu_per_photon: float, bandwidth_rel_sigma: float,
                           dataset: str = "", per_frame_wavelength: bool = True) -> str:
    """The .geom of a braggflow NXmx file (overlay shards: ADU with gain ``adu_per_photon``).

    ``per_frame_wavelength`` reads each frame's central wavelength from the file (braggflow's shards jitter
    it); False writes the nominal photon energy, for data files without that dataset.
    ``bandwidth_rel_sigma``: the spectrum's relative sigma (draws.spectrum_rel_sigma of the simulation).
    """
    if not adu_per_photon > 0:
        raise ValueError(f"adu_per_photon must be > 0, got {adu_per_photon!r}")
    if not bandwidth_rel_sigma >= 0:
        raise ValueError(f"bandwidth_rel_sigma must be >= 0, got {bandwidth_rel_sigma!r}")
    bx, by = geometry.beam_center_px
    energy_ev = geometry.energy_kev * 1000.0
    if per_frame_wavelength:
        beam = [f"; nominal photon_energy = {energy_ev:.6g} eV ({geometry.wavelength_angstrom:.6f} A); each "
                "frame's central wavelength is read from the file",
                f"wavelength = {WAVELENGTH_PATH} {_CRYSTFEL_WAVELENGTH_UNIT[WAVELENGTH_UNITS]}"]
    else:
        beam = [f"photon_energy = {energy_ev:.6g} eV"]
    lines = [
        f"; CrystFEL geometry written by braggflow{' for dataset ' + dataset if dataset else ''}",
        f"; detector {geometry.detector_name}: {geometry.n_fast} x {geometry.n_slow} pixels of "
        f"{geometry.pixel_size_m * 1e6:g} um; beam centre (fast, slow) = ({bx:g}, {by:g}) px",
        *beam,
        "; relative sigma of the simulated spectrum",
        f"bandwidth = {max(bandwidth_rel_sigma, MIN_BANDWIDTH):.6g}",
        f"clen = {geometry.camera_length_m:.6g} m",
        f"res = {1.0 / geometry.pixel_size_m:.6f}",
        "; the overlay shards' gain; the Bragg-only simulated shards hold photons (adu_per_photon = 1)",
        f"adu_per_photon = {adu_per_photon:.6g}",
        f"data = {DATA_PATH}",
        "dim0 = %",
        "dim1 = ss",
        "dim2 = fs",
        "; every pixel_mask bit braggflow sets (gaps, dead pixels) is untrusted, as DIALS treats them",
        f"mask = {MASK_PATH}",
        "mask_good = 0x0",
        f"mask_bad = {MASK_BITS:#x}",
        "",
        "panel0/min_fs = 0",
        f"panel0/max_fs = {geometry.n_fast - 1}",
        "panel0/min_ss = 0",
        f"panel0/max_ss = {geometry.n_slow - 1}",
        f"panel0/corner_x = {bx:.4f}",
        f"panel0/corner_y = {by:.4f}",
        "panel0/fs = -1.000000x +0.000000y",
        "panel0/ss = +0.000000x -1.000000y",
        "panel0/coffset = 0.0",
        "",
    ]
    return "\n".join(lines)


def write_crystfel_geometry(path: str | Path, geometry: Geometry, *, adu_per_photon: float,
                            bandwidth_rel_sigma: float, dataset: str = "", per_frame_wavelength: bool = True) -> None:
    write_text_atomic(path, crystfel_geometry_text(geometry, adu_per_photon=adu_per_photon,
                                                   bandwidth_rel_sigma=bandwidth_rel_sigma, dataset=dataset,
                                                   per_frame_wavelength=per_frame_wavelength))


# ---------------------------------------------------------------- reading a user's single-panel .geom

_GEOM_LINE = re.compile(r"^\s*([A-Za-z0-9_/]+)\s*=\s*(.*?)\s*$")
# CrystFEL's units (crystfel_geometry(5)) as factors to A (wavelength), keV (photon_energy) and m (lengths).
_WAVELENGTH_UNITS = {"wavelength": {"A": 1.0, "m": 1e10}, "photon_energy": {"eV": 1e-3, "keV": 1.0}}
_LENGTH_UNITS_M = {"m": 1.0, "mm": 1e-3}


def _split_unit(text: str) -> tuple[str, str | None]:
    value, _, unit = text.partition(" ")
    return value, (unit.strip() or None)


def _geom_wavelengths_angstrom(path: Path, g: dict[str, str], h5: h5py.File | None,
                               n_frames: int) -> tuple[np.ndarray, bool]:
    """(wavelength per frame in A, whether it came from the data file) from photon_energy or wavelength,
    a number or, as CrystFEL allows, an HDF5 location: a scalar or one value per frame."""
    keys = [k for k in _WAVELENGTH_UNITS if k in g]
    if len(keys) != 1:
        raise InputError(path, f"needs exactly one of {' or '.join(_WAVELENGTH_UNITS)}, has {keys or 'neither'}")
    key = keys[0]
    value, unit = _split_unit(g[key])
    if unit is None and key == "photon_energy":
        unit = "eV"  # CrystFEL's default; wavelength must state its unit
    scale = _WAVELENGTH_UNITS[key].get(unit)
    if scale is None:
        raise InputError(path, f"{key} = {g[key]!r}: the unit must be one of {list(_WAVELENGTH_UNITS[key])}")
    from_file = value.startswith("/")
    if from_file:
        if h5 is None or value not in h5:
            raise InputError(path, f"{key} = {g[key]!r}: no such dataset in the data file")
        raw = np.asarray(h5[value][()], dtype=float).ravel()
        if raw.size not in (1, n_frames):
            raise InputError(path, f"{key} = {g[key]!r}: {raw.size} values for {n_frames} frames")
    else:
        try:
            raw = np.array([float(value)])
        except ValueError:
            raise InputError(path, f"{key} = {g[key]!r} is neither a number nor an HDF5 location") from None
    v = raw * scale
    wavelengths = v if key == "wavelength" else wavelength_angstrom(v)
    if not np.all(np.isfinite(wavelengths) & (wavelengths > 0)):
        raise InputError(path, f"{key} = {g[key]!r}: wavelengths must be positive")
    return np.broadcast_to(wavelengths, (n_frames,)).copy(), from_file


def _geom_length_m(path: Path, key: str, text: str) -> float:
    value, unit = _split_unit(text)
    if unit not in (None, *_LENGTH_UNITS_M):
        raise InputError(path, f"{key} = {text!r}: the unit must be one of {list(_LENGTH_UNITS_M)}")
    return float(value) * _LENGTH_UNITS_M[unit or "m"]  # a literal without unit is in m


def read_crystfel_geometry(path: str | Path, shape: tuple[int, int], h5: h5py.File | None = None,
                           n_frames: int = 1) -> tuple[Geometry, float | None, np.ndarray | None]:
    """A single-panel CrystFEL .geom as a Geometry, its adu_per_photon and the per-frame wavelengths (A) where
    it reads them from ``h5`` (else None): clen, res, photon_energy or wavelength, corner_x/y and fs/ss = -x/-y
    (the convention of braggflow.formats.crystfel: DIALS fast = +x, slow = -y). A wavelength read per frame gives
    the Geometry their mean."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such geometry file (config key experiments.<name>.geometry)")
    glob, panels = {}, {}
    for line in path.read_text().splitlines():
        line = line.split(";", 1)[0]
        m = _GEOM_LINE.match(line)
        if not m:
            continue
        key, value = m.groups()
        if "/" in key:
            panel, k = key.split("/", 1)
            panels.setdefault(panel, {})[k] = value
        else:
            glob[key] = value
    if len(panels) != 1:
        raise InputError(path, f"{len(panels)} panels; the hdf5 reader takes single-panel .geom files (read "
                               "multi-panel data with reader: dxtbx)")
    (pname, p), = panels.items()
    g = {**glob, **p}
    try:
        clen, res = _geom_length_m(path, "clen", g["clen"]), float(g["res"])
        corner = (float(g["corner_x"]), float(g["corner_y"]))
    except KeyError as exc:
        raise InputError(path, f"missing {exc.args[0]!r} (needs clen, res, photon_energy or wavelength, corner_x, "
                               "corner_y)") from None
    except ValueError as exc:
        raise InputError(path, f"not a number: {exc}") from None
    fs, ss = g.get("fs", "-x").replace(" ", ""), g.get("ss", "-y").replace(" ", "")
    if not (_axis(fs) == (-1.0, 0.0) and _axis(ss) == (0.0, -1.0)):
        raise InputError(path, f"panel {pname}: fs = {g.get('fs')!r}, ss = {g.get('ss')!r}; the hdf5 reader takes "
                               "fs = -x, ss = -y (read rotated panels with reader: dxtbx)")
    size = (int(g.get("max_ss", shape[0] - 1)) - int(g.get("min_ss", 0)) + 1,
            int(g.get("max_fs", shape[1] - 1)) - int(g.get("min_fs", 0)) + 1)
    if size != tuple(shape):
        raise InputError(path, f"panel {pname} is {size[0]} x {size[1]} (slow x fast) pixels; the data are "
                               f"{shape[0]} x {shape[1]}")
    wavelengths, from_file = _geom_wavelengths_angstrom(path, g, h5, n_frames)
    geometry = Geometry(detector_name=f"CrystFEL {path.name}", n_fast=shape[1], n_slow=shape[0],
                        pixel_size_m=1.0 / res, camera_length_m=clen, beam_center_px=corner,
                        energy_kev=energy_kev(float(wavelengths.mean())), sensor_material="Si",
                        sensor_thickness_mm=0.0001)
    adu = float(g["adu_per_photon"]) if "adu_per_photon" in g else None
    return geometry, adu, (wavelengths if from_file else None)


def _axis(text: str) -> tuple[float, float]:
    x = y = 0.0
    for sign, num, ax in re.findall(r"([+-]?)([0-9.]*)([xyz])", text):
        v = (float(num) if num else 1.0) * (-1.0 if sign == "-" else 1.0)
        x, y = (x + v, y) if ax == "x" else ((x, y + v) if ax == "y" else (x, y))
    return round(x, 6), round(y, 6)
