"""The one stills predictor: where the reflections of a still land on a detector, as DIALS' StillsReflectionPredictor
puts them (the crystal's A matrix, the beam, the detector's panels; ``braggflow.detector`` for the lab frame).

The simulator's truth table (``simulator.truth``) is not a prediction: it is the centroid of the simulated spot
over spectrum samples and mosaic domains, which is what a prediction is scored against.
"""

from __future__ import annotations

import numpy as np

from .detector import Detector, two_theta_rad


def predicted_positions(a_matrix: np.ndarray, hkl: np.ndarray, panel: np.ndarray, panels: Detector,
                        beam_direction: np.ndarray, wavelength_angstrom: float, distance_shift_mm: float = 0.0,
                        parallax: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Stills prediction of reflections hkl (n, 3) on their panels, as DIALS' StillsReflectionPredictor does it:
    q = A h rotated about q x s0 onto the Ewald sphere of the given wavelength (|q| kept), s1 = s0 + q', the ray
    met by the panel planes moved ``distance_shift_mm`` along the beam. ``parallax``: (mu 1/mm, t0 mm) per panel,
    dxtbx's parallax correction (ParallaxCorrectedPxMmStrategy), which DIALS' pixel positions include."""
    b = np.asarray(beam_direction, float) / np.linalg.norm(beam_direction)
    k = 1.0 / wavelength_angstrom
    s0 = b * k
    q = np.asarray(hkl, float) @ np.asarray(a_matrix, float).reshape(3, 3).T
    perp = q - np.outer(q @ b, b)
    qq = np.einsum("ij,ij->i", q, q)
    along = qq / (2 * k)  # |s0 + q'| = |s0|  <=>  q'.b = -|q|^2 / (2 |s0|)
    with np.errstate(invalid="ignore", divide="ignore"):
        s1 = s0 - along[:, None] * b + (np.sqrt(qq - along**2) / np.linalg.norm(perp, axis=1))[:, None] * perp
    p = np.asarray(panel, int)
    xy = panels.intersect(p, s1, b * distance_shift_mm)
    if parallax is None:
        return xy
    mu, t0 = np.asarray(parallax[0], float)[p], np.asarray(parallax[1], float)[p]
    u = s1 / np.linalg.norm(s1, axis=1, keepdims=True)
    normal = panels.normal[p] * np.sign(np.einsum("ij,ij->i", panels.origin_mm[p], panels.normal[p]))[:, None]
    cos = np.einsum("ij,ij->i", u, normal)
    # Only rays that enter a sensor from its front have a depth; the others (cos <= 0, which a wrong energy or
    # distance can predict) meet no panel, and their exp(-mu t0 / cos) would overflow.
    entering = (mu > 0) & (cos > 0)
    c, m = np.where(entering, cos, 1.0), np.where(entering, mu, 1.0)
    depth = np.where(entering, 1 / m - (t0 / c + 1 / m) * np.exp(-m * t0 / c), 0.0)
    shift = np.column_stack([np.einsum("ij,ij->i", u, panels.fast_axis[p]),
                             np.einsum("ij,ij->i", u, panels.slow_axis[p])]) * depth[:, None]
    return xy + shift / panels.pixel_size_mm[p]


def resolution_angstrom(lab_mm: np.ndarray, beam_direction: np.ndarray, wavelength_angstrom: float) -> np.ndarray:
    """d (A) of lab positions (n, 3) seen from the sample with the given beam."""
    with np.errstate(divide="ignore"):
        return wavelength_angstrom / (2.0 * np.sin(two_theta_rad(lab_mm, beam_direction) / 2.0))
