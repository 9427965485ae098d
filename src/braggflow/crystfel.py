"""CrystFEL geometry files (.geom) for the same images, so CrystFEL users can process them.

CrystFEL's lab frame has z along the beam and y up; DIALS has z toward the source and y up, so CrystFEL
x = -DIALS x. DIALS fast (+x) is CrystFEL -x and DIALS slow (-y) is CrystFEL -y; the first pixel's corner
lies at (+bx, +by) pixels from the beam.

Checked against CrystFEL 0.12 (libcrystfel datatemplate.c, crystfel_geometry(5)): ``wavelength = <location>
A|m`` takes a per-frame value from the HDF5 file (an array indexed by the frame, '%' = dim0), the unit is
mandatory; ``bandwidth`` is the relative standard deviation of a Gaussian spectrum (not a FWHM).
"""

from __future__ import annotations

from pathlib import Path

from .geometry import Geometry
from .io import write_text_atomic
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
