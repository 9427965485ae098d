"""Bad structure files stop with one clear error naming the file and the problem."""

import os

import numpy as np
import pytest

from braggflow.errors import InputError
from braggflow.io import atomic_path
from braggflow.structures import read_structure
from conftest import RESOURCES

PDB_TEXT = (RESOURCES / "structures/1ic6.pdb").read_text()
NI_TEXT = (RESOURCES / "structures/ni_fm-3m.cif").read_text()


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_structures_read_with_cell_and_symmetry_from_the_file():
    pk = read_structure(RESOURCES / "structures/1ic6.pdb")
    assert pk.kind == "macromolecule" and pk.spacegroup_hm == "P 43 21 2"
    assert pk.cell[:3] == pytest.approx((67.288, 67.288, 106.582))
    assert len(pk.atomic_number) == 4494
    ni = read_structure(RESOURCES / "structures/ni_fm-3m.cif")
    pb = read_structure(RESOURCES / "structures/pb_cod1531228.cif")
    assert (ni.kind, ni.spacegroup_hm, ni.cell[0]) == ("small-molecule", "F m -3 m", pytest.approx(3.524))
    assert pb.cell[0] == pytest.approx(4.95) and pb.elements == ["Pb"]


def test_mmcif_gives_the_same_model_as_pdb(tmp_path):
    import gemmi

    st = gemmi.read_structure(str(RESOURCES / "structures/1ic6.pdb"))
    st.setup_entities()
    cif = tmp_path / "1ic6.cif"
    st.make_mmcif_document().write_file(str(cif))
    a, b = read_structure(RESOURCES / "structures/1ic6.pdb"), read_structure(cif)
    assert b.kind == "macromolecule" and b.spacegroup_hm == a.spacegroup_hm
    np.testing.assert_allclose(b.fract, a.fract, atol=1e-6)


def test_truncated_pdb(tmp_path):
    cut = PDB_TEXT[: PDB_TEXT.index("ATOM  ", 200_000) + 40]  # stops inside a coordinate record
    path = _write(tmp_path, "cut.pdb", cut)
    with pytest.raises(InputError, match=r"cut\.pdb: truncated PDB: the coordinate record on line \d+"):
        read_structure(path)
    lines = PDB_TEXT.splitlines(keepends=True)
    path = _write(tmp_path, "cut2.pdb", "".join(lines[:2000]))  # cut at a line boundary: no END record
    with pytest.raises(InputError, match=r"cut2\.pdb: truncated PDB: .* END record"):
        read_structure(path)


def test_cif_without_cell(tmp_path):
    text = "\n".join(ln for ln in NI_TEXT.splitlines() if not ln.startswith("_cell_"))
    with pytest.raises(InputError, match=r"nocell\.cif: no unit cell"):
        read_structure(_write(tmp_path, "nocell.cif", text))


def test_cif_without_symmetry(tmp_path):
    text = "\n".join(ln for ln in NI_TEXT.splitlines() if "space_group" not in ln)
    with pytest.raises(InputError, match=r"nosym\.cif: no space group"):
        read_structure(_write(tmp_path, "nosym.cif", text))


def test_unknown_element(tmp_path):
    text = NI_TEXT.replace("Ni1 Ni ", "Qq1 Qq ")
    with pytest.raises(InputError, match=r"element\.cif: unknown element 'Qq'"):
        read_structure(_write(tmp_path, "element.cif", text))
    pdb = "".join(ln[:76] + "XX" + ln[78:] if ln.startswith("ATOM      1 ") else ln
                  for ln in PDB_TEXT.splitlines(keepends=True))
    with pytest.raises(InputError, match=r"element\.pdb: unknown element"):
        read_structure(_write(tmp_path, "element.pdb", pdb))


def test_empty_model(tmp_path):
    header = "".join(ln for ln in PDB_TEXT.splitlines(keepends=True) if ln.startswith(("CRYST1", "SCALE")))
    with pytest.raises(InputError, match=r"empty\.pdb: empty model"):
        read_structure(_write(tmp_path, "empty.pdb", header + "END\n"))


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(InputError, match=r"nowhere\.pdb: no such file"):
        read_structure(tmp_path / "nowhere.pdb")
    binary = tmp_path / "garbage.cif"
    binary.write_bytes(os.urandom(4096))
    with pytest.raises(InputError, match=r"garbage\.cif: unreadable"):
        read_structure(binary)
    with pytest.raises(InputError, match=r"model\.xyz: unknown structure format"):
        read_structure(_write(tmp_path, "model.xyz", "1\n\nNi 0 0 0\n"))


def test_atomic_path_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and list(tmp_path.iterdir()) == [target]
