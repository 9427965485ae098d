"""The dataset matrix: photon energies x camera lengths, named for people and shells (``7keV_250mm``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

ENERGY_LABEL_RE = r"\d+(?:\.\d+)?"
DATASET_RE = rf"{ENERGY_LABEL_RE}keV_\d+(?:\.\d+)?mm"


def _fmt(value: float) -> str:
    # Round away binary noise (0.1 + 0.2 style) so names are stable, then drop trailing zeros.
    return f"{round(float(value), 6):g}"


def energy_label(energy_kev: float) -> str:
    """``7.0 -> '7'``, ``6.5 -> '6.5'`` (the ``{energy}`` wildcard, without the unit)."""
    return _fmt(energy_kev)


def dataset_name(energy_kev: float, camera_length_m: float) -> str:
    """``(7, 0.25) -> '7keV_250mm'``."""
    return f"{_fmt(energy_kev)}keV_{_fmt(camera_length_m * 1000.0)}mm"


@dataclass(frozen=True)
class Dataset:
    name: str
    energy_kev: float
    camera_length_m: float
    index: int  # position in the matrix; part of every random seed of this dataset

    @property
    def energy(self) -> str:
        return energy_label(self.energy_kev)


def expand_matrix(config: dict[str, Any]) -> dict[str, Dataset]:
    """All datasets of the config's matrix, in a fixed order (energies outer, camera lengths inner)."""
    energies = config["matrix"]["photon_energies_kev"]
    lengths = config["matrix"]["camera_lengths_m"]
    datasets: dict[str, Dataset] = {}
    for e in energies:
        for c in lengths:
            name = dataset_name(e, c)
            if name in datasets:
                raise ValueError(
                    f"config key 'matrix': energy {e} keV and camera length {c} m give the dataset name "
                    f"{name!r} twice (values closer than the name's precision)"
                )
            datasets[name] = Dataset(name, float(e), float(c), len(datasets))
    return datasets


def energies(config: dict[str, Any]) -> dict[str, float]:
    """Energy label -> keV for every energy of the matrix."""
    return {energy_label(e): float(e) for e in config["matrix"]["photon_energies_kev"]}


def parse_dataset_name(name: str) -> tuple[float, float]:
    """``'7keV_250mm' -> (7.0, 0.25)``; raises ValueError for other strings."""
    m = re.fullmatch(rf"({ENERGY_LABEL_RE})keV_(\d+(?:\.\d+)?)mm", name)
    if not m:
        raise ValueError(f"not a dataset name: {name!r} (expected e.g. '7keV_250mm')")
    return float(m.group(1)), float(m.group(2)) / 1000.0
