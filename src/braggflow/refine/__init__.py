"""Refinement against the pixels with a differentiable forward model (diffBragg's job, in braggflow's physics).

``model``: the simulator's physics in PyTorch (expected photons at chosen pixels, differentiable); ``cell``: unit
cells under their lattice's constraints and the B matrix as torch functions; ``stills``: per-still refinement
(orientation, cell, Ncells, scale, photon energy, background per shoebox) by the likelihood of the counts.
Imports torch; nothing else in braggflow needs these modules.
"""
