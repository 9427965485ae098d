"""A stand-in crystal for any cell and space group, when no model file exists: the composition stated (protein
residues and ions), the cell given or taken from DIALS' indexing of the experiment's own frames.

usage:
  python -m braggflow.stand_in OUT.pdb --space-group "P 61 2 2" --residues 316 --ions ZN=1,CA=4
         (--cell a b c alpha beta gamma | --from-dials results/experiments/<name>/dials/export.npz)
         [--b-iso 20] [--seed 20261121]

Then name it in the config as a structure (``structures.<name>.file``) and give that name to the experiment's
``matched.structure``. The atoms are random (``structures.write_pseudo_protein``): spot positions follow the cell,
intensities Wilson statistics and a compact molecular envelope; not the protein's own intensities or phases.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .errors import InputError
from .formats.dials_export import read_dials_export
from .structures import write_pseudo_protein


def dials_mean_cell(export_npz: str | Path) -> tuple[float, ...]:
    """The mean cell (a, b, c, alpha, beta, gamma) of the frames DIALS indexed in an export."""
    ex = read_dials_export(export_npz)
    cells = np.asarray(ex["cell"], float)[np.asarray(ex["indexed"], bool)]
    if not len(cells):
        raise InputError(export_npz, "DIALS indexed none of these frames: no cell to take (give --cell)")
    return tuple(round(float(v), 3) for v in cells.mean(axis=0))


def parse_ions(text: str) -> dict[str, int]:
    """ "ZN=1,CA=4" -> {"ZN": 1, "CA": 4} ("" -> no ions)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        element, _, count = part.partition("=")
        try:
            out[element.strip().upper()] = int(count)
        except ValueError:
            raise argparse.ArgumentTypeError(f"ions: {part!r} is not ELEMENT=COUNT") from None
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m braggflow.stand_in", description=__doc__.splitlines()[0])
    ap.add_argument("out", help="the PDB file to write")
    ap.add_argument("--space-group", required=True, help='Hermann-Mauguin symbol, e.g. "P 61 2 2"')
    cell = ap.add_mutually_exclusive_group(required=True)
    cell.add_argument("--cell", type=float, nargs=6, metavar=("A", "B", "C", "ALPHA", "BETA", "GAMMA"))
    cell.add_argument("--from-dials", help="a DIALS export (export.npz): the mean cell of its indexed frames")
    ap.add_argument("--residues", type=int, required=True, help="protein residues in the asymmetric unit")
    ap.add_argument("--ions", type=parse_ions, default={}, help="ELEMENT=COUNT,... e.g. ZN=1,CA=4")
    ap.add_argument("--b-iso", type=float, default=20.0, help="isotropic B, A^2")
    ap.add_argument("--seed", type=int, default=20261121)
    args = ap.parse_args(argv)
    if args.residues < 1:
        ap.error(f"argument --residues: must be >= 1, got {args.residues}")
    import gemmi

    try:
        gemmi.SpaceGroup(args.space_group)
    except ValueError:
        ap.error(f"argument --space-group: unknown space group {args.space_group!r} (e.g. \"P 61 2 2\", \"P212121\")")
    try:
        cell_values = tuple(args.cell) if args.cell else dials_mean_cell(args.from_dials)
        write_pseudo_protein(args.out, space_group=args.space_group, cell=cell_values, residues=args.residues,
                             ions=args.ions, b_iso_angstrom2=args.b_iso, seed=args.seed)
    except (InputError, ValueError, RuntimeError) as exc:
        sys.exit(f"python -m braggflow.stand_in: {exc}")
    print(f"{args.out}: {args.residues} residues, ions {args.ions}, {args.space_group}, cell {cell_values}")


if __name__ == "__main__":
    main()
