"""The phase dataset's HDF5 file: amplitudes and phases of every sample on one hkl grid, with provenance.

Layout: ``/hkl`` (V, 3); ``/amplitude`` and ``/phase_rad`` (N, 2H+1, 2K+1, 2L+1) float32 (electrons; radians,
F = sum_j f_j exp(+2 pi i h.x_j)); ``/crystal`` (N,) index into the crystal table; ``/split`` (N,) index into
``split_names``; ``/measurable`` and ``/d_angstrom`` (crystals, volume). Attributes: ``crystals`` (JSON: name,
file, sha256, space group, cell, the origin the set fixed and the shifts it left), ``settings`` (JSON),
``dataset_id`` (a uuid5 of the settings and the CIF hashes: the same inputs give the same id and the same bytes),
``software``. No timestamps are stored.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError
from ..io import atomic_path
from ..phases.dataset import SPLITS, PhaseVolumes

FORMAT = "braggflow phase volumes 1"
_NAMESPACE = uuid.UUID("8f0b3c2e-6a55-4c1e-9a43-3d1f0e6b7a21")  # braggflow's namespace for derived ids


def dataset_id(settings: dict, crystals: list[dict]) -> str:
    blob = json.dumps({"settings": settings, "cifs": [c["sha256"] for c in crystals]}, sort_keys=True)
    return str(uuid.uuid5(_NAMESPACE, blob))


def _software() -> dict[str, str]:
    from importlib.metadata import version

    return {d: version(d) for d in ("braggflow", "gemmi", "numpy")}


def write_phase_volumes(path: str | Path, v: PhaseVolumes) -> str:
    """Write atomically; returns the dataset id."""
    ident = dataset_id(v.settings, v.crystals)
    opts = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    n = len(v.amplitude)
    with atomic_path(path) as tmp, h5py.File(tmp, "w", track_order=True) as f:
        f.attrs["format"] = FORMAT
        f.attrs["dataset_id"] = ident
        f.attrs["settings"] = json.dumps(v.settings, sort_keys=True)
        f.attrs["crystals"] = json.dumps(v.crystals)
        f.attrs["software"] = json.dumps(_software(), sort_keys=True)
        f.attrs["split_names"] = json.dumps(list(SPLITS))
        f.attrs["convention"] = "F(h) = sum_j f_j exp(+2 pi i h.x_j); phase = arg F in radians"
        f.create_dataset("hkl", data=v.hkl.astype(np.int16))
        f.create_dataset("amplitude", data=v.amplitude.reshape(n, *v.shape), **opts).attrs["units"] = "electrons"
        f.create_dataset("phase_rad", data=v.phase_rad.reshape(n, *v.shape), **opts).attrs["units"] = "radians"
        f.create_dataset("crystal", data=v.crystal, **opts)
        f.create_dataset("split", data=v.split, **opts)
        f.create_dataset("measurable", data=v.measurable.reshape(-1, *v.shape).astype(np.uint8), **opts)
        f.create_dataset("d_angstrom", data=v.d_angstrom.reshape(-1, *v.shape), **opts).attrs["units"] = "angstrom"
    return ident


def read_phase_volumes(path: str | Path) -> PhaseVolumes:
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise KeyError(f"format attribute {f.attrs.get('format')!r}, expected {FORMAT!r}")
            if json.loads(f.attrs["split_names"]) != list(SPLITS):
                raise KeyError("split_names differ from this braggflow's")
            amp = f["amplitude"][()]
            shape = tuple(amp.shape[1:])
            n = len(amp)
            return PhaseVolumes(f["hkl"][()].astype(int), shape, amp.reshape(n, -1),
                                f["phase_rad"][()].reshape(n, -1), f["crystal"][()].astype(int),
                                f["split"][()].astype(int), json.loads(f.attrs["crystals"]),
                                f["measurable"][()].reshape(-1, amp[0].size).astype(bool),
                                f["d_angstrom"][()].reshape(-1, amp[0].size), json.loads(f.attrs["settings"]))
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(path, f"not a braggflow phase dataset ({exc})") from None


def read_dataset_id(path: str | Path) -> str:
    with h5py.File(path, "r") as f:
        return str(f.attrs["dataset_id"])
