"""The phase problem's trivial ambiguities: the origins (and the hand) that give a crystal the same amplitudes.

Moving a structure by t (x -> x - t) gives F'(h) = F(h) exp(-2 pi i h.t): the same amplitudes, other phases. The
space group stays the same where (R - I) t is a lattice vector (centring included) for every rotation R of the
group: the permissible origin shifts. Along a direction every R leaves alone (the polar axis of P6_3mc, all three
of P1) t is continuous; elsewhere it is a finite set (the 8 inversion centres of P-1, 2 origins of Fm-3m). The
inverted structure (the other hand) has the amplitudes as well, where f'' is neglected, and phases -phi.

braggflow fixes the continuous part in the dataset, as direct methods fix an origin: the parent structure is moved
so that chosen strong reflections (one per continuous direction, with a unimodular matrix of h.d) have phase 0,
and its perturbations keep their centroid. The finite part (shifts x hands) is left to the loss, which takes the
best of them (``loss``): a network cannot know which of the equivalent origins a CIF's authors chose.
"""

from __future__ import annotations

import itertools

import gemmi
import numpy as np

_GRID = 12  # permissible shifts are multiples of 1/12 (1/2, 1/3, 1/4, 1/6 along some axis)


def _rotations(sg: gemmi.SpaceGroup) -> list[np.ndarray]:
    ops = sg.operations()
    return [np.array(op.rot, dtype=float) / op.DEN for op in ops.sym_ops]


def _centring(sg: gemmi.SpaceGroup) -> np.ndarray:
    ops = sg.operations()
    return np.array([np.array(c, dtype=float) / gemmi.Op.DEN for c in ops.cen_ops])


def _in_lattice(v: np.ndarray, centring: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Whether each row of ``v`` (n, 3) is a lattice vector, centring translations included."""
    d = v[:, None, :] - centring[None, :, :]
    return np.any(np.all(np.abs(d - np.round(d)) < tol, axis=2), axis=1)


def continuous_axes(sg: gemmi.SpaceGroup) -> np.ndarray:
    """(k, 3) integer directions that span the origin's continuous freedom (those every rotation leaves alone)."""
    rots = _rotations(sg)
    stack = np.vstack([r - np.eye(3) for r in rots])
    rank = np.linalg.matrix_rank(stack, tol=1e-8)
    k = 3 - rank
    if k == 0:
        return np.zeros((0, 3), dtype=int)
    # The fixed subspace of a crystallographic group is spanned by short lattice directions: take them in order.
    cands = sorted((c for c in itertools.product(range(-2, 3), repeat=3) if any(c)),
                   key=lambda c: (sum(abs(x) for x in c), [-x for x in c]))
    basis: list[np.ndarray] = []
    for c in cands:
        v = np.array(c, dtype=float)
        if np.allclose(stack @ v, 0.0) and np.linalg.matrix_rank(np.array(basis + [v])) == len(basis) + 1:
            basis.append(v)
            if len(basis) == k:
                break
    return np.array(basis, dtype=int)


def reference_reflections(hkl: np.ndarray, amplitude: np.ndarray, axes: np.ndarray, top: int = 40) -> np.ndarray:
    """(k, 3) reflections whose phases fix the continuous origin: the strongest set whose matrix of h.d over the
    ``axes`` is unimodular (so the shift that zeroes their phases is unique). ``amplitude`` ranks ``hkl``."""
    k = len(axes)
    if k == 0:
        return np.zeros((0, 3), dtype=int)
    order = np.argsort(-amplitude, kind="stable")
    cands = [i for i in order[: 4 * top] if amplitude[i] > 0 and np.any(hkl[i] @ axes.T != 0)][:top]
    for combo in itertools.combinations(cands, k):
        m = hkl[list(combo)] @ axes.T
        if abs(round(np.linalg.det(m))) == 1:
            return hkl[list(combo)].astype(int)
    raise ValueError(f"no {k} reflections among the {len(cands)} strongest fix the origin along {axes.tolist()}")


def origin_fixing_shift(phase_rad: np.ndarray, reference_hkl: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """The shift t along ``axes`` that gives the reference reflections (phases ``phase_rad``) phase 0 once the
    structure is moved by it (x -> x - t)."""
    if len(axes) == 0:
        return np.zeros(3)
    m = reference_hkl @ axes.T  # phase(h_i) - 2 pi sum_j s_j (h_i . d_j) = 0
    s = np.linalg.solve(m.astype(float), np.asarray(phase_rad) / (2 * np.pi))
    return s @ axes


def discrete_shifts(sg: gemmi.SpaceGroup, reference_hkl: np.ndarray) -> np.ndarray:
    """(n, 3) the permissible origin shifts that keep the reference reflections' phases (mod the lattice, the
    origin first): the finite set of origins a dataset with a fixed continuous origin cannot tell apart."""
    grid = np.array(list(itertools.product(range(_GRID), repeat=3)), dtype=float) / _GRID
    cen = _centring(sg)
    ok = np.ones(len(grid), dtype=bool)
    for r in _rotations(sg):
        ok &= _in_lattice(grid @ (r - np.eye(3)).T, cen)
    if len(reference_hkl):
        p = grid @ np.asarray(reference_hkl, dtype=float).T
        ok &= np.all(np.abs(p - np.round(p)) < 1e-9, axis=1)
    kept: list[np.ndarray] = []
    for t in grid[ok]:
        if not any(_in_lattice((t - u)[None], cen)[0] for u in kept):
            kept.append(t)
    return np.array(kept)


def grid_operations(sg: gemmi.SpaceGroup, hkl: np.ndarray, keep_axis: int | None = None
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The space group's operations (R, tau) whose R^T maps the hkl grid onto itself: (index of R^T h for each
    grid point, 2 pi h.tau). The structure moved by (R, tau) has F'(h) = exp(2 pi i h.tau) F(R^T h): the same
    crystal, another sample (symmetry augmentation). ``keep_axis``: only the operations that map that cell axis
    onto itself or its opposite (the perturbation moved atoms along it, so only they keep the samples' law)."""
    lookup = {tuple(h): i for i, h in enumerate(hkl.tolist())}
    out = []
    for op in sg.operations():
        r = np.array(op.rot, dtype=int) // op.DEN
        tau = np.array(op.tran, dtype=float) / op.DEN
        if keep_axis is not None:
            axis = np.eye(3, dtype=int)[keep_axis]
            if not (np.array_equal(r @ axis, axis) or np.array_equal(r @ axis, -axis)):
                continue
        mapped = hkl @ r  # rows: (R^T h)^T = h^T R
        idx = [lookup.get(tuple(m)) for m in mapped.tolist()]
        if any(i is None for i in idx):
            continue
        out.append((np.array(idx, dtype=np.int64), 2 * np.pi * (hkl @ tau)))
    return out
