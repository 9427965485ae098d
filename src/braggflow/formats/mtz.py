"""MTZ files of structure factors (``results/structure_factors/{structure}/{energy}keV.mtz``,
``results/matched/{experiment}/structure_factors.mtz``): written and read here only.

Columns: H K L, the anomalous amplitudes and phases F(+) PHI(+) F(-) PHI(-), then intensities |F|^2 (I the Bijvoet
mean, SIGI, I(+), SIGI(+), I(-), SIGI(-)); one dataset "calc" at the photon energy's wavelength.
"""

from __future__ import annotations

from pathlib import Path

import gemmi
import numpy as np

from ..errors import InputError
from ..io import atomic_path


MTZ_COLUMNS = (("F(+)", "G"), ("PHI(+)", "P"), ("F(-)", "G"), ("PHI(-)", "P"))
# Intensities after the amplitudes, for programs that read only intensities: CrystFEL (get_hkl, pattern_sim,
# compare_hkl) looks up exactly I and SIGI.
MTZ_INTENSITY_COLUMNS = (("I", "J"), ("SIGI", "Q"), ("I(+)", "K"), ("SIGI(+)", "M"), ("I(-)", "K"),
                         ("SIGI(-)", "M"))


def stored_sigma(values: np.ndarray) -> np.ndarray:
    """The sigma of a calculated (exact) value: its float32 rounding, one unit in the last place. Zero sigmas
    would not do: gemmi and CCP4 programs drop every reflection with sigma <= 0."""
    v = np.abs(np.asarray(values, dtype=np.float32))
    return np.maximum(np.spacing(v), np.finfo(np.float32).tiny)


def write_mtz(path: str | Path, model, table, energy_kev: float) -> None:
    """``table`` (a ``braggflow.sf.SfTable``) of ``model`` (a ``braggflow.structures.CrystalModel``) at
    ``energy_kev``, atomically; sigmas: stored_sigma. gemmi, cctbx, DIALS and CrystFEL read it."""
    from ..units import wavelength_angstrom

    mtz = gemmi.Mtz(with_base=True)
    mtz.title = f"braggflow structure factors of {Path(model.source).name} at {energy_kev:g} keV"
    mtz.spacegroup = model.spacegroup
    mtz.set_cell_for_all(model.gemmi_cell)
    ds = mtz.add_dataset("calc")
    ds.wavelength = wavelength_angstrom(energy_kev)
    for label, kind in MTZ_COLUMNS + MTZ_INTENSITY_COLUMNS:
        mtz.add_column(label, kind)
    i_plus, i_minus = np.abs(table.f_plus) ** 2, np.abs(table.f_minus) ** 2
    i_mean = 0.5 * (i_plus + i_minus)
    data = np.column_stack([
        table.hkl, np.abs(table.f_plus), np.degrees(np.angle(table.f_plus)),
        np.abs(table.f_minus), np.degrees(np.angle(table.f_minus)),
        i_mean, stored_sigma(i_mean), i_plus, stored_sigma(i_plus), i_minus, stored_sigma(i_minus),
    ]).astype(np.float32)
    mtz.set_data(data)
    mtz.history = [f"braggflow: direct sum, IT92 f0, Cromer-Liberman f'/f'' at {energy_kev:g} keV"]
    with atomic_path(path) as tmp:
        mtz.write_to_file(str(tmp))


def read_mtz(path: str | Path) -> tuple[gemmi.Mtz, np.ndarray, np.ndarray, np.ndarray]:
    """(mtz, hkl, F(+), F(-)) as complex arrays from a braggflow MTZ."""
    path = Path(path)
    try:
        mtz = gemmi.read_mtz_file(str(path))
    except Exception as exc:
        raise InputError(path, f"unreadable MTZ: {exc}") from None
    labels = [c.label for c in mtz.columns]
    missing = [lab for lab, _ in MTZ_COLUMNS if lab not in labels]
    if missing:
        raise InputError(path, f"MTZ lacks columns {missing} (has {labels})")
    data = np.array(mtz, copy=False)
    col = {lab: labels.index(lab) for lab in labels}
    hkl = data[:, :3].astype(np.int32)
    fp = data[:, col["F(+)"]] * np.exp(1j * np.radians(data[:, col["PHI(+)"]]))
    fm = data[:, col["F(-)"]] * np.exp(1j * np.radians(data[:, col["PHI(-)"]]))
    return mtz, hkl, fp, fm
