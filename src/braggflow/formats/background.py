"""Water backgrounds (``results/backgrounds/{dataset}/water.h5``): written and read here only.

  /water_photons    float32 (slow, fast) expected photons per pixel per pulse (0 in module gaps)
  /q_inv_angstrom   float32 (slow, fast)
  /pixel_mask       uint8 (slow, fast), 1 = module gap
  attrs             geometry (JSON of the dataset's Geometry), params (JSON: jet, beam, table and its sha256)
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError
from ..geometry import Geometry
from ..io import atomic_path
from ..water import WaterBackground


def write_background(path: str | Path, bg: WaterBackground) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        opts = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
        ds = f.create_dataset("water_photons", data=bg.photons, **opts)
        ds.attrs["units"] = "photons per pixel per pulse"
        f.create_dataset("q_inv_angstrom", data=bg.q_inv_angstrom, **opts).attrs["units"] = "1/angstrom"
        f.create_dataset("pixel_mask", data=bg.mask.astype(np.uint8), **opts).attrs["meaning"] = "1 = module gap"
        f.attrs["geometry"] = json.dumps(bg.geometry.as_dict())
        f.attrs["params"] = json.dumps(bg.params, sort_keys=True)


def read_background(path: str | Path) -> WaterBackground:
    try:
        with h5py.File(path, "r") as f:
            return WaterBackground(f["water_photons"][()], f["q_inv_angstrom"][()], f["pixel_mask"][()].astype(bool),
                                   Geometry.from_dict(json.loads(f.attrs["geometry"])), json.loads(f.attrs["params"]))
    except (OSError, KeyError) as exc:
        raise InputError(path, f"not a braggflow water background ({exc})") from None
