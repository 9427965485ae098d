"""Complex structure factors with energy-dependent anomalous scattering (their MTZ files: ``formats.mtz``).

F(h) = sum_j occ_j (f0_j(s) + f'_j + i f''_j) exp(-2 pi^2 s^T U_j s) exp(2 pi i h.x_j) over every atom of the
unit cell: f0 from the IT92 Gaussians, f' and f'' from Cromer-Liberman (gemmi), U isotropic or anisotropic.
A direct sum: exact and independent of FFT grids, and fast enough for a protein to ~2 A.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import gemmi
import numpy as np

from .errors import InputError
from .formats.mtz import read_mtz
from .io import atomic_path
from .structures import CrystalModel

if TYPE_CHECKING:  # pandas costs a simulation job ~0.5 CPU-s to import, and it reads no table
    import pandas as pd

_CHUNK_TERMS = 4_000_000  # reflections x atoms per chunk: bounds memory to ~100 MB


@dataclass(frozen=True)
class UnitCellAtoms:
    atomic_number: np.ndarray  # (n,)
    fract: np.ndarray  # (n, 3)
    occupancy: np.ndarray  # (n,)
    u_cart: np.ndarray  # (n, 3, 3) Cartesian U, A^2


def _u_matrices(model: CrystalModel) -> np.ndarray:
    n = len(model.atomic_number)
    u = np.zeros((n, 3, 3))
    aniso = np.any(model.u_aniso_cart_angstrom2 != 0.0, axis=1)
    a = model.u_aniso_cart_angstrom2
    u[:, 0, 0], u[:, 1, 1], u[:, 2, 2] = a[:, 0], a[:, 1], a[:, 2]
    u[:, 0, 1] = u[:, 1, 0] = a[:, 3]
    u[:, 0, 2] = u[:, 2, 0] = a[:, 4]
    u[:, 1, 2] = u[:, 2, 1] = a[:, 5]
    iso = ~aniso
    u[iso] = model.u_iso_angstrom2[iso, None, None] * np.eye(3)
    return u


def unit_cell_atoms(model: CrystalModel) -> UnitCellAtoms:
    """Expand the asymmetric unit over all space-group operations.

    Macromolecular files give atoms on special positions a reduced occupancy, so every image is kept;
    small-molecule CIFs give chemical occupancies, so coincident images are merged.
    """
    cell = model.gemmi_cell
    orth = np.array(cell.orth.mat)
    frac = np.array(cell.frac.mat)
    u = _u_matrices(model)
    z, xyz, occ, us = [], [], [], []
    for op in model.spacegroup.operations():
        rot = np.array(op.rot, dtype=float) / op.DEN
        tran = np.array(op.tran, dtype=float) / op.DEN
        rc = orth @ rot @ frac  # the operation's rotation in Cartesian coordinates
        z.append(model.atomic_number)
        xyz.append(model.fract @ rot.T + tran)
        occ.append(model.occupancy)
        us.append(rc @ u @ rc.T)
    z, xyz, occ, us = np.concatenate(z), np.concatenate(xyz), np.concatenate(occ), np.concatenate(us)
    if model.kind == "small-molecule":
        keep = _distinct_sites(z, xyz)
        z, xyz, occ, us = z[keep], xyz[keep], occ[keep], us[keep]
    return UnitCellAtoms(z, xyz, occ, us)


# Images of one site closer than this (fractional, per axis, across cell edges) are one atom: CIFs give 1/3 and
# 2/3 as 0.3333 and 0.6667, whose images under a hexagonal operation land 1e-4 apart.
SITE_MERGE_FRACT = 1e-3


def _distinct_sites(z: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Indices of the first image of each distinct (element, position), in their original order."""
    keep: list[int] = []
    for i in range(len(z)):
        if keep:
            k = np.asarray(keep)
            d = xyz[k] - xyz[i]
            d -= np.round(d)
            if np.any((z[k] == z[i]) & np.all(np.abs(d) < SITE_MERGE_FRACT, axis=1)):
                continue
        keep.append(i)
    return np.asarray(keep, dtype=int)


def form_factor_it92(atomic_number: int, stol2: np.ndarray) -> np.ndarray:
    """Normal scattering factor f0 (electrons) at (sin theta / lambda)^2 in 1/A^2, IT92 four Gaussians + c."""
    c = gemmi.Element(int(atomic_number)).it92.get_coefs()
    a, b = c[:4], c[4:8]
    return sum(a[i] * np.exp(-b[i] * stol2) for i in range(4)) + c[8]


def anomalous_corrections(atomic_numbers, energy_kev: float | None) -> dict[int, tuple[float, float]]:
    """f', f'' (electrons) per element from Cromer-Liberman; zeros when energy_kev is None."""
    out = {}
    for zz in sorted({int(v) for v in atomic_numbers}):
        out[zz] = (0.0, 0.0) if energy_kev is None else tuple(gemmi.cromer_liberman(z=zz, energy=energy_kev * 1000.0))
    return out


