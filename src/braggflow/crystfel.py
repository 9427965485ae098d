"""CrystFEL geometry files (.geom) for the same images, so CrystFEL users can process them.

CrystFEL's lab frame has z along the beam and y up; DIALS has z toward the source and y up, so CrystFEL
x = -DIALS x. DIALS fast (+x) is CrystFEL -x and DIALS slow (-y) is CrystFEL -y; the first pixel's corner
lies at (+bx, +by) pixels from the beam.
"""

from __future__ import annotations

from pathlib import Path

from .geometry import Geometry
from .io import write_text_atomic
from .nxmx import DATA_PATH, GAP_BIT, MASK_PATH


def crystfel_geometry_text(geometry: Geometry, adu_per_photon: float = 1.0, dataset: str = "") -> str:
    bx, by = geometry.beam_center_px
    lines = [
        f"; CrystFEL geometry written by braggflow{' for dataset ' + dataset if dataset else ''}",
        f"; detector {geometry.detector_name}: {geometry.n_fast} x {geometry.n_slow} pixels of "
        f"{geometry.pixel_size_m * 1e6:g} um; beam centre (fast, slow) = ({bx:g}, {by:g}) px",
        f"photon_energy = {geometry.energy_kev * 1000.0:.6g}",
        f"clen = {geometry.camera_length_m:.6g}",
        f"res = {1.0 / geometry.pixel_size_m:.6f}",
        f"adu_per_photon = {adu_per_photon:.6g}",
        f"data = {DATA_PATH}",
        "dim0 = %",
        "dim1 = ss",
        "dim2 = fs",
        f"mask = {MASK_PATH}",
        "mask_good = 0x0",
        f"mask_bad = {GAP_BIT:#x}",
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


def write_crystfel_geometry(path: str | Path, geometry: Geometry, adu_per_photon: float = 1.0,
                            dataset: str = "") -> None:
    write_text_atomic(path, crystfel_geometry_text(geometry, adu_per_photon, dataset))
