"""Per-dataset experiment geometry: detector (from pyFAI's definitions), camera length, beam centre, energy.

Conventions (DIALS / dxtbx): continuous pixel coordinates with pixel i covering [i, i+1); beam centre given
as (fast, slow) px; lab frame with the beam along -z and the detector at z = -camera length.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, replace
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
    # Insensitive rows and columns (module gaps) as half-open pixel intervals ((slow ...), (fast ...)), read from
    # pyFAI's mask once where it is made of whole rows and columns: a job then builds the mask without importing
    # pyFAI (~1.9 CPU-s per process). None: ask pyFAI for the detector's mask.
    module_gaps_px: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]] | None = None

    def __post_init__(self) -> None:
        if self.module_gaps_px is not None:
            object.__setattr__(self, "module_gaps_px", _gap_intervals(self.module_gaps_px, self.n_slow, self.n_fast))

    @property
    def wavelength_angstrom(self) -> float:
        return wavelength_angstrom(self.energy_kev)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["beam_center_px"] = list(self.beam_center_px)
        if self.module_gaps_px is None:
            del d["module_gaps_px"]  # geometries without the intervals keep their old dictionary
        else:
            d["module_gaps_px"] = [[list(g) for g in axis] for axis in self.module_gaps_px]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Geometry":
        d = dict(d)
        d["beam_center_px"] = tuple(d["beam_center_px"])
        return cls(**d)

    def panel(self, sensor: bool = False) -> Panel:
        """The detector as one flat panel normal to the beam (dxtbx lab frame: beam along -z, fast = +x, slow = -y);
        ``sensor``: with the sensor's thickness and attenuation at this energy (else a thin sensor)."""
        panel = Panel.from_beam_center(self.camera_length_m * 1e3, self.beam_center_px, self.pixel_size_m * 1e3,
                                       self.n_fast, self.n_slow)
        if not sensor:
            return panel
        return replace(panel, thickness_mm=self.sensor_thickness_mm, mu_per_mm=self.sensor_mu_per_mm())

    def sensor_mu_per_mm(self) -> float:
        """The sensor's linear attenuation coefficient at this energy (xraydb's tables, the material's density;
        within 0.2 % of the cctbx table dxtbx corrects the parallax with, for Si at 6-13 keV)."""
        return sensor_mu_per_mm(self.sensor_material, self.energy_kev)

    def detector(self) -> Detector:
        return Detector((self.panel(),))

    def d_min_angstrom(self) -> float:
        """Finest resolution the detector records (its corner)."""
        return self.detector().d_min_angstrom(self.wavelength_angstrom)

    def pyfai_detector(self):
        return _pyfai_detector(self.detector_name)

    def gap_mask(self) -> np.ndarray:
        """(slow, fast) bool, True where pyFAI marks the pixel as not sensitive (module gaps)."""
        if self.module_gaps_px is not None:
            mask = np.zeros((self.n_slow, self.n_fast), dtype=bool)
            for start, stop in self.module_gaps_px[0]:
                mask[start:stop] = True
            for start, stop in self.module_gaps_px[1]:
                mask[:, start:stop] = True
            return mask
        mask = self.pyfai_detector().mask
        if mask is None:
            return np.zeros((self.n_slow, self.n_fast), dtype=bool)
        return np.asarray(mask, dtype=bool)


def sensor_mu_per_mm(material: str, energy_kev: float) -> float:
    """Linear attenuation coefficient (1/mm) of a sensor material (a formula xraydb knows: Si, CdTe, GaAs, Ge, ...)
    at a photon energy."""
    import xraydb

    try:
        _, density = xraydb.get_material(material)
    except Exception:
        density = None
    if density is None:
        raise ValueError(f"config key 'detector.sensor_material': {material!r} is not a material xraydb knows "
                         "(e.g. Si, CdTe, GaAs)")
    return float(xraydb.material_mu(material, energy_kev * 1e3, density=density)) / 10.0  # 1/cm -> 1/mm


def _gap_intervals(value: Any, n_slow: int, n_fast: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Validated module_gaps_px: two lists (slow, fast) of [start, stop) pixel intervals inside the detector."""
    try:
        slow, fast = value
        out = tuple(tuple((int(a), int(b)) for a, b in axis) for axis in (slow, fast))
    except (TypeError, ValueError):
        raise ValueError(f"geometry key 'module_gaps_px': expected two lists of [start, stop] pixel intervals, "
                         f"got {value!r}") from None
    for axis, n in zip(out, (n_slow, n_fast)):
        for a, b in axis:
            if not 0 <= a < b <= n:
                raise ValueError(f"geometry key 'module_gaps_px': interval [{a}, {b}) lies outside 0..{n}")
    return out  # type: ignore[return-value]


def separable_gaps(mask: np.ndarray | None, shape: tuple[int, int]
                   ) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]] | None:
    """``mask`` (slow, fast) as whole insensitive rows and columns, or None where it is not only those."""
    if mask is None:
        return (), ()
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(shape):
        return None
    rows, cols = mask.all(axis=1), mask.all(axis=0)
    if not np.array_equal(mask, rows[:, None] | cols[None, :]):
        return None

    def runs(flags: np.ndarray) -> tuple[tuple[int, int], ...]:
        edges = np.flatnonzero(np.diff(np.concatenate(([0], flags.astype(np.int8), [0]))))
        return tuple((int(a), int(b)) for a, b in edges.reshape(-1, 2))

    return runs(rows), runs(cols)


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
        module_gaps_px=separable_gaps(det.mask, (int(n_slow), int(n_fast))),
    )
