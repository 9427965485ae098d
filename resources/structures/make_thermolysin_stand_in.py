"""Regenerates thermolysin_stand_in.pdb (tests/test_matched.py checks the shipped file is exactly this output).

Thermolysin has no model file in the project: the stand-in has its space group, the mean cell DIALS refines on the
four LCLS CSPAD stills (resources/experimental/thermolysin_lcls_cspad), its size (316 residues) and its ions
(1 Zn, 4 Ca), with random atom positions (braggflow.structures.write_pseudo_protein)."""

import sys

from braggflow.structures import write_pseudo_protein

THERMOLYSIN = dict(space_group="P 61 2 2", cell=(93.42, 93.42, 131.08, 90.0, 90.0, 120.0), residues=316,
                   ions={"ZN": 1, "CA": 4}, b_iso_angstrom2=20.0, seed=20261121)

if __name__ == "__main__":
    write_pseudo_protein(sys.argv[1] if len(sys.argv) > 1 else "resources/structures/thermolysin_stand_in.pdb",
                         **THERMOLYSIN)
