"""Crystal structures from PDB, mmCIF (macromolecules) and small-molecule CIF, read with gemmi.

Cell and space group always come from the file. Bad files raise InputError naming the file and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np

from .errors import InputError
from .io import atomic_path

PDB_SUFFIXES = {".pdb", ".ent", ".pdb1"}
CIF_SUFFIXES = {".cif", ".mmcif"}


@dataclass(frozen=True)
class CrystalModel:
    """Atoms of the asymmetric unit plus what is needed to expand them over the unit cell."""

    source: str
    kind: str  # "macromolecule" or "small-molecule"
    cell: tuple[float, float, float, float, float, float]  # a, b, c (A), alpha, beta, gamma (deg)
    spacegroup_hm: str
    atomic_number: np.ndarray  # (n,) int
    fract: np.ndarray  # (n, 3) fractional coordinates
    occupancy: np.ndarray  # (n,)
    u_iso_angstrom2: np.ndarray  # (n,) isotropic U (A^2); ignored where u_aniso is set
    u_aniso_cart_angstrom2: np.ndarray  # (n, 6) U11 U22 U33 U12 U13 U23 (Cartesian, A^2); all zero = isotropic

    @property
    def gemmi_cell(self) -> gemmi.UnitCell:
        return gemmi.UnitCell(*self.cell)

    @property
    def spacegroup(self) -> gemmi.SpaceGroup:
        return gemmi.SpaceGroup(self.spacegroup_hm)

    @property
    def elements(self) -> list[str]:
        return sorted({gemmi.Element(int(z)).name for z in self.atomic_number})


def _check_pdb_text(path: Path) -> None:
    """gemmi reads cut-off PDB files without complaint; catch truncation here."""
    try:
        lines = path.read_text(errors="strict").splitlines()
    except UnicodeDecodeError:
        raise InputError(path, "unreadable: not a text PDB file") from None
    for number, line in enumerate(lines, start=1):
        if line.startswith(("ATOM  ", "HETATM")):
            if len(line.rstrip()) < 54:
                raise InputError(path, f"truncated PDB: the coordinate record on line {number} ends at column "
                                       f"{len(line.rstrip())} (x, y, z need columns 31-54)")
            try:
                float(line[30:38]), float(line[38:46]), float(line[46:54])
            except ValueError:
                raise InputError(path, f"malformed PDB: line {number} has unreadable coordinates: {line[30:54]!r}") from None
    records = [ln[:6].strip() for ln in lines if ln.strip()]
    if not records or records[-1] != "END":
        raise InputError(path, "truncated PDB: the file does not end with an END record (the format requires one)")


def _cif_kind(path: Path) -> str:
    try:
        block = gemmi.cif.read(str(path)).sole_block()
    except Exception as exc:
        raise InputError(path, f"unreadable CIF: {exc}") from None
    if block.find_values("_atom_site.Cartn_x"):
        return "macromolecule"
    if block.find_values("_atom_site_fract_x"):
        return "small-molecule"
    raise InputError(path, "CIF has no atom sites (_atom_site.Cartn_x for mmCIF or _atom_site_fract_x for "
                           "small-molecule CIF)")


def _check_cell_and_symmetry(path: Path, cell: gemmi.UnitCell, sg: gemmi.SpaceGroup | None) -> None:
    if not cell.is_crystal() or min(cell.a, cell.b, cell.c) <= 1.0 + 1e-9:
        raise InputError(path, "no unit cell in the file (CRYST1 record or _cell_length_a/b/c, _cell_angle_*)")
    if sg is None:
        raise InputError(path, "no space group in the file (CRYST1 or _symmetry_space_group_name_H-M / "
                               "_space_group_name_H-M_alt)")


def _aniso_cart(aniso: gemmi.SMat33f) -> list[float]:
    return [aniso.u11, aniso.u22, aniso.u33, aniso.u12, aniso.u13, aniso.u23]


def _read_macromolecule(path: Path) -> CrystalModel:
    try:
        st = gemmi.read_structure(str(path))
    except Exception as exc:
        raise InputError(path, f"unreadable structure file: {exc}") from None
    sg = st.find_spacegroup() if st.spacegroup_hm else None
    _check_cell_and_symmetry(path, st.cell, sg)
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputError(path, "empty model: no atoms")
    z, xyz, occ, u_iso, u_aniso = [], [], [], [], []
    for chain in st[0]:  # the first model: an ensemble's others are alternatives, not more atoms
        for res in chain:
            for atom in res:
                if atom.element.atomic_number == 0:
                    raise InputError(path, f"unknown element {atom.element.name!r} for atom {atom.name!r} of "
                                           f"{chain.name}/{res.name}{res.seqid.num}")
                z.append(atom.element.atomic_number)
                f = st.cell.fractionalize(atom.pos)
                xyz.append((f.x, f.y, f.z))
                occ.append(atom.occ)
                u_iso.append(atom.b_iso / (8.0 * np.pi**2))
                u_aniso.append(_aniso_cart(atom.aniso) if atom.aniso.nonzero() else [0.0] * 6)
    return CrystalModel(str(path), "macromolecule", tuple(st.cell.parameters), sg.hm, np.array(z), np.array(xyz),
                        np.array(occ), np.array(u_iso), np.array(u_aniso))


def _read_small(path: Path) -> CrystalModel:
    try:
        ss = gemmi.read_small_structure(str(path))
    except Exception as exc:
        raise InputError(path, f"unreadable small-molecule CIF: {exc}") from None
    _check_cell_and_symmetry(path, ss.cell, ss.spacegroup)
    if len(ss.sites) == 0:
        raise InputError(path, "empty model: no atom sites")
    z, xyz, occ, u_iso, u_aniso = [], [], [], [], []
    for site in ss.sites:
        if site.element.atomic_number == 0:
            raise InputError(path, f"unknown element {site.type_symbol!r} for site {site.label!r}")
        z.append(site.element.atomic_number)
        xyz.append((site.fract.x, site.fract.y, site.fract.z))
        occ.append(site.occ)
        u_iso.append(site.u_iso)
        if site.aniso.nonzero():
            u_aniso.append(_small_aniso_cart(ss.cell, site))
        else:
            u_aniso.append([0.0] * 6)
    return CrystalModel(str(path), "small-molecule", tuple(ss.cell.parameters), ss.spacegroup.hm, np.array(z),
                        np.array(xyz), np.array(occ), np.array(u_iso), np.array(u_aniso))


def _small_aniso_cart(cell: gemmi.UnitCell, site) -> list[float]:
    """CIF U_ij (on the basis a*, b*, c* normalised) -> Cartesian U = N Uf N^T with N = Orth * diag(|a*|)."""
    u = site.aniso
    uf = np.array([[u.u11, u.u12, u.u13], [u.u12, u.u22, u.u23], [u.u13, u.u23, u.u33]])
    rc = cell.reciprocal()
    n = np.array(cell.orth.mat) @ np.diag([rc.a, rc.b, rc.c])
    uc = n @ uf @ n.T
    return [uc[0, 0], uc[1, 1], uc[2, 2], uc[0, 1], uc[0, 2], uc[1, 2]]


def read_structure(path: str | Path) -> CrystalModel:
    """Read a PDB, mmCIF or small-molecule CIF file; raise InputError naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if not path.is_file():
        raise InputError(path, "not a regular file")
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise InputError(path, f"unreadable: {exc.strerror}") from None
    suffix = path.suffix.lower()
    if suffix in PDB_SUFFIXES:
        _check_pdb_text(path)
        return _read_macromolecule(path)
    if suffix in CIF_SUFFIXES:
        return _read_macromolecule(path) if _cif_kind(path) == "macromolecule" else _read_small(path)
    raise InputError(path, f"unknown structure format {suffix!r} (use .pdb, .ent, .cif or .mmcif)")


