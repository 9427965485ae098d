"""Experimental inputs (config key ``experiments``): their specs and checks, the shifted-simulation forward model,
and the HDF5 reader (NXmx / CXI / any dataset path, geometry from NXmx metadata or a CrystFEL .geom).

Frames DIALS reads (CBF, NXmx, Eiger, multi-panel detectors) go through workflow/scripts/dxtbx_import.py in
DIALS' Python instead; both write the normalized frames file of ``braggflow.panels``.
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .config import ConfigError, _describe, _fill_defaults
from .errors import InputError
from .geometry import Geometry
from .matrix import Dataset
from .panels import Panels, write_frames_file
from .units import energy_kev, wavelength_angstrom

DEFAULT_DATA_PATHS = ("/entry/data/data", "/entry_1/data_1/data")
SHIFTED_SEED_BASE = 1_000_000  # shifted sets draw crystals apart from every matrix dataset
MATCHED_SEED_OFFSET = 20_000_000  # beyond every shifted set's index (SHIFTED_SEED_BASE + 3 bytes)


@dataclass(frozen=True)
class Experiment:
    name: str
    kind: str
    structure: str
    models: tuple[str, ...]
    energy_distance: bool
    like: str | None = None
    frames: int = 0
    shift: dict[str, Any] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    reader: str = "dxtbx"
    dataset_path: str | None = None
    geometry: str | None = None
    adu_per_photon: float | None = None
    dials: dict[str, Any] = field(default_factory=dict)
    matched: dict[str, Any] | None = None
    predict_with: str = "matrix"
    untrusted_border_px: int = 0

    @property
    def seed_index(self) -> int:
        """Per-set index in every random seed (a hash of the name: independent of the order of the config)."""
        return SHIFTED_SEED_BASE + int.from_bytes(hashlib.sha256(self.name.encode()).digest()[:3], "little")

    @property
    def matched_seed_index(self) -> int:
        """Seed index of the matched training frames: apart from the shifted set and every matrix dataset."""
        return self.seed_index + MATCHED_SEED_OFFSET


def _key(name: str, key: str) -> str:
    return f"config key 'experiments.{name}.{key}'"


def experiment_specs(config: dict[str, Any], datasets: dict[str, Dataset], schema: dict[str, Any],
                     base: str | Path = ".") -> dict[str, Experiment]:
    """Every experiment of the config with defaults filled in; ConfigError / InputError naming the key or file."""
    entry_schema = schema["properties"]["experiments"]["additionalProperties"]
    out, problems = {}, []
    for name, raw in (config.get("experiments") or {}).items():
        e = copy.deepcopy(raw)
        _fill_defaults(e, entry_schema)
        if e["structure"] not in config["structures"]:
            problems.append(f"{_key(name, 'structure')}: {e['structure']!r} is not among structures "
                            f"{sorted(config['structures'])}")
        unknown = [m for m in e["models"] if m not in datasets]
        if unknown:
            problems.append(f"{_key(name, 'models')}: {unknown} are not datasets of the matrix {sorted(datasets)}")
        if e["kind"] == "shifted_simulation":
            if e["like"] not in datasets:
                problems.append(f"{_key(name, 'like')}: {e['like']!r} is not a dataset of the matrix "
                                f"{sorted(datasets)}")
            for section in ("simulation", "overlay"):
                problems += _check_section(name, section, config, e["shift"][section], schema)
            models = tuple(e["models"]) or ((e["like"],) if e["like"] in datasets else ())
        else:
            if not e["files"]:
                problems.append(f"{_key(name, 'files')}: kind 'file' needs at least one input file")
            models = tuple(e["models"]) or tuple(datasets)
        problems += _check_matched(name, e, config, schema)
        out[name] = Experiment(name=name, kind=e["kind"], structure=e["structure"], models=models,
                               energy_distance=bool(e["energy_distance"]), like=e["like"], frames=int(e["frames"]),
                               shift=e["shift"], files=tuple(e["files"]), reader=e["reader"],
                               dataset_path=e["dataset_path"], geometry=e["geometry"],
                               adu_per_photon=e["adu_per_photon"], dials=e["dials"],
                               matched=e["matched"] if e["matched"]["structure"] is not None else None,
                               predict_with=e["predict_with"], untrusted_border_px=int(e["untrusted_border_px"]))
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    for exp in out.values():
        if exp.kind == "file":
            check_input_files(exp, base)
    return out


def _check_section(name: str, section: str, config: dict[str, Any], overrides: dict[str, Any],
                   schema: dict[str, Any], where: str = "shift") -> list[str]:
    """The config's section with the overrides merged in must satisfy the section's schema."""
    import jsonschema

    sub = schema["properties"][section]
    merged = {**config[section], **overrides}
    errors = jsonschema.Draft202012Validator(sub).iter_errors(merged)
    return [_describe(err).replace("config key '", f"config key 'experiments.{name}.{where}.{section}.", 1)
            for err in errors]


def _check_matched(name: str, e: dict[str, Any], config: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    m = e["matched"]
    if m["structure"] is None:
        return ([f"{_key(name, 'predict_with')}: {e['predict_with']!r} needs a matched section"]
                if e["predict_with"] != "matrix" else [])
    problems = []
    if m["structure"] not in config["structures"]:
        problems.append(f"{_key(name, 'matched.structure')}: {m['structure']!r} is not among structures "
                        f"{sorted(config['structures'])}")
    for section in ("beam", "simulation", "overlay"):
        problems += _check_section(name, section, config, m[section], schema, where="matched")
    pf_schema = {"properties": {"peak_finder": schema["properties"]["training"]["properties"]["peak_finder"]}}
    pf = {**config["training"]["peak_finder"], **m["peak_finder"]}
    problems += _check_section(name, "peak_finder", {"peak_finder": pf}, {}, pf_schema, where="matched")
    return problems


def matched_section(config: dict[str, Any], matched: dict[str, Any], section: str) -> dict[str, Any]:
    """A config section with the experiment's matched overrides; training frames are in photons."""
    merged = {**config[section], **matched[section]}
    if section == "overlay":
        merged["adu_per_photon"] = 1.0
    return merged


