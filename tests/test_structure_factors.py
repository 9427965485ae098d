"""Structure factors against independent calculations, symmetry and anomalous physics."""

import json
import subprocess
from pathlib import Path

import gemmi
import numpy as np
import pytest

from braggflow.formats.mtz import MTZ_COLUMNS, MTZ_INTENSITY_COLUMNS, read_mtz, write_mtz
from braggflow.sf import compute_sf_table, dense_amplitude_table, structure_factors, table_from_mtz
from braggflow.structures import read_structure
from conftest import RESOURCES, crystfel_program, system_python_with

NI = RESOURCES / "structures/ni_fm-3m.cif"
PB = RESOURCES / "structures/pb_cod1531228.cif"
PDB_1IC6 = RESOURCES / "structures/1ic6.pdb"


@pytest.fixture(scope="module")
def pk():
    return read_structure(PDB_1IC6)


def _f0_it92(symbol, stol2):
    c = gemmi.Element(symbol).it92.get_coefs()
    return sum(c[i] * np.exp(-c[4 + i] * stol2) for i in range(4)) + c[8]


@pytest.mark.parametrize("hkl", [(1, 1, 1), (2, 0, 0), (2, 2, 0), (3, 1, 1)])
@pytest.mark.parametrize("energy_kev", [None, 8.0])
def test_nickel_matches_direct_sum_over_the_four_fcc_atoms(hkl, energy_kev):
    a, u_iso = 3.524, 0.004
    stol2 = sum(np.square(hkl)) / a**2 / 4
    fp, fpp = (0.0, 0.0) if energy_kev is None else gemmi.cromer_liberman(z=28, energy=energy_kev * 1000)
    f = (_f0_it92("Ni", stol2) + fp + 1j * fpp) * np.exp(-8 * np.pi**2 * u_iso * stol2)
    sites = [(0, 0, 0), (0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0)]
    expect_plus = sum(f * np.exp(2j * np.pi * np.dot(hkl, x)) for x in sites)
    expect_minus = sum(f * np.exp(-2j * np.pi * np.dot(hkl, x)) for x in sites)
    f_plus, f_minus = structure_factors(read_structure(NI), [hkl], energy_kev)
    assert f_plus[0] == pytest.approx(expect_plus, rel=1e-9)
    assert f_minus[0] == pytest.approx(expect_minus, rel=1e-9)
    assert abs(expect_plus) > 4 * 7  # fcc: all-even/all-odd reflections are 4 f (f > 7 e to 1 A)


def test_fcc_mixed_parity_reflections_vanish():
    f_plus, _ = structure_factors(read_structure(PB), [(1, 0, 0), (1, 1, 0), (2, 1, 0)], 8.0)
    assert np.all(np.abs(f_plus) < 1e-9)


WURTZITE_CIF = """data_zno
_cell_length_a 3.2498
_cell_length_b 3.2498
_cell_length_c 5.2066
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 120
_symmetry_space_group_name_H-M 'P 63 m c'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_U_iso_or_equiv
Zn1 Zn 0.3333 0.6667 0 0.007
O1 O 0.3333 0.6667 0.3817 0.007
"""


def test_hexagonal_sites_given_to_four_decimals_are_one_atom_each(tmp_path):
    """0.3333 / 0.6667 land 1e-4 from their images under P6_3mc's operations: 2 Zn and 2 O in the cell, not 6 + 6
    (|F| was 3x too large), and F(002) is that of two Zn and two O at the wurtzite positions."""
    from braggflow.sf import form_factor_it92, unit_cell_atoms

    path = tmp_path / "zno.cif"
    path.write_text(WURTZITE_CIF)
    model = read_structure(path)
    atoms = unit_cell_atoms(model)
    assert sorted(atoms.atomic_number.tolist()) == [8, 8, 30, 30]
    f, _ = structure_factors(model, np.array([[0, 0, 2]]), None)
    x = np.array([[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5]])
    stol2 = 0.25 / (5.2066 / 2) ** 2
    dw = np.exp(-8 * np.pi**2 * 0.007 * stol2)
    expected = sum(form_factor_it92(z, stol2) * dw * np.exp(2j * np.pi * (2 * (x[:, 2] + dz))).sum()
                   for z, dz in ((30, 0.0), (8, 0.3817)))
    np.testing.assert_allclose(abs(f[0]), abs(expected), rtol=1e-4)


