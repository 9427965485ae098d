"""Unit cells under their space group's constraints, as torch functions of the free parameters, and the DIALS B
matrix of a cell (columns a*, b*, c*; the PDB/cctbx orthogonalisation: a along x, b in the x-y plane), so that a
crystal model A = R U0 B(cell) is differentiable in its rotation and its free cell parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# free parameters of each lattice: names, and how the six cell parameters are made of them
_FREE = {
    "triclinic": ("a", "b", "c", "alpha", "beta", "gamma"),
    "monoclinic": ("a", "b", "c", "angle"),  # the one angle that is not 90 degrees (beta for unique axis b)
    "orthorhombic": ("a", "b", "c"),
    "tetragonal": ("a", "c"),
    "hexagonal": ("a", "c"),  # also trigonal in the hexagonal setting
    "rhombohedral": ("a", "alpha"),  # trigonal on rhombohedral axes
    "cubic": ("a",),
}


@dataclass(frozen=True)
class CellConstraints:
    """The lattice of a space group and, for monoclinic cells, which angle is free (0, 1, 2: alpha, beta, gamma)."""

    lattice: str
    free_angle: int = 1

    @classmethod
    def from_space_group(cls, name: str, cell: tuple[float, ...]) -> "CellConstraints":
        import gemmi

        try:
            sg = gemmi.SpaceGroup(name)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"unknown space group {name!r}: {exc}") from None
        system = sg.crystal_system_str()
        if system == "trigonal":
            system = "rhombohedral" if sg.ext == "R" else "hexagonal"
        angle = 1
        if system == "monoclinic":
            off = [i for i in range(3) if abs(cell[3 + i] - 90.0) > 1e-3]
            angle = off[0] if off else 1
        return cls(system, angle)

    @property
    def names(self) -> tuple[str, ...]:
        return _FREE[self.lattice]

    @property
    def length_multiplicity(self) -> np.ndarray:
        """Per free parameter, how many of a, b, c it sets (0 for an angle): the weights of the cell's scale,
        the geometric mean of a, b and c."""
        counts = {"tetragonal": (2, 1), "hexagonal": (2, 1), "rhombohedral": (3, 0), "cubic": (3,)}
        if self.lattice in counts:
            return np.array(counts[self.lattice], dtype=float)
        return np.array([1.0 if n in ("a", "b", "c") else 0.0 for n in self.names])

    def scaled(self, free: np.ndarray, factor: float) -> np.ndarray:
        """Free parameters with every length times ``factor`` (angles kept)."""
        return np.where(self.length_multiplicity > 0, free * factor, free)

    def free(self, cell: tuple[float, ...]) -> np.ndarray:
        """The free parameters of ``cell`` (a, b, c in Angstrom, angles in degrees), averaged where the lattice
        ties them (a = b of a tetragonal cell measured slightly unequal)."""
        a, b, c, al, be, ga = (float(v) for v in cell)
        lat = self.lattice
        if lat == "triclinic":
            return np.array([a, b, c, al, be, ga])
        if lat == "monoclinic":
            return np.array([a, b, c, (al, be, ga)[self.free_angle]])
        if lat == "orthorhombic":
            return np.array([a, b, c])
        if lat in ("tetragonal", "hexagonal"):
            return np.array([(a + b) / 2, c])
        if lat == "rhombohedral":
            return np.array([(a + b + c) / 3, (al + be + ga) / 3])
        return np.array([(a + b + c) / 3])

    def cell(self, p: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The six cell parameters (lengths, angles in degrees) from the free ones (a 1-D tensor)."""
        lat = self.lattice
        right = torch.full_like(p[0], 90.0)
        if lat == "triclinic":
            return tuple(p[i] for i in range(6))
        if lat == "monoclinic":
            angles = [right, right, right]
            angles[self.free_angle] = p[3]
            return (p[0], p[1], p[2], *angles)
        if lat == "orthorhombic":
            return (p[0], p[1], p[2], right, right, right)
        if lat == "tetragonal":
            return (p[0], p[0], p[1], right, right, right)
        if lat == "hexagonal":
            return (p[0], p[0], p[1], right, right, torch.full_like(p[0], 120.0))
        if lat == "rhombohedral":
            return (p[0], p[0], p[0], p[1], p[1], p[1])
        return (p[0], p[0], p[0], right, right, right)


def b_matrix(cell: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """DIALS/cctbx B (columns a*, b*, c*, 1/Angstrom) of a cell given as six tensors (angles in degrees):
    the inverse transpose of the orthogonalisation matrix (a along x, b in the x-y plane), as gemmi's
    ``UnitCell.frac.mat.T``."""
    a, b, c, al, be, ga = cell
    al, be, ga = (x * (math.pi / 180.0) for x in (al, be, ga))
    ca, cb, cg, sg = torch.cos(al), torch.cos(be), torch.cos(ga), torch.sin(ga)
    vol = a * b * c * torch.sqrt(1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg)
    zero = torch.zeros_like(a)
    orth = torch.stack([
        torch.stack([a, b * cg, c * cb]),
        torch.stack([zero, b * sg, c * (ca - cb * cg) / sg]),
        torch.stack([zero, zero, vol / (a * b * sg)]),
    ])
    return torch.linalg.inv(orth).T


def cell_of_A(A: np.ndarray) -> tuple[float, ...]:
    """Cell (a, b, c, alpha, beta, gamma; Angstrom, degrees) of a crystal model A = U B."""
    g = np.linalg.inv(A.T @ A)  # real-space metric
    a, b, c = np.sqrt(np.diag(g))
    al = math.degrees(math.acos(g[1, 2] / (b * c)))
    be = math.degrees(math.acos(g[0, 2] / (a * c)))
    ga = math.degrees(math.acos(g[0, 1] / (a * b)))
    return float(a), float(b), float(c), al, be, ga


def rotation(v: torch.Tensor) -> torch.Tensor:
    """The rotation by |v| radians about v (Rodrigues), smooth at v = 0."""
    theta2 = v @ v
    small = theta2 < 1e-12
    t2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = torch.sqrt(t2)
    s = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    c = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / t2)
    zero = torch.zeros_like(v[0])
    k = torch.stack([torch.stack([zero, -v[2], v[1]]), torch.stack([v[2], zero, -v[0]]),
                     torch.stack([-v[1], v[0], zero])])
    return torch.eye(3, dtype=v.dtype, device=v.device) + s * k + c * (k @ k)
