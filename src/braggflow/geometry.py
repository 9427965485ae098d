"""Per-dataset experiment geometry: detector (from pyFAI's definitions), camera length, beam centre, energy.

Conventions (DIALS / dxtbx): continuous pixel coordinates with pixel i covering [i, i+1); beam centre given
as (fast, slow) px; lab frame with the beam along -z and the detector at z = -camera length.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .detector import Detector, Panel
from .matrix import Dataset
from .units import wavelength_angstrom


@functools.lru_cache(maxsize=8)
def _pyfai_detector(name: str):
    import pyFAI.detectors

    try:
        return pyFAI.detector_factory(name)
    except Exception as exc:  # pyFAI raises a bare RuntimeError for unknown names
        known = ", ".join(sorted(n for n in pyFAI.detectors.ALL_DETECTORS if n.lower().startswith("eiger")))
        raise ValueError(f"config key 'detector.pyfai_name': unknown pyFAI detector {name!r} ({exc}); e.g. {known}") from None


@dataclass(frozen=True)
class Geometry:
    detector_name: str
    n_fast: int
    n_slow: int
    pixel_size_m: float
    camera_length_m: float
    beam_center_px: tuple[float, float]  # (fast, slow), DIALS continuous pixel coordinates
    energy_kev: float
    sensor_material: str
    sensor_thickness_mm: float

    @property
    def wavelength_angstrom(self) -> float:
        return wavelength_angstrom(self.energy_kev)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["beam_center_px"] = list(self.beam_center_px)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Geometry":
        d = dict(d)
        d["beam_center_px"] = tuple(d["beam_center_px"])
        return cls(**d)

    def panel(self) -> Panel:
        """The detector as one flat panel normal to the beam (dxtbx lab frame: beam along -z, fast = +x, slow = -y)."""
        return Panel.from_beam_center(self.camera_length_m * 1e3, self.beam_center_px, self.pixel_size_m * 1e3,
                                      self.n_fast, self.n_slow)

    def detector(self) -> Detector:
        return Detector((self.panel(),))

    def d_min_angstrom(self) -> float:
        """Finest resolution the detector records (its corner)."""
        return self.detector().d_min_angstrom(self.wavelength_angstrom)

    def pyfai_detector(self):
        return _pyfai_detector(self.detector_name)

    def gap_mask(self) -> np.ndarray:
        """(slow, fast) bool, True where pyFAI marks the pixel as not sensitive (module gaps)."""
        mask = self.pyfai_detector().mask
        if mask is None:
            return np.zeros((self.n_slow, self.n_fast), dtype=bool)
        return np.asarray(mask, dtype=bool)


def dataset_geometry(config: dict[str, Any], dataset: Dataset) -> Geometry:
    det_cfg = config["detector"]
    det = _pyfai_detector(det_cfg["pyfai_name"])
    n_slow, n_fast = det.shape
    if abs(det.pixel1 - det.pixel2) > 1e-12:
        raise ValueError(f"config key 'detector.pyfai_name': {det_cfg['pyfai_name']} has non-square pixels")
    centre = det_cfg.get("beam_center_px")
    beam = (n_fast / 2.0, n_slow / 2.0) if centre is None else (float(centre[0]), float(centre[1]))
    return Geometry(
        detector_name=det_cfg["pyfai_name"],
        n_fast=int(n_fast),
        n_slow=int(n_slow),
        pixel_size_m=float(det.pixel1),
        camera_length_m=dataset.camera_length_m,
        beam_center_px=beam,
        energy_kev=dataset.energy_kev,
        sensor_material=det_cfg["sensor_material"],
        sensor_thickness_mm=float(det_cfg["sensor_thickness_mm"]),
    )