def test_p43212_systematic_absences_are_zero(pk):
    absent = [(0, 0, l) for l in (1, 2, 3, 5, 6, 7, 9)] + [(h, 0, 0) for h in (1, 3, 5, 7)] + [(0, 3, 0)]
    present = [(0, 0, 4), (0, 0, 8), (2, 0, 0), (4, 0, 0)]
    f_abs, _ = structure_factors(pk, absent, 7.0)
    f_pres, _ = structure_factors(pk, present, 7.0)
    assert np.abs(f_abs).max() < 1e-8 * np.abs(f_pres).mean()
    assert np.abs(f_pres).min() > 1.0


def test_friedel_pairs_equal_without_and_different_with_anomalous_terms(pk):
    acentric = [(3, 5, 7), (1, 2, 9), (6, 11, 4), (2, 7, 13)]
    centric = [(3, 5, 0), (4, 0, 7), (3, 3, 7)]  # hk0, h0l, hhl zones of 422: Friedel mates are symmetry mates
    fp0, fm0 = structure_factors(pk, acentric, None)
    np.testing.assert_allclose(np.abs(fp0), np.abs(fm0), rtol=1e-12)
    fp, fm = structure_factors(pk, acentric, 6.0)
    rel = np.abs(np.abs(fp) - np.abs(fm)) / np.abs(fp)
    assert np.all(rel > 1e-4), rel  # S and Ca f'' at 6 keV
    fpc, fmc = structure_factors(pk, centric, 6.0)
    np.testing.assert_allclose(np.abs(fpc), np.abs(fmc), rtol=1e-9)


def test_anomalous_terms_move_with_energy(pk):
    """f'' of S and Ca falls with energy above their K edges: Bijvoet differences shrink from 6 to 8 keV."""
    hkl = [(3, 5, 7), (1, 2, 9), (6, 11, 4), (2, 7, 13), (5, 8, 3), (9, 1, 6)]
    d6 = [np.abs(np.abs(a) - np.abs(b)) for a, b in zip(*structure_factors(pk, hkl, 6.0))]
    d8 = [np.abs(np.abs(a) - np.abs(b)) for a, b in zip(*structure_factors(pk, hkl, 8.0))]
    assert np.mean(d6) > np.mean(d8)


def test_mtz_roundtrip_and_dense_p1_table_reproduce_direct_sums(tmp_path):
    model = read_structure(PB)
    table = compute_sf_table(model, 8.0, 0.9)
    path = tmp_path / "pb.mtz"
    write_mtz(path, model, table, 8.0)
    mtz = gemmi.read_mtz_file(str(path))
    assert mtz.spacegroup.hm == "F m -3 m" and mtz.cell.a == pytest.approx(4.95)
    labels = [c.label for c in mtz.columns]
    assert labels[:7] == ["H", "K", "L", "F(+)", "PHI(+)", "F(-)", "PHI(-)"]  # amplitudes first, as before
    assert labels[7:] == ["I", "SIGI", "I(+)", "SIGI(+)", "I(-)", "SIGI(-)"]
    assert mtz.datasets[-1].wavelength == pytest.approx(12.398419843320026 / 8.0, abs=1e-4)  # MTZ headers keep 4 decimals
    back = table_from_mtz(path)
    np.testing.assert_allclose(back.f_plus, table.f_plus, rtol=1e-5, atol=1e-4)
    dense, lo = dense_amplitude_table(path)
    rng = np.random.default_rng(1)
    idx = np.argwhere(dense > 0)
    pick = idx[rng.choice(len(idx), 40, replace=False)] + np.array(lo)
    fp, _ = structure_factors(model, pick, 8.0)
    np.testing.assert_allclose(dense[tuple((pick - lo).T)], np.abs(fp), rtol=1e-5)