def matched_jet_thickness_m(config: dict[str, Any], matched: dict[str, Any]) -> float:
    """The water jet of an experiment's matched frames: its own, else the matrix's."""
    um = matched["jet_thickness_um"]
    return (um if um is not None else config["water"]["jet_thickness_um"]) * 1e-6


def experiment_dials_settings(dials_cfg: dict[str, Any], exp: Experiment):
    """The ``dials`` section with an experiment's own ``dials`` overrides (its PHIL lines after the section's)."""
    from .dials import DialsSettings

    d = exp.dials
    return DialsSettings.from_config({
        **dials_cfg, "indexing_method": d["indexing_method"] or dials_cfg["indexing_method"],
        "cell_sigma_angstrom": d["cell_sigma_angstrom"] or dials_cfg["cell_sigma_angstrom"],
        "extra_phil": list(dials_cfg["extra_phil"]) + list(d["extra_phil"])})


def check_input_files(exp: Experiment, base: str | Path = ".") -> None:
    """Stop before any job runs where an input cannot be read: missing file, dataset, rank or geometry."""
    for f in exp.files:
        path = Path(base) / f
        if not path.is_file():
            raise InputError(f, f"{_key(exp.name, 'files')}: no such file")
        if exp.reader == "hdf5":
            hdf5_layout(path, exp.dataset_path, None if exp.geometry is None else Path(base) / exp.geometry)


# ---------------------------------------------------------------- shifted simulation

def shifted_geometry(base: Geometry, shift: dict[str, Any]) -> Geometry:
    bx, by = base.beam_center_px
    dx, dy = shift["beam_center_offset_px"]
    return Geometry(**{**base.as_dict(), "camera_length_m": base.camera_length_m + shift["camera_length_offset_m"],
                       "beam_center_px": (bx + dx, by + dy),
                       "energy_kev": base.energy_kev + shift["energy_offset_kev"]})