def structure_factors(
    model: CrystalModel, hkl: np.ndarray, energy_kev: float | None, atoms: UnitCellAtoms | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Complex F(h) and F(-h) for each row of ``hkl``; ``energy_kev=None`` leaves out f' and f''."""
    hkl = np.asarray(hkl, dtype=float).reshape(-1, 3)
    atoms = atoms or unit_cell_atoms(model)
    stol2, s6 = _scattering_vectors(model, hkl)
    u6 = _u6(atoms)
    fdash = anomalous_corrections(atoms.atomic_number, energy_kev)
    f_plus = np.zeros(len(hkl), dtype=complex)
    f_minus = np.zeros(len(hkl), dtype=complex)
    for zz, (fp, fpp) in fdash.items():
        sel = atoms.atomic_number == zz
        x, occ, u = atoms.fract[sel], atoms.occupancy[sel], u6[sel]
        f0 = form_factor_it92(zz, stol2)
        step = max(1, _CHUNK_TERMS // max(1, len(x)))
        g = np.empty(len(hkl), dtype=complex)  # sum_j occ_j DW_j exp(2 pi i h.x_j) for this element
        for i in range(0, len(hkl), step):
            sl = slice(i, i + step)
            arg = -2.0 * np.pi**2 * (s6[sl] @ u.T) + 2j * np.pi * (hkl[sl] @ x.T)
            g[sl] = np.exp(arg) @ occ
        # F(h) = (f0 + f') G + i f'' G ;  F(-h) = (f0 + f') conj(G) + i f'' conj(G)
        f_plus += (f0 + fp) * g + 1j * fpp * g
        f_minus += (f0 + fp) * np.conj(g) + 1j * fpp * np.conj(g)
    return f_plus, f_minus


def _scattering_vectors(model: CrystalModel, hkl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sin theta / lambda)^2 of each h and the six products of s_cart that make s^T U s a matrix product."""
    recip = np.array(model.gemmi_cell.frac.mat).T  # s_cart = Frac^T h
    s = hkl @ recip.T
    stol2 = 0.25 * np.sum(s * s, axis=1)
    s6 = np.column_stack([s[:, 0] ** 2, s[:, 1] ** 2, s[:, 2] ** 2,
                          2 * s[:, 0] * s[:, 1], 2 * s[:, 0] * s[:, 2], 2 * s[:, 1] * s[:, 2]])
    return stol2, s6


def _u6(atoms: UnitCellAtoms) -> np.ndarray:
    uc = atoms.u_cart
    return np.column_stack([uc[:, 0, 0], uc[:, 1, 1], uc[:, 2, 2], uc[:, 0, 1], uc[:, 0, 2], uc[:, 1, 2]])


def atom_scattering(model: CrystalModel, atoms: UnitCellAtoms, hkl: np.ndarray, energy_kev: float | None) -> np.ndarray:
    """(reflections, atoms) complex occ_j (f0_j + f'_j + i f''_j) exp(-2 pi^2 s^T U_j s): what each atom adds to
    F(h) before its position's phase, so that F(h) = sum_j of it times exp(2 pi i h.x_j) (``structure_factors``)
    for any positions of the same atoms."""
    hkl = np.asarray(hkl, dtype=float).reshape(-1, 3)
    stol2, s6 = _scattering_vectors(model, hkl)
    out = np.exp(-2.0 * np.pi**2 * (s6 @ _u6(atoms).T)) * atoms.occupancy
    out = out.astype(complex)
    for zz, (fp, fpp) in anomalous_corrections(atoms.atomic_number, energy_kev).items():
        sel = atoms.atomic_number == zz
        out[:, sel] *= (form_factor_it92(zz, stol2) + fp + 1j * fpp)[:, None]
    return out


@dataclass(frozen=True)
class SfTable:
    """Structure factors of the reciprocal asymmetric unit: F(+) = F(h), F(-) = F(-h)."""

    hkl: np.ndarray  # (n, 3) int
    f_plus: np.ndarray  # complex
    f_minus: np.ndarray  # complex
    d_angstrom: np.ndarray


# Reflections a little beyond the detector's corner still light up pixels through the lattice transform.
D_MIN_MARGIN = 0.95


def sf_d_min_angstrom(configured: float | None, corner_d_min_angstrom: Sequence[float]) -> float:
    """The resolution to compute structure factors to: the configured d_min, or D_MIN_MARGIN of the finest d any
    of the detector corners (each camera length of one energy, or each panel of an experiment) records."""
    if configured is not None:
        return float(configured)
    return round(D_MIN_MARGIN * min(corner_d_min_angstrom), 4)


def compute_sf_table(model: CrystalModel, energy_kev: float, d_min_angstrom: float, anomalous: bool = True) -> SfTable:
    if not d_min_angstrom > 0:
        raise ValueError(f"d_min must be > 0 A, got {d_min_angstrom}")
    cell, sg = model.gemmi_cell, model.spacegroup
    hkl = np.asarray(gemmi.make_miller_array(cell, sg, d_min_angstrom, 0, True), dtype=np.int32)
    if len(hkl) == 0:
        raise InputError(model.source, f"no reflections to d_min = {d_min_angstrom:.3f} A (cell too small?)")
    f_plus, f_minus = structure_factors(model, hkl, energy_kev if anomalous else None)
    d = np.array(cell.calculate_d_array(hkl))
    return SfTable(hkl, f_plus, f_minus, d)


def dense_amplitude_table(path: str | Path) -> tuple[np.ndarray, tuple[int, int, int]]:
    """|F| over the full reciprocal sphere (P1, Bijvoet mates distinct) as a dense array.

    Returns (F[h-hmin, k-kmin, l-lmin], (hmin, kmin, lmin)); unlisted indices are 0, as in nanoBragg.
    """
    mtz, hkl, fp, fm = read_mtz(path)
    rots = {tuple(np.array(op.rot).ravel()) for op in mtz.spacegroup.operations().sym_ops}
    all_h, all_f = [], []
    for r in sorted(rots):
        rot = np.array(r, dtype=np.int64).reshape(3, 3) // gemmi.Op.DEN
        h2 = hkl.astype(np.int64) @ rot  # gemmi's Op.apply_to_hkl: h' = h R
        all_h += [h2, -h2]
        all_f += [np.abs(fp), np.abs(fm)]
    h = np.concatenate(all_h)
    f = np.concatenate(all_f).astype(np.float32)
    lo = h.min(axis=0)
    dense = np.zeros(tuple(h.max(axis=0) - lo + 1), dtype=np.float32)
    dense[h[:, 0] - lo[0], h[:, 1] - lo[1], h[:, 2] - lo[2]] = f
    return dense, (int(lo[0]), int(lo[1]), int(lo[2]))


def sf_summary(name: str, energy_kev: float, table: SfTable) -> dict[str, float | int | str]:
    amp_p, amp_m = np.abs(table.f_plus), np.abs(table.f_minus)
    mean_f = 0.5 * (amp_p + amp_m)
    return {
        "structure": name,
        "energy_kev": float(energy_kev),
        "reflections_asu": int(len(table.hkl)),
        "d_min_angstrom": float(table.d_angstrom.min()),
        "d_max_angstrom": float(table.d_angstrom.max()),
        "mean_f_electrons": float(mean_f.mean()),
        "bijvoet_ratio": float(np.mean(np.abs(amp_p - amp_m)) / mean_f.mean()),
    }


def write_summary(path: str | Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        import pandas as pd

        pd.DataFrame(rows).to_csv(tmp, sep="\t", index=False, float_format="%.6g")


def table_from_mtz(path: str | Path) -> SfTable:
    mtz, hkl, fp, fm = read_mtz(path)
    d = np.array(mtz.cell.calculate_d_array(hkl))
    return SfTable(hkl, fp, fm, d)


def resolution_shells(table: SfTable, n_shells: int = 10) -> pd.DataFrame:
    """Mean |F| and Bijvoet ratio in shells of equal reciprocal volume (equal 1/d^3 steps)."""
    inv3 = 1.0 / table.d_angstrom**3
    edges = np.linspace(0.0, inv3.max() * (1 + 1e-9), n_shells + 1)
    shell = np.clip(np.digitize(inv3, edges) - 1, 0, n_shells - 1)
    amp_p, amp_m = np.abs(table.f_plus), np.abs(table.f_minus)
    mean_f = 0.5 * (amp_p + amp_m)
    rows = []
    for i in range(n_shells):
        sel = shell == i
        if not sel.any():
            continue
        rows.append({
            "d_angstrom": float(np.median(table.d_angstrom[sel])),
            "reflections": int(sel.sum()),
            "mean_f_electrons": float(mean_f[sel].mean()),
            "bijvoet_ratio": float(np.mean(np.abs(amp_p[sel] - amp_m[sel])) / max(mean_f[sel].mean(), 1e-30)),
        })
    import pandas as pd

    return pd.DataFrame(rows)


def summarise_mtz_files(paths, labels) -> tuple[list[dict], dict[tuple[str, float], pd.DataFrame]]:
    rows, shells = [], {}
    for path, (name, energy_kev) in zip(paths, labels, strict=True):
        table = table_from_mtz(path)
        rows.append(sf_summary(name, energy_kev, table))
        shells[(name, energy_kev)] = resolution_shells(table)
    return rows, shells
