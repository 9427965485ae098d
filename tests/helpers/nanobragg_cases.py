"""The nanoBragg reference cases of tests/data/nanobragg as Stills and panels: NumPy and braggflow only (no pytest),
so benchmarks/gpu_parity.py runs them on a GPU machine too."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path

import numpy as np

from braggflow.simulator import NANOBRAGG_DEFAULT_FLUENCE_PHOTONS_PER_M2, Crystal, Numerics, Panel, Pulse, Still

DATA = Path(__file__).resolve().parents[1] / "data" / "nanobragg"
# nanoBragg MOSFLM frame -> DIALS lab frame: beam +x -> -z, fast (0,0,1) -> (1,0,0), slow (0,-1,0) -> (0,-1,0)
MOSFLM_TO_DIALS = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
CELL = (67.288, 67.288, 106.582)


def _rot(axis: int, deg: float) -> np.ndarray:
    """Right-handed rotation about lab axis 0/1/2 (x/y/z), as nanoBragg's rotate()."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    if axis == 0:
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == 1:
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def nanobragg_reciprocal_mosflm() -> np.ndarray:
    """-cell 67.288 67.288 106.582 90 90 90 -misset 5 15 25: a* along x, b* in x-y, then Rz Ry Rx."""
    rot = _rot(2, 25) @ _rot(1, 15) @ _rot(0, 5)
    return rot @ np.diag([1 / CELL[0], 1 / CELL[1], 1 / CELL[2]])  # columns a*, b*, c*


def _still(A_matrix, **kwargs) -> Still:
    """The Still of these tests' flat keyword sets: each key goes to the part (crystal, pulse, numerics) naming it."""
    kwargs["A_matrix"] = A_matrix
    parts = []
    for part in (Crystal, Pulse, Numerics):
        names = {f.name for f in fields(part)}
        parts.append(part(**{k: kwargs.pop(k) for k in list(kwargs) if k in names}))
    if kwargs:
        raise TypeError(f"no part of a Still takes {sorted(kwargs)}")
    return Still(*parts)


def _nanobragg_case(name: str):
    cases = json.loads((DATA / "cases.json").read_text())
    assert name in cases
    det = Panel.from_beam_center(100.0, (1024 / 2 + 1, 768 / 2 + 1), 0.075, 1024, 768)
    kwargs = {"ncells": (8, 8, 8), "fluence_photons_per_m2": NANOBRAGG_DEFAULT_FLUENCE_PHOTONS_PER_M2}
    if name == "case1_mono":
        kwargs |= {"wavelengths_A": [1.5498], "oversample": 1}
    else:
        umats_mosflm = np.loadtxt(DATA / "case2_mosaic_umats.txt").reshape(-1, 3, 3)
        kwargs |= {
            "wavelengths_A": 1.5498 * (1 + np.arange(3) * 0.003 - 0.003),  # -dispersion 0.6 -dispsteps 3
            "oversample": 2,
            "mosaic_umats": MOSFLM_TO_DIALS @ umats_mosflm @ MOSFLM_TO_DIALS.T,
        }
    return det, kwargs, np.load(DATA / f"{name}_photons.npy").astype(np.float64)
