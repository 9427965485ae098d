"""Physical constants and unit conversions used across braggflow."""

from __future__ import annotations

# h*c in keV*Angstrom (CODATA 2018): lambda[A] = HC_KEV_ANGSTROM / E[keV]
HC_KEV_ANGSTROM = 12.398419843320026
# Classical electron radius squared, m^2 (the value nanoBragg uses).
R_E_SQUARED_M2 = 7.94079248018965e-30


def wavelength_angstrom(energy_kev: float) -> float:
    return HC_KEV_ANGSTROM / energy_kev


def energy_kev(wavelength_angstrom: float) -> float:
    return HC_KEV_ANGSTROM / wavelength_angstrom
