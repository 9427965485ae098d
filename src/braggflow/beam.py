"""The incident beam: photons per pulse, spot size, polarization, and (once a dataset or an experiment gives it)
its wavelength."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from .settings import canonical


BEAM_KEYS = ("photons_per_pulse", "size_um", "polarization_fraction", "polarization_angle_deg", "divergence_mrad",
             "divergence_steps")


@dataclass(frozen=True)
class Beam:
    photons_per_pulse: float
    size_m: tuple[float, float]  # full widths (horizontal, vertical) of a top-hat spot
    polarization_fraction: float  # fraction of the intensity with its E-vector in the polarization plane
    polarization_angle_deg: float  # E-vector direction: from lab x (detector fast) toward lab +y
    wavelength_angstrom: float | None = None  # central wavelength: None for the config's beam, set per dataset
    divergence_mrad: tuple[float, float] = (0.0, 0.0)  # full angular ranges (horizontal, vertical)
    divergence_steps: tuple[int, int] = (1, 1)  # incident directions sampled per axis (nanoBragg's -h/-vdivsteps)

    def __post_init__(self):
        if not self.photons_per_pulse > 0:
            raise ValueError(f"beam.photons_per_pulse must be > 0, got {self.photons_per_pulse}")
        if not (self.size_m[0] > 0 and self.size_m[1] > 0):
            raise ValueError(f"beam.size_um must be > 0, got {[s * 1e6 for s in self.size_m]}")
        if not 0.0 <= self.polarization_fraction <= 1.0:
            raise ValueError(f"beam.polarization_fraction must be in [0, 1], got {self.polarization_fraction}")
        if self.wavelength_angstrom is not None and not self.wavelength_angstrom > 0:
            raise ValueError(f"beam wavelength must be > 0 A, got {self.wavelength_angstrom}")
        object.__setattr__(self, "divergence_mrad", tuple(float(v) for v in self.divergence_mrad))
        object.__setattr__(self, "divergence_steps", tuple(int(v) for v in self.divergence_steps))
        if not all(v >= 0 and math.isfinite(v) for v in self.divergence_mrad):
            raise ValueError(f"beam.divergence_mrad must be >= 0, got {list(self.divergence_mrad)}")
        if not all(v >= 1 for v in self.divergence_steps):
            raise ValueError(f"beam.divergence_steps must be >= 1, got {list(self.divergence_steps)}")

    @property
    def divergent(self) -> bool:
        return any(r > 0 and n > 1 for r, n in zip(self.divergence_mrad, self.divergence_steps))

    def sources(self, wavelengths_angstrom, weights):
        """The pulse's sources: every spectrum sample (wavelengths, weights) from every incident direction of the
        divergent beam (nanoBragg's elliptical grid, equal weights): (wavelengths, weights, directions or None)."""
        import numpy as np

        from .simulator import divergent_directions

        lam, w = np.asarray(wavelengths_angstrom, float), np.asarray(weights, float)
        if not self.divergent:
            return lam, w, None
        dirs = divergent_directions(self.divergence_mrad[0] * 1e-3, self.divergence_mrad[1] * 1e-3,
                                    self.divergence_steps[0], self.divergence_steps[1], self.polarization_axis)
        n = len(dirs)
        return np.repeat(lam, n), np.repeat(w, n) / n, np.tile(dirs, (len(lam), 1))

    def at_wavelength(self, wavelength_angstrom: float) -> "Beam":
        """This beam at a dataset's or an experiment's central wavelength."""
        return replace(self, wavelength_angstrom=float(wavelength_angstrom))

    @property
    def wavelength(self) -> float:
        """The central wavelength (A); raises for the config's beam, which has none until a dataset gives it."""
        if self.wavelength_angstrom is None:
            raise ValueError("this beam has no wavelength yet: Beam.at_wavelength(...) gives it one")
        return self.wavelength_angstrom

    @property
    def fluence_per_m2(self) -> float:
        return self.photons_per_pulse / (self.size_m[0] * self.size_m[1])

    @property
    def kahn_factor(self) -> float:
        """(I_parallel - I_perpendicular) / total: nanoBragg's K, pyFAI's polarization factor."""
        return 2.0 * self.polarization_fraction - 1.0

    @property
    def polarization_angle_rad(self) -> float:
        return math.radians(self.polarization_angle_deg)

    @property
    def polarization_axis(self) -> tuple[float, float, float]:
        """The E-vector direction (angle from lab x toward lab y), normal to the beam along -z."""
        return (math.cos(self.polarization_angle_rad), math.sin(self.polarization_angle_rad), 0.0)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size_m"] = list(self.size_m)
        d["divergence_mrad"], d["divergence_steps"] = list(self.divergence_mrad), list(self.divergence_steps)
        if d["wavelength_angstrom"] is None:
            del d["wavelength_angstrom"]  # the config's beam: provenance as before a wavelength was known
        return d

    @staticmethod
    def params(beam_cfg: dict[str, Any]) -> dict[str, Any]:
        """What a rule records of the ``beam`` section (every key makes bytes), in a fixed order."""
        return {k: canonical(beam_cfg[k]) for k in BEAM_KEYS}

    @classmethod
    def from_config(cls, beam_cfg: dict[str, Any]) -> "Beam":
        return cls(
            photons_per_pulse=float(beam_cfg["photons_per_pulse"]),
            size_m=(beam_cfg["size_um"][0] * 1e-6, beam_cfg["size_um"][1] * 1e-6),
            polarization_fraction=float(beam_cfg["polarization_fraction"]),
            polarization_angle_deg=float(beam_cfg["polarization_angle_deg"]),
            divergence_mrad=tuple(beam_cfg["divergence_mrad"]),
            divergence_steps=tuple(beam_cfg["divergence_steps"]),
        )
