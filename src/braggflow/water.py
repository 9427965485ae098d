"""Expected photons per pixel scattered by the liquid-water jet.

photons(pixel) = N_photons/A_beam * (n_water * t_jet * A_beam) * r_e^2 * |F(q)|^2 * Omega * P
              = N_photons * n_water * t_jet * r_e^2 * |F(q)|^2 * Omega * P
with |F(q)|^2 per molecule (e^2) from the tabulated liquid-water scattering, and q, the solid angle Omega and
the polarization factor P of each pixel from pyFAI's geometry. The beam area cancels while the jet is
wider than the beam.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from .beam import Beam
from .errors import InputError
from .geometry import Geometry
from .atomicplot import save_figure
from .io import atomic_path
from .units import R_E_SQUARED_M2

WATER_NUMBER_DENSITY_PER_M3 = 33.37e27  # liquid water, 25 C


def load_water_table(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(q in 1/A, |F(q)|^2 in e^2) from a CSV with columns q_inv_angstrom, f2_electrons2 ('#' comments)."""
    path = Path(path)
    try:
        table = pd.read_csv(path, comment="#")
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(path, f"unreadable water table: {exc}") from None
    for col in ("q_inv_angstrom", "f2_electrons2"):
        if col not in table.columns:
            raise InputError(path, f"water table lacks column {col!r} (has {list(table.columns)})")
    q = table["q_inv_angstrom"].to_numpy(float)
    f2 = table["f2_electrons2"].to_numpy(float)
    if len(q) < 2 or not np.all(np.isfinite(q)) or not np.all(np.isfinite(f2)):
        raise InputError(path, "water table needs at least two rows of finite numbers")
    if np.any(np.diff(q) <= 0):
        raise InputError(path, "water table q values must increase strictly")
    if np.any(f2 < 0):
        raise InputError(path, "water table has negative |F(q)|^2")
    return q, f2


def pyfai_geometry(geometry: Geometry):
    """pyFAI geometry with the point of normal incidence at the beam centre (no detector tilt)."""
    from pyFAI.geometry import Geometry as PyFAIGeometry

    px = geometry.pixel_size_m
    bx, by = geometry.beam_center_px
    return PyFAIGeometry(dist=geometry.camera_length_m, poni1=by * px, poni2=bx * px,
                         detector=geometry.pyfai_detector(), wavelength=geometry.wavelength_angstrom * 1e-10)


def pixel_arrays(geometry: Geometry, beam: Beam) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q in 1/A, solid angle in sr, polarization factor) per pixel, each (slow, fast) float64."""
    ai = pyfai_geometry(geometry)
    q = ai.qArray() / 10.0  # pyFAI gives 1/nm
    omega = ai.solidAngleArray(absolute=True)
    # pyFAI's factor is Kahn's K; its axis_offset runs from the detector fast axis toward lab +y.
    pol = ai.polarization(factor=beam.kahn_factor, axis_offset=beam.polarization_angle_rad)
    return np.asarray(q, float), np.asarray(omega, float), np.asarray(pol, float)


@dataclass
class WaterBackground:
    photons: np.ndarray  # (slow, fast) float32 expected photons per pixel per pulse; 0 in gaps
    q_inv_angstrom: np.ndarray  # (slow, fast) float32
    mask: np.ndarray  # (slow, fast) bool, True = gap / not sensitive
    geometry: Geometry
    params: dict = field(default_factory=dict)


def water_image(geometry: Geometry, beam: Beam, jet_thickness_m: float, table_path: str | Path,
                number_density_per_m3: float = WATER_NUMBER_DENSITY_PER_M3) -> WaterBackground:
    if not jet_thickness_m > 0:
        raise ValueError(f"water.jet_thickness_um must be > 0, got {jet_thickness_m * 1e6}")
    q_tab, f2_tab = load_water_table(table_path)
    q, omega, pol = pixel_arrays(geometry, beam)
    if q.max() > q_tab[-1]:
        raise InputError(table_path, f"water table ends at q = {q_tab[-1]:g} 1/A but the detector reaches "
                                     f"{q.max():.3f} 1/A ({geometry.energy_kev:g} keV, {geometry.camera_length_m:g} m)")
    scale = beam.photons_per_pulse * number_density_per_m3 * jet_thickness_m * R_E_SQUARED_M2
    photons = scale * np.interp(q, q_tab, f2_tab) * omega * pol
    mask = geometry.gap_mask()
    photons[mask] = 0.0
    params = {
        "jet_thickness_m": jet_thickness_m,
        "number_density_per_m3": number_density_per_m3,
        "beam": beam.as_dict(),
        "fluence_per_m2": beam.fluence_per_m2,
        "r_e_squared_m2": R_E_SQUARED_M2,
        "table": Path(table_path).name,
        "table_sha256": hashlib.sha256(Path(table_path).read_bytes()).hexdigest(),
    }
    return WaterBackground(photons.astype(np.float32), q.astype(np.float32), mask, geometry, params)


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
    with h5py.File(path, "r") as f:
        return WaterBackground(f["water_photons"][()], f["q_inv_angstrom"][()], f["pixel_mask"][()].astype(bool),
                               Geometry.from_dict(json.loads(f.attrs["geometry"])), json.loads(f.attrs["params"]))


def plot_background(path: str | Path, bg: WaterBackground, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    img = np.ma.masked_where(bg.mask | (bg.photons <= 0), bg.photons)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.1, 1]})
    fig.subplots_adjust(left=0.06, right=0.98, wspace=0.35)
    im = ax1.imshow(img, norm=LogNorm(vmin=max(img.min(), img.max() * 1e-2), vmax=img.max()), cmap="magma",
                    origin="upper", interpolation="nearest")
    fig.colorbar(im, ax=ax1, label="photons / pixel / pulse")
    bx, by = bg.geometry.beam_center_px
    ax1.plot([bx], [by], "c+", ms=10)
    ax1.set(xlabel="fast (px)", ylabel="slow (px)", title=title or "water background")
    good = ~bg.mask
    order = np.argsort(bg.q_inv_angstrom[good])
    qs, ps = bg.q_inv_angstrom[good][order], bg.photons[good][order]
    edges = np.linspace(qs[0], qs[-1], 200)
    idx = np.digitize(qs, edges)
    prof = np.array([ps[idx == i].mean() if np.any(idx == i) else np.nan for i in range(1, len(edges))])
    ax2.plot(0.5 * (edges[1:] + edges[:-1]), prof)
    ax2.axvline(2.05, color="grey", ls=":", label="q = 2.05 1/Å (water peak)")
    ax2.set(xlabel="q (1/Å)", ylabel="mean photons / pixel", title="azimuthal average")
    ax2.legend()
    save_figure(fig, path, dpi=90)