def shifted_section(section: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    return {**copy.deepcopy(section), **copy.deepcopy(overrides)}


# ---------------------------------------------------------------- HDF5 inputs

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
            geometry, adu = _nxmx_geometry(f, path, shape), None
    return Hdf5Layout(dataset_path, n, shape, geometry, adu, wavelengths)


def _nxmx_geometry(f: h5py.File, path, shape) -> Geometry:
    """NXmx detector metadata: distance, beam centre, pixel size (NXdetector), wavelength (NXbeam)."""
    det = next((f[p] for p in ("entry/instrument/detector", "entry_1/instrument_1/detector_1") if p in f), None)
    beam = next((f[p] for p in ("entry/instrument/beam", "entry/sample/beam") if p in f), None)
    need = ("distance", "beam_center_x", "beam_center_y", "x_pixel_size")
    if det is None or beam is None or any(k not in det for k in need) or "incident_wavelength" not in beam:
        raise InputError(path, "no geometry: give a CrystFEL .geom (experiments.<name>.geometry) or NXmx metadata "
                               "(detector distance, beam_center_x/y, x_pixel_size; beam incident_wavelength)")

    def value(ds, to: str) -> float:
        v = float(np.ravel(ds[()])[0])
        unit = ds.attrs.get("units", b"")
        unit = unit.decode() if isinstance(unit, bytes) else str(unit)
        scale = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "angstrom": 1.0, "nm": 10.0, "pixel": 1.0, "": 1.0}
        if to == "m" and unit in ("", "pixel"):
            unit = "m"
        return v * scale.get(unit, 1.0)

    wl = value(beam["incident_wavelength"], "angstrom")
    pixel = value(det["x_pixel_size"], "m")
    return Geometry(detector_name="NXmx", n_fast=shape[1], n_slow=shape[0], pixel_size_m=pixel,
                    camera_length_m=value(det["distance"], "m"),
                    beam_center_px=(value(det["beam_center_x"], "pixel"), value(det["beam_center_y"], "pixel")),
                    energy_kev=energy_kev(wl), sensor_material="Si", sensor_thickness_mm=0.0001)


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
    (the convention of braggflow.crystfel: DIALS fast = +x, slow = -y). A wavelength read per frame gives
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


def geometry_panels(g: Geometry) -> tuple[Panels, np.ndarray]:
    """One flat panel normal to the beam (dxtbx lab frame: beam along -z, fast = +x, slow = -y) and the beam
    direction, for a braggflow Geometry."""
    px_mm = g.pixel_size_m * 1e3
    bx, by = g.beam_center_px
    panels = Panels(("panel0",), np.array([[-bx * px_mm, by * px_mm, -g.camera_length_m * 1e3]]),
                    np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, -1.0, 0.0]]), np.array([[px_mm, px_mm]]),
                    np.array([[g.n_fast, g.n_slow]]))
    return panels, np.array([0.0, 0.0, -1.0])


def import_hdf5(out: str | Path, nxmx_out: str | Path, path: str | Path, dataset_path: str | None,
                geom_path: str | Path | None, adu_per_photon: float | None, untrusted_border_px: int = 0,
                log=None) -> dict[str, Any]:
    """An HDF5 input as the normalized frames file, and as NXmx (photons) for DIALS. Counts <= -1 or NaN, pixels
    an NXmx pixel_mask flags, and the outer ``untrusted_border_px`` of the frame are untrusted."""
    from .nxmx import MASK_PATH, nxmx_writer

    layout = hdf5_layout(path, dataset_path, geom_path)
    gain = adu_per_photon or layout.adu_per_photon or 1.0
    g = layout.geometry
    wavelengths = g.wavelength_angstrom if layout.wavelengths_angstrom is None else layout.wavelengths_angstrom
    with h5py.File(path, "r") as f:
        ds = f[layout.dataset_path]
        raw = ds[()] if ds.ndim == 3 else ds[()][None]
        mask = f[MASK_PATH][()] != 0 if MASK_PATH in f else np.zeros(layout.shape, bool)
    raw = raw.astype(np.float32)
    if untrusted_border_px:
        b = untrusted_border_px
        mask = mask.copy()
        mask[:b], mask[-b:], mask[:, :b], mask[:, -b:] = True, True, True, True
    bad = ~np.isfinite(raw) | (raw <= -1) | mask[None]
    photons = np.where(bad, -1.0, np.clip(raw / gain, 0, None)).astype(np.float32)
    panels, beam = geometry_panels(g)
    write_frames_file(out, photons[:, None], panels, wavelengths, beam, [str(path)] * len(raw),
                      np.arange(len(raw)), gain, "hdf5 " + layout.dataset_path)
    with nxmx_writer(nxmx_out, g, len(raw), np.float32, wavelengths, mask=mask.astype(np.int32)) as (_, d):
        for i in range(len(raw)):
            d[i] = np.where(bad[i], -1.0, photons[i])
    stats = {"frames": len(raw), "shape": layout.shape, "gain": gain, "untrusted_fraction": float(bad.mean()),
             "distance_m": g.camera_length_m, "energy_kev": g.energy_kev, "beam_center_px": g.beam_center_px}
    if log:
        log.info("%s: %s", path, stats)
    return stats
