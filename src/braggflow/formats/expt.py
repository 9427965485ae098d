"""DIALS experiment lists (``.expt``, dxtbx's ExperimentList JSON), written without DIALS.

One experiment per still: its beam (dxtbx's ``direction`` points from the sample to the source, s0 = -direction /
wavelength), its detector (flat panels under a root group; a sensor's thickness and attenuation where the
export knew them, with dxtbx's parallax strategy then), its crystal (real-space axes a, b, c: the rows of A^-1,
and the space group's Hall symbol) and its image (one frame of an image file, by index). DIALS reads the file
with ``ExperimentListFactory.from_json_file``; with the image file present, dials.image_viewer, dials.predict
and dials.integrate take it. Stills: no goniometer, no scan.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..detector import Panel
from ..io import atomic_path


@dataclass(frozen=True)
class ExptStill:
    """What one experiment of the list holds."""

    a_matrix: np.ndarray  # (3, 3) A = UB, lab frame, 1/A
    space_group_hall: str
    wavelength_angstrom: float
    beam_direction: np.ndarray  # unit, along the beam (sample -> detector)
    panels: Sequence[Panel]
    image_path: str
    image_index: int
    identifier: str = ""
    polarization_fraction: float = 0.999
    polarization_angle_deg: float = 0.0  # the E-vector from lab x toward +y (braggflow.beam)
    sensor_thickness_mm: Sequence[float] | None = None  # per panel; with mu, dxtbx's parallax correction
    sensor_mu_per_mm: Sequence[float] | None = None
    trusted_range: tuple[float, float] = (-1.0, 65535.0)


def _vec(v) -> list[float]:
    return [float(x) for x in np.asarray(v, float).ravel()]


def _panel(p: Panel, thickness: float, mu: float, trusted: tuple[float, float]) -> dict:
    # an unknown sensor (NaN in a DIALS export) is written as none: JSON has no NaN
    thickness, mu = (v if np.isfinite(v) else 0.0 for v in (thickness, mu))
    parallax = thickness > 0 and mu > 0
    return {"name": p.name, "type": "SENSOR_PAD", "fast_axis": _vec(p.fast_axis), "slow_axis": _vec(p.slow_axis),
            "origin": _vec(p.origin_mm), "raw_image_offset": [0, 0], "image_size": [p.n_fast, p.n_slow],
            "pixel_size": [float(v) for v in p.pixel_mm], "trusted_range": [float(v) for v in trusted],
            "thickness": float(thickness), "material": "Si" if parallax else "", "mu": float(mu),
            "identifier": "", "mask": [], "gain": 1.0, "pedestal": 0.0,
            "px_mm_strategy": {"type": "ParallaxCorrectedPxMmStrategy" if parallax else "SimplePxMmStrategy"}}


def _detector(s: ExptStill) -> dict:
    n = len(s.panels)
    t = list(s.sensor_thickness_mm) if s.sensor_thickness_mm is not None else [0.0] * n
    mu = list(s.sensor_mu_per_mm) if s.sensor_mu_per_mm is not None else [0.0] * n
    root = {"name": "", "type": "", "fast_axis": [1.0, 0.0, 0.0], "slow_axis": [0.0, 1.0, 0.0],
            "origin": [0.0, 0.0, 0.0], "raw_image_offset": [0, 0], "image_size": [0, 0], "pixel_size": [0.0, 0.0],
            "trusted_range": [0.0, 0.0], "thickness": 0.0, "material": "", "mu": 0.0, "identifier": "", "mask": [],
            "gain": 1.0, "pedestal": 0.0, "px_mm_strategy": {"type": "SimplePxMmStrategy"},
            "children": [{"panel": i} for i in range(n)]}
    return {"panels": [_panel(p, float(t[i]), float(mu[i]), s.trusted_range) for i, p in enumerate(s.panels)],
            "hierarchy": root}


def experiment_list(stills: Sequence[ExptStill], image_dir: str | Path = ".") -> dict:
    """The ExperimentList document of ``stills``, image paths relative to ``image_dir`` (dxtbx resolves a relative
    path against the .expt file's directory: the file stays valid wherever the results move, and its bytes do not
    depend on the checkout's location)."""
    doc = {"__id__": "ExperimentList", "experiment": [], "imageset": [], "beam": [], "detector": [],
           "goniometer": [], "scan": [], "crystal": [], "profile": [], "scaling_model": []}
    for i, s in enumerate(stills):
        a = np.asarray(s.a_matrix, float).reshape(3, 3)
        if not np.all(np.isfinite(a)) or abs(np.linalg.det(a)) < 1e-30:
            raise ValueError(f"experiment {i}: A matrix {a.tolist()} is not invertible")
        real = np.linalg.inv(a)  # rows: a, b, c
        direction = np.asarray(s.beam_direction, float)
        direction = direction / np.linalg.norm(direction)
        path = os.path.relpath(s.image_path, image_dir)
        angle = np.radians(s.polarization_angle_deg)
        doc["experiment"].append({"__id__": "Experiment", "identifier": s.identifier, "beam": i, "detector": i,
                                  "crystal": i, "imageset": i})
        doc["imageset"].append({"__id__": "ImageSet", "images": [path], "mask": "", "gain": "", "pedestal": "",
                                "dx": "", "dy": "", "single_file_indices": [int(s.image_index)], "params": {}})
        doc["beam"].append({"direction": _vec(-direction), "wavelength": float(s.wavelength_angstrom),
                            "divergence": 0.0, "sigma_divergence": 0.0, "polarization_normal": [float(-np.sin(angle)), float(np.cos(angle)), 0.0],
                            "polarization_fraction": float(s.polarization_fraction), "flux": 0.0,
                            "transmission": 1.0})
        doc["detector"].append(_detector(s))
        doc["crystal"].append({"__id__": "crystal", "real_space_a": _vec(real[0]), "real_space_b": _vec(real[1]),
                               "real_space_c": _vec(real[2]), "space_group_hall_symbol": s.space_group_hall})
    return doc


def write_expt(path: str | Path, stills: Sequence[ExptStill]) -> None:
    """The experiment list of ``stills`` as ``path``, atomically (image paths relative to its directory)."""
    doc = experiment_list(stills, os.path.dirname(os.path.abspath(path)))
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=1) + "\n")
