"""Experimental inputs (config key ``experiments``): their specs and checks, the shifted-simulation forward model,
and the import of HDF5 frames (NXmx / CXI / any dataset path, geometry from NXmx metadata or a CrystFEL .geom;
the file layouts are ``braggflow.formats.hdf5_input``).

Frames DIALS reads (CBF, NXmx, Eiger, multi-panel detectors) go through workflow/scripts/dxtbx_import.py in
DIALS' Python instead; both write the normalized frames file of ``braggflow.formats.frames``.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import ConfigError, _describe, _fill_defaults
from .errors import InputError
from .geometry import Geometry
from .matrix import Dataset
from .detector import INCIDENT_UNIT
from .formats.frames import write_frames_file
from .formats.hdf5_input import hdf5_layout, read_raw_frames

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
    hit_frames: tuple[int, ...] | str | None = None  # file inputs: hit labels (indices, or "dials_indexed")
    hit_gate: float | None = None  # frames below this hit probability skip the matrix peak finders

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
        if e["kind"] == "shifted_simulation" and e["hit_frames"] is not None:
            problems.append(f"{_key(name, 'hit_frames')}: a shifted simulation is scored against its own truth")
        problems += _check_matched(name, e, config, schema)
        out[name] = Experiment(name=name, kind=e["kind"], structure=e["structure"], models=models,
                               energy_distance=bool(e["energy_distance"]), like=e["like"], frames=int(e["frames"]),
                               shift=e["shift"], files=tuple(e["files"]), reader=e["reader"],
                               dataset_path=e["dataset_path"], geometry=e["geometry"],
                               adu_per_photon=e["adu_per_photon"], dials=e["dials"],
                               matched=_matched_of(e),
                               predict_with=e["predict_with"], untrusted_border_px=int(e["untrusted_border_px"]),
                               hit_frames=tuple(e["hit_frames"]) if isinstance(e["hit_frames"], list)
                               else e["hit_frames"], hit_gate=e["hit_gate"])
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


STAND_IN = "stand_in"  # the structure name of a matched stand-in the workflow builds (matched.stand_in)


def _matched_of(e: dict[str, Any]) -> dict[str, Any] | None:
    """The matched section where one is trained; a stand-in's structure name is STAND_IN."""
    m = e["matched"]
    if m["stand_in"] is not None:
        return {**m, "structure": STAND_IN}
    return m if m["structure"] is not None else None


def stand_in_space_group(e_dials: dict[str, Any], stand_in: dict[str, Any]) -> str | None:
    return stand_in["space_group"] or e_dials.get("space_group")


def _check_matched(name: str, e: dict[str, Any], config: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    m = e["matched"]
    problems = []
    if m["stand_in"] is not None:
        space_group = stand_in_space_group(e["dials"], m["stand_in"])
        if m["structure"] is not None:
            problems.append(f"{_key(name, 'matched.structure')}: {m['structure']!r} and matched.stand_in are both "
                            "set; give one (structure null with a stand-in)")
        elif not space_group:
            problems.append(f"{_key(name, 'matched.stand_in.space_group')}: null and no dials.space_group to "
                            "take: name the stand-in's space group")
        else:
            import gemmi

            try:
                gemmi.SpaceGroup(space_group)
            except ValueError:
                problems.append(f"{_key(name, 'matched.stand_in.space_group')}: unknown space group "
                                f"{space_group!r}")
    elif m["structure"] is None:
        return ([f"{_key(name, 'predict_with')}: {e['predict_with']!r} needs a matched section"]
                if e["predict_with"] != "matrix" else [])
    elif m["structure"] not in config["structures"]:
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


def import_hdf5(out: str | Path, nxmx_out: str | Path, path: str | Path, dataset_path: str | None,
                geom_path: str | Path | None, adu_per_photon: float | None, untrusted_border_px: int = 0,
                log=None) -> dict[str, Any]:
    """An HDF5 input as the normalized frames file, and as NXmx (photons) for DIALS. Counts <= -1 or NaN, pixels
    an NXmx pixel_mask flags, and the outer ``untrusted_border_px`` of the frame are untrusted."""
    from .formats.nxmx import nxmx_writer

    layout = hdf5_layout(path, dataset_path, geom_path)
    gain = adu_per_photon or layout.adu_per_photon or 1.0
    g = layout.geometry
    wavelengths = g.wavelength_angstrom if layout.wavelengths_angstrom is None else layout.wavelengths_angstrom
    raw, mask = read_raw_frames(path, layout)
    if untrusted_border_px:
        b = untrusted_border_px
        mask = mask.copy()
        mask[:b], mask[-b:], mask[:, :b], mask[:, -b:] = True, True, True, True
    bad = ~np.isfinite(raw) | (raw <= -1) | mask[None]
    photons = np.where(bad, -1.0, np.clip(raw / gain, 0, None)).astype(np.float32)
    panels, beam = g.detector(), INCIDENT_UNIT
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
