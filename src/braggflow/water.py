"""Expected photons per pixel scattered by the liquid-water jet.

photons(pixel) = N_photons/A_beam * (n_water * t_jet * A_beam) * r_e^2 * |F(q)|^2 * Omega * P
              = N_photons * n_water * t_jet * r_e^2 * |F(q)|^2 * Omega * P
with |F(q)|^2 per molecule (e^2) from the tabulated liquid-water scattering, and q, the solid angle Omega and
the Kahn polarization factor P at each pixel centre of the detector model (``braggflow.detector``; the
simulator's Omega = pixel^2 close_distance / R^3 and polarization). One model for every detector: the matrix's
single panel and an experiment's panels alike (tests check it against pyFAI's geometry). The beam area cancels
while the jet is wider than the beam.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .beam import Beam
from .errors import InputError
from .detector import Detector, Panel
from .geometry import Geometry
from .simulator import polarization_basis
from .units import R_E_SQUARED_M2

WATER_NUMBER_DENSITY_PER_M3 = 33.37e27  # liquid water, 25 C


def load_water_table(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(q in 1/A, |F(q)|^2 in e^2) from a CSV with columns q_inv_angstrom, f2_electrons2 ('#' comments)."""
    import pandas as pd  # here, not at the top: the overlay jobs read backgrounds and start faster without it

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


def pixel_factors(panel: Panel, beam: Beam) -> tuple[np.ndarray, np.ndarray]:
    """(q in 1/A, Omega * P) at every pixel centre of a panel, (slow, fast) float64, for the beam along -z:
    the simulator's solid angle (pixel area x close_distance / R^3) and Kahn polarization with the beam's E vector."""
    pos = np.moveaxis(panel.pixel_centres_lab(), -1, 0)
    r = np.sqrt(np.sum(pos * pos, axis=0))
    d = pos / r
    cos2t = -d[2]  # incident (0, 0, -1)
    q = 4.0 * np.pi * np.sqrt(np.clip((1.0 - cos2t) / 2.0, 0.0, None)) / beam.wavelength
    pf, ps = panel.pixel_mm
    omega = pf * ps * panel.close_distance_mm / r**3
    e_in, b_in = polarization_basis(beam.polarization_axis)
    de, db = np.tensordot(e_in, d, 1), np.tensordot(b_in, d, 1)
    pol = 0.5 * (1.0 + cos2t**2 - beam.kahn_factor * (de * de - db * db))
    return q, omega * pol


def water_photons(detector: Detector, beam: Beam, jet_thickness_m: float,
                  table_path: str | Path, number_density_per_m3: float = WATER_NUMBER_DENSITY_PER_M3
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(photons, q in 1/A), each (panels, slow, fast) float64: expected water photons per pixel per pulse on a
    detector whose panels are in the frame where the beam runs along -z, for a beam that knows its wavelength."""
    if not jet_thickness_m > 0:
        raise ValueError(f"water jet_thickness must be > 0 m, got {jet_thickness_m!r}")
    q_tab, f2_tab = load_water_table(table_path)
    scale = beam.photons_per_pulse * number_density_per_m3 * jet_thickness_m * R_E_SQUARED_M2
    photons, qs = [], []
    for panel in detector:
        q, omega_pol = pixel_factors(panel, beam)
        if q.max() > q_tab[-1]:
            raise InputError(table_path, f"water table ends at q = {q_tab[-1]:g} 1/A but the detector reaches "
                                         f"{q.max():.3f} 1/A (wavelength {beam.wavelength:.4f} A)")
        photons.append(scale * np.interp(q, q_tab, f2_tab) * omega_pol)
        qs.append(q)
    return np.stack(photons), np.stack(qs)


@dataclass
class WaterBackground:
    photons: np.ndarray  # (slow, fast) float32 expected photons per pixel per pulse; 0 in gaps
    q_inv_angstrom: np.ndarray  # (slow, fast) float32
    mask: np.ndarray  # (slow, fast) bool, True = gap / not sensitive
    geometry: Geometry
    params: dict = field(default_factory=dict)


def water_image(geometry: Geometry, beam: Beam, jet_thickness_m: float, table_path: str | Path,
                number_density_per_m3: float = WATER_NUMBER_DENSITY_PER_M3) -> WaterBackground:
    """The water background of a dataset: its one panel, 0 in the module gaps pyFAI's definition marks."""
    photons, q = water_photons(geometry.detector(), beam.at_wavelength(geometry.wavelength_angstrom), jet_thickness_m,
                               table_path, number_density_per_m3)
    photons, q = photons[0], q[0]
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