def test_mtz_intensities_are_squared_amplitudes_with_mtz_column_types(tmp_path, pk):
    table = compute_sf_table(pk, 6.0, 6.0)
    write_mtz(tmp_path / "pk.mtz", pk, table, 6.0)
    mtz = gemmi.read_mtz_file(str(tmp_path / "pk.mtz"))
    types = {c.label: c.type for c in mtz.columns}
    assert [(lab, types[lab]) for lab, _ in MTZ_COLUMNS] == [("F(+)", "G"), ("PHI(+)", "P"), ("F(-)", "G"),
                                                            ("PHI(-)", "P")]
    assert [(lab, types[lab]) for lab, _ in MTZ_INTENSITY_COLUMNS] == [
        ("I", "J"), ("SIGI", "Q"), ("I(+)", "K"), ("SIGI(+)", "M"), ("I(-)", "K"), ("SIGI(-)", "M")]
    col = {c.label: np.array(c, copy=False) for c in mtz.columns}
    ip, im = np.abs(table.f_plus) ** 2, np.abs(table.f_minus) ** 2
    np.testing.assert_allclose(col["I(+)"], ip, rtol=1e-6)
    np.testing.assert_allclose(col["I(-)"], im, rtol=1e-6)
    np.testing.assert_allclose(col["I"], 0.5 * (ip + im), rtol=1e-6)
    np.testing.assert_allclose(col["I(+)"], col["F(+)"].astype(float) ** 2, rtol=1e-5)
    for i, sig in (("I", "SIGI"), ("I(+)", "SIGI(+)"), ("I(-)", "SIGI(-)")):  # exact, to float32 precision
        assert np.all(col[sig] > 0) and np.all(col[sig] <= 1.2e-7 * col[i] + 1e-37)
    assert np.any(col["I(+)"] != col["I(-)"])  # f'' at 6 keV
    # The amplitude readers see the same file as before.
    np.testing.assert_allclose(np.abs(read_mtz(tmp_path / "pk.mtz")[2]), np.abs(table.f_plus), rtol=1e-6)
    # gemmi's intensity views keep every reflection (they drop sigma <= 0); Bijvoet mates of acentrics apart.
    n_centric = int(np.sum(pk.spacegroup.operations().centric_flag_array(table.hkl)))
    for kind, n in ((gemmi.DataType.Mean, len(table.hkl)), (gemmi.DataType.Anomalous, 2 * len(table.hkl) - n_centric)):
        ints = gemmi.Intensities()
        ints.import_mtz(mtz, kind)
        assert ints.type == kind and len(ints.value_array) == n


@pytest.mark.slow
def test_crystfel_get_hkl_reads_the_mtz_intensities(tmp_path, pk):
    exe, env = crystfel_program("get_hkl")
    table = compute_sf_table(pk, 7.0, 5.0)
    write_mtz(tmp_path / "pk.mtz", pk, table, 7.0)
    run = subprocess.run([exe, "-i", "pk.mtz", "-o", "pk.hkl", "-y", "4/mmm"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [line.split() for line in Path(tmp_path / "pk.hkl").read_text().splitlines()[3:]
            if line.strip() and not line.startswith(("End", "Generated", exe, "/"))]
    got = {tuple(int(v) for v in r[:3]): float(r[3]) for r in rows if len(r) == 7}
    assert len(got) == len(table.hkl)
    i_mean = 0.5 * (np.abs(table.f_plus) ** 2 + np.abs(table.f_minus) ** 2)
    for h, i in zip(table.hkl[::50], i_mean[::50]):
        assert got[tuple(int(v) for v in h)] == pytest.approx(i, rel=1e-5, abs=0.01)


def test_dense_table_keeps_bijvoet_mates_apart(tmp_path, pk):
    table = compute_sf_table(pk, 6.0, 8.0)
    write_mtz(tmp_path / "pk.mtz", pk, table, 6.0)
    dense, lo = dense_amplitude_table(tmp_path / "pk.mtz")
    h = np.array([(3, 5, 7), (-3, -5, -7), (-5, 3, 7), (5, 3, -7)])  # h, -h and symmetry mates (direct sums decide)
    fp, fm = structure_factors(pk, h, 6.0)
    got = dense[tuple((h - np.array(lo)).T)]
    np.testing.assert_allclose(got, np.abs(fp), rtol=1e-5)
    assert abs(got[0] - got[1]) > 1e-4 * got[0]  # Friedel mates differ with f''


def test_agrees_with_cctbx_for_1ic6_to_2_angstrom(tmp_path, pk):
    exe = system_python_with("iotbx.pdb")
    if exe is None:
        pytest.skip("cctbx is not installed (Debian package python3-cctbx; `make test` installs it)")
    energy_kev = 7.0
    fdash = {gemmi.Element(z).name: gemmi.cromer_liberman(z=int(z), energy=energy_kev * 1000)
             for z in set(pk.atomic_number)}
    (tmp_path / "fdash.json").write_text(json.dumps(fdash))
    out = tmp_path / "cctbx.npz"
    helper = RESOURCES.parent / "tests/helpers/cctbx_sf.py"
    subprocess.run([exe, str(helper), str(PDB_1IC6), "2.0", str(tmp_path / "fdash.json"), str(out)], check=True,
                   timeout=600)
    ref = np.load(out)
    ours, _ = structure_factors(pk, ref["hkl"], energy_kev)
    amp_ref, amp = np.abs(ref["f"]), np.abs(ours)
    rms_rel = np.sqrt(np.mean(((amp - amp_ref) / amp_ref) ** 2))
    print(f"1IC6 vs cctbx to 2.0 A: {len(amp)} reflections, RMS relative |F| difference {rms_rel:.2e}")
    assert len(amp) > 30000  # both Bijvoet mates of every reflection to 2 A
    assert rms_rel <= 0.01, rms_rel
