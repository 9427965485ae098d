"""Kinematic still-diffraction simulator equivalent to nanoBragg, in the DIALS laboratory frame.

Physics (per pixel, expected photons)::

    I = r_e^2 * fluence * < F_cell(hkl)^2 * F_latt(h,k,l)^2 * P * Omega >

where <> is the mean over oversample^2 sub-pixels, sources (wavelength lambda_i, weight w_i, weights
normalised to 1; nanoBragg's equal weights are the special case) and mosaic domains. Fractional
indices are h = A_m^-1 (s1_hat - s0_hat) / lambda with A_m = U_m A (DIALS A = U B, 1/Angstrom, no 2 pi).
Beam along -z (incident unit vector (0, 0, -1)). Conventions follow nanoBragg.c (summarised with line
references in tests/data/nanobragg/CONVENTIONS.md) with one deliberate choice: the solid angle Omega
and the polarization P are evaluated per sub-pixel (the physically right pixel average), not once per
pixel at the first sub-pixel as nanoBragg does; that differs from nanoBragg by ~1e-4 of a pixel's value
at 100 mm / 75 um / oversample 2 (``Numerics(first_subpixel_factors=True)`` reproduces nanoBragg's caching).

Speed (CPU): pass 1 evaluates every pixel once (pixel centre, reference wavelength and orientation)
together with a rigorous upper bound B of any sample's value in that pixel: the lattice transform's
envelope (square: min(N^2, 1/sin^2(pi x)) per axis, including the 1/N^2 streaks) times the largest
F^2 reachable and the geometric factors, over the spread of the fractional indices across sub-pixels,
sources and domains. Pass 2 computes the full average only where B >= rel_tol * (image max), walking
down bands of B until the threshold is below rel_tol times the largest full average found, so every
pixel left at its single-sample value is off by less than rel_tol * max (default 2e-4). Those pixels
carry a few % of the photons; their single-sample values are slightly low on average (the envelope is
convex), which costs ~1e-4 of the total. With one source, one domain and oversample 1 the single sample
is exact and pass 2 is skipped. Work is done in row blocks / pixel batches, so memory stays ~20 bytes
per pixel plus a few MB.

All array work goes through an array module ``xp`` (NumPy, or CuPy with the same code).

The detector is one ``braggflow.detector.Panel`` (re-exported here). Modules: ``still`` (the still's physical
description: Crystal, Pulse, Numerics composed into a Still), ``sf_table`` (structure factors and their F^2 tables),
``backend`` (the array module), ``derived`` (a still on a panel resolved into the kernels' constants), ``kernels`` (elementwise kernels, pass 1 and the full
average), ``image`` (simulate_still), ``truth`` (truth_reflections), ``psf`` (the detector's point-spread).
"""

from ..detector import Panel
from .backend import get_array_module, resolve_backend, to_numpy
from .derived import _make_setup  # private: the tests check pass 1's bound against the full average
from .image import simulate_still
from .kernels import _single_pass_block  # private, as _make_setup
from .psf import PSF_TAIL, apply_psf, gauss_psf_kernel_1d
from .sf_table import StructureFactorTable, load_hkl_text
from .still import (INCIDENT_UNIT, NANOBRAGG_DEFAULT_FLUENCE_PHOTONS_PER_M2, R_E_SQ_M2, SHAPES, Crystal, Numerics,
                    Pulse, Shape, Still, divergent_directions, polarization_basis)
from .truth import TruthTable, panel_candidates, spot_centroids, truth_reflections

__all__ = [
    "INCIDENT_UNIT", "NANOBRAGG_DEFAULT_FLUENCE_PHOTONS_PER_M2", "PSF_TAIL", "R_E_SQ_M2", "SHAPES", "Crystal",
    "Panel", "Numerics", "Pulse", "Shape", "Still", "StructureFactorTable", "TruthTable", "apply_psf",
    "divergent_directions", "gauss_psf_kernel_1d", "get_array_module", "load_hkl_text", "panel_candidates", "polarization_basis",
    "resolve_backend", "simulate_still", "spot_centroids", "to_numpy", "truth_reflections",
]