# ---------------------------------------------------------------- stand-in for a structure with no model file

# Mean atoms per residue of a protein (C, N, O, S; no hydrogens) and the protein volume per residue.
ATOMS_PER_RESIDUE = {"C": 5.0, "N": 1.35, "O": 1.5, "S": 0.04}
ANGSTROM3_PER_RESIDUE = 135.0


def write_pseudo_protein(path: str | Path, *, space_group: str, cell: tuple[float, ...], residues: int,
                         ions: dict[str, int], b_iso_angstrom2: float, seed: int) -> None:
    """A random-atom protein stand-in: ``residues`` worth of C/N/O/S (plus ``ions``) spread uniformly through a
    sphere of the protein's volume at a random place in the cell, as one asymmetric unit of ``space_group``.

    Spot positions depend only on the cell; intensities follow Wilson statistics at high resolution, and the
    compact molecular envelope keeps low-resolution reflections strong, as in a real protein crystal. Not the
    protein's phases or its individual intensities. Written as PDB (deterministic for a seed)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9D8]))
    sg = gemmi.SpaceGroup(space_group)
    uc = gemmi.UnitCell(*cell)
    elements = []
    for el, per in ATOMS_PER_RESIDUE.items():
        elements += [el] * int(round(per * residues))
    for el, count in sorted(ions.items()):
        elements += [el.upper()] * int(count)
    radius = (3.0 * residues * ANGSTROM3_PER_RESIDUE / (4.0 * np.pi)) ** (1.0 / 3.0)
    centre = uc.orthogonalize(gemmi.Fractional(*rng.random(3)))
    v = rng.standard_normal((len(elements), 3))
    v *= (radius * rng.random(len(elements)) ** (1.0 / 3.0) / np.linalg.norm(v, axis=1))[:, None]
    lines = [f"REMARK   1 random-atom stand-in: {residues} residues of C/N/O/S in a sphere of radius {radius:.1f} A, "
             f"ions {dict(sorted(ions.items()))}, B {b_iso_angstrom2:g} A^2, seed {seed}",
             f"CRYST1{cell[0]:9.3f}{cell[1]:9.3f}{cell[2]:9.3f}{cell[3]:7.2f}{cell[4]:7.2f}{cell[5]:7.2f} "
             f"{sg.hm:<11s}{len(sg.operations()):4d}"]
    n_protein = len(elements) - sum(ions.values())
    for i, (el, d) in enumerate(zip(elements, v), start=1):
        x, y, z = centre.x + d[0], centre.y + d[1], centre.z + d[2]
        record, resname, resseq = ("ATOM  ", "UNK", (i - 1) // 8 + 1) if i <= n_protein else ("HETATM", el, 9000 + i - n_protein)
        lines.append(f"{record}{i:5d} {el:<4s} {resname:>3s} A{resseq:4d}    {x:8.3f}{y:8.3f}{z:8.3f}"
                     f"{1.0:6.2f}{b_iso_angstrom2:6.2f}          {el:>2s}")
    lines.append("END")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
