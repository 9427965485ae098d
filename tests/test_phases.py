"""The phase-retrieval stage: structure factors against Dans_Diffraction, the origins and hands the amplitudes
cannot tell apart, the loss, the dataset file, symmetry augmentation and training (src/braggflow/phases/)."""

import dataclasses

import gemmi
import numpy as np
import pytest

from braggflow import sf
from braggflow.config import ConfigError, check_phase_sets
from braggflow.errors import InputError
from braggflow.formats.phase_volumes import read_dataset_id, read_phase_volumes, write_phase_volumes
from braggflow.phases import origins
from braggflow.phases.dataset import (SPLITS, PhaseVolumes, build, hkl_grid, load_crystal, perturbed_positions,
                                      resolve_cif, structure_factors_of)
from braggflow.phases.evaluate import score, shell_edges
from braggflow.phases.loss import Equivalents
from braggflow.settings import PerturbationSettings, PhaseFitSettings, PhaseSetSettings
from braggflow.structures import read_structure

dif = pytest.importorskip("Dans_Diffraction", reason="dans-diffraction is a dependency (pyproject.toml)")

HKL3 = hkl_grid((3, 3, 3))


def _settings(**kw):
    base = dict(cifs=("dans:Iron", "dans:Rutile", "dans:ZnO"), unseen=("dans:ZnO",), energy_kev=10.0,
                grid_half_width=(2, 2, 2), perturbation=PerturbationSettings("along_a", 0.05),
                samples_per_crystal=8, validation_fraction=0.25, test_fraction=0.25, seed=3)
    base.update(kw)
    return PhaseSetSettings(**base)


def _files(s):
    return {c: resolve_cif(c) for c in s.cifs}


# ------------------------------------------------------------------ structure factors against Dans_Diffraction

@pytest.mark.parametrize("name", ["Diamond", "Rutile", "KCl", "Iron", "Copper", "ZnO", "Ca2RuO4", "Ruby",
                                  "LiCoO2"])
def test_structure_factors_agree_with_dans_diffraction_with_the_same_form_factors(name):
    """Both use the IT92 Gaussians for f0 (ITC Vol. C Table 6.1.1.4) and the exp(+2 pi i h.x) convention. Dans
    uses only isotropic U (it ignores a CIF's U_ij), so braggflow gets Dans' U_iso here; then amplitudes and phases
    agree to 1e-3 relative (measured 1e-7). Graphite is left out: Dans puts its 0.3333 sites elsewhere by 1e-4
    (4e-3 in weak amplitudes)."""
    path = resolve_cif(f"dans:{name}")
    model = read_structure(path)
    xtl = dif.Crystal(str(path))
    xtl.Scatter.setup_scatter(scattering_type="xray", output=False)
    theirs = xtl.Scatter.structure_factor(HKL3, scattering_type="xray")
    iso = dataclasses.replace(model, u_aniso_cart_angstrom2=np.zeros_like(model.u_aniso_cart_angstrom2),
                              u_iso_angstrom2=np.asarray(xtl.Atoms.uiso, dtype=float))
    ours, _ = sf.structure_factors(iso, HKL3, None)
    strong = np.abs(theirs) > 1e-3 * np.abs(theirs).max()
    assert strong.sum() > 50
    np.testing.assert_array_less(np.abs(np.abs(ours) - np.abs(theirs))[strong] / np.abs(theirs)[strong], 1e-3)
    np.testing.assert_array_less(np.abs(np.angle(ours[strong] / theirs[strong])), 1e-3)


def test_what_differs_from_dans_diffraction():
    """Anisotropic displacements (braggflow uses them, Dans does not: Ca2RuO4's amplitudes differ by up to 36 %)
    and f', f'' (Cromer-Liberman here, Henke's tables in Dans: 0.1-1.6 % at 10 keV); the anomalous sign convention
    is the same (ZnO's Bijvoet pairs differ by 29 %, and braggflow's F(h) is Dans' F(h))."""
    path = resolve_cif("dans:Ca2RuO4")
    xtl = dif.Crystal(str(path))
    xtl.Scatter.setup_scatter(scattering_type="xray", output=False)
    theirs = xtl.Scatter.structure_factor(HKL3, scattering_type="xray")
    ours, _ = sf.structure_factors(read_structure(path), HKL3, None)
    strong = np.abs(theirs) > 1e-3 * np.abs(theirs).max()
    assert (np.abs(np.abs(ours) - np.abs(theirs))[strong] / np.abs(theirs)[strong]).max() > 0.1

    path = resolve_cif("dans:ZnO")
    model = read_structure(path)
    xtl = dif.Crystal(str(path))
    xtl.Scatter.setup_scatter(scattering_type="xray dispersion", energy_kev=10.0, output=False)
    theirs = xtl.Scatter.structure_factor(HKL3, scattering_type="xray dispersion")
    f_plus, f_minus = sf.structure_factors(model, HKL3, 10.0)
    strong = np.abs(theirs) > 1e-2 * np.abs(theirs).max()
    rel_plus = np.abs(np.abs(f_plus) - np.abs(theirs))[strong] / np.abs(theirs)[strong]
    rel_minus = np.abs(np.abs(f_minus) - np.abs(theirs))[strong] / np.abs(theirs)[strong]
    assert rel_plus.max() < 0.025 < rel_minus.max()


def test_hexagonal_sites_given_to_four_decimals_are_merged():
    """ZnO's 0.3333 / 0.6667 land 1e-4 apart under the hexagonal operations: 4 atoms in the cell, not 12."""
    atoms = sf.unit_cell_atoms(read_structure(resolve_cif("dans:ZnO")))
    assert len(atoms.fract) == 4
    assert sorted(atoms.atomic_number.tolist()) == [8, 8, 30, 30]


def test_atom_scattering_sums_to_the_structure_factors():
    model = read_structure(resolve_cif("dans:Ca2RuO4"))
    atoms = sf.unit_cell_atoms(model)
    f, _ = sf.structure_factors(model, HKL3, 10.0, atoms=atoms)
    parts = sf.atom_scattering(model, atoms, HKL3, 10.0)
    np.testing.assert_allclose((parts * np.exp(2j * np.pi * HKL3 @ atoms.fract.T)).sum(1), f, rtol=1e-12,
                               atol=1e-9)


# ------------------------------------------------------------------ origins and hands

@pytest.mark.parametrize("hm, shifts", [("P -1", 8), ("P b c a", 8), ("F m -3 m", 2), ("I m -3 m", 1),
                                        ("P 42/m n m", 4), ("P 63/m m c", 2), ("R -3 m:H", 2)])
def test_permissible_origins_of_centrosymmetric_groups(hm, shifts):
    sg = gemmi.SpaceGroup(hm)
    assert len(origins.continuous_axes(sg)) == 0
    assert len(origins.discrete_shifts(sg, np.zeros((0, 3)))) == shifts


@pytest.mark.parametrize("hm, axes", [("P 1", 3), ("P 1 21 1", 1), ("P 63 m c", 1), ("P m m 2", 1),
                                      ("P 1 m 1", 2)])
def test_polar_groups_have_a_continuous_origin(hm, axes):
    sg = gemmi.SpaceGroup(hm)
    found = origins.continuous_axes(sg)
    assert len(found) == axes
    for r in origins._rotations(sg):
        np.testing.assert_allclose(found @ r.T, found)


def _images(sg, fract):
    out = []
    for op in sg.operations():
        rot, tran = np.array(op.rot) / op.DEN, np.array(op.tran) / op.DEN
        out.append(fract @ rot.T + tran)
    return np.concatenate(out) % 1.0


def _same_set(a, b):
    d = a[:, None, :] - b[None, :, :]
    d -= np.round(d)
    return bool(np.all(np.any(np.all(np.abs(d) < 1e-9, axis=2), axis=1)))


def test_a_permissible_shift_keeps_the_space_group_and_another_does_not():
    """Moved by a permissible shift, the structure is still invariant under every operation of its group."""
    model = read_structure(resolve_cif("dans:Ca2RuO4"))
    sg = model.spacegroup
    cell = _images(sg, model.fract)
    for t in origins.discrete_shifts(sg, np.zeros((0, 3))):
        moved = (cell - t) % 1.0
        assert _same_set(_images(sg, moved), moved)
    moved = (cell - np.array([0.25, 0.0, 0.0])) % 1.0
    assert not _same_set(_images(sg, moved), moved)


def test_the_continuous_origin_is_fixed_by_its_reference_reflection():
    crystal = load_crystal("dans:ZnO", resolve_cif("dans:ZnO"), HKL3, 10.0)
    assert crystal.axes.tolist() == [[0, 0, 1]] and abs(int(crystal.reference_hkl[0] @ crystal.axes[0])) == 1
    f = structure_factors_of(crystal, HKL3, crystal.atoms.fract[None])[0]
    row = np.flatnonzero(np.all(HKL3 == crystal.reference_hkl[0], axis=1))[0]
    assert abs(np.angle(f[row])) < 1e-9
    # any move of the parent along c leaves the same fixed origin
    moved = dataclasses.replace(crystal, atoms=dataclasses.replace(crystal.atoms,
                                                                   fract=crystal.atoms.fract + [0, 0, 0.137]))
    f2 = structure_factors_of(moved, HKL3, moved.atoms.fract[None])[0]
    shift = origins.origin_fixing_shift(np.angle(f2[[row]]), crystal.reference_hkl, crystal.axes)
    np.testing.assert_allclose(((moved.atoms.fract - shift) - crystal.atoms.fract + 0.5) % 1.0 - 0.5, 0, atol=1e-9)


def test_symmetry_augmentation_gives_the_structure_factors_of_the_moved_structure():
    """F'(h) = exp(2 pi i h.tau) F(R^T h) is the F of the sample moved by (R, tau): another valid sample."""
    crystal = load_crystal("dans:Rutile", resolve_cif("dans:Rutile"), HKL3, 10.0)
    x = perturbed_positions(crystal, 1, "isotropic", 0.03, seed=5)
    f = structure_factors_of(crystal, HKL3, x)[0]
    ops = origins.grid_operations(crystal.model.spacegroup, HKL3)
    assert len(ops) == 16
    for (perm, tau_phase), op in zip(ops, crystal.model.spacegroup.operations()):
        rot, tran = np.array(op.rot) / op.DEN, np.array(op.tran) / op.DEN
        moved = structure_factors_of(crystal, HKL3, (x[0] @ rot.T + tran)[None])[0]
        np.testing.assert_allclose(np.exp(1j * tau_phase) * f[perm], moved, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------ the dataset and its file

@pytest.fixture(scope="module")
def volumes():
    s = _settings()
    return build(s, _files(s))


def test_dataset_splits_perturbations_and_file(volumes, tmp_path):
    v = volumes
    assert v.amplitude.shape == (24, 125) and v.shape == (5, 5, 5)
    unseen = v.crystal == 2
    assert np.all(v.split[unseen] == SPLITS.index("test_unseen"))
    for c in (0, 1):
        assert sorted(np.bincount(v.split[v.crystal == c], minlength=4)[:3].tolist()) == [2, 2, 4]
    # the perturbation moves atoms (the samples differ) but keeps their centroid (the origin)
    assert np.ptp(v.amplitude[v.crystal == 1], axis=0).max() > 1.0
    # F(-h) = conj F(h) up to f'': the file's amplitudes nearly Friedel-symmetric
    assert np.abs(v.amplitude - v.amplitude[:, ::-1]).max() < 0.05 * v.amplitude.max()
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    ident = write_phase_volumes(a, v)
    write_phase_volumes(b, build(_settings(), _files(_settings())))
    assert a.read_bytes() == b.read_bytes() and read_dataset_id(a) == ident
    back = read_phase_volumes(a)
    np.testing.assert_array_equal(back.phase_rad, v.phase_rad)
    assert back.crystals[2]["unseen"] and back.crystals[0]["sha256"] == v.crystals[0]["sha256"]
    other = tmp_path / "c.h5"
    assert write_phase_volumes(other, build(_settings(seed=4), _files(_settings()))) != ident


def test_a_sample_does_not_depend_on_the_set_size():
    small, big = _settings(samples_per_crystal=4), _settings(samples_per_crystal=8)
    v4, v8 = build(small, _files(small)), build(big, _files(big))
    np.testing.assert_array_equal(v4.amplitude[v4.crystal == 1], v8.amplitude[v8.crystal == 1][:4])


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(InputError, match="dans:Unobtainium.*known: .*Diamond"):
        resolve_cif("dans:Unobtainium")
    bad = tmp_path / "x.h5"
    bad.write_text("not hdf5")
    with pytest.raises(InputError, match="x.h5: not a braggflow phase dataset"):
        read_phase_volumes(bad)
    cfg = {"phases": {"sets": {"s": {"cifs": ["dans:Iron"], "unseen": ["dans:Gold"]}}}}
    with pytest.raises(ConfigError, match=r"'phases.sets.s.unseen': 'dans:Gold' is not among"):
        check_phase_sets(cfg)
    cfg = {"phases": {"sets": {"s": {"cifs": ["dans:Iron"], "unseen": ["dans:Iron"]}}}}
    with pytest.raises(ConfigError, match="every crystal is held out"):
        check_phase_sets(cfg)
    cfg = {"phases": {"sets": {"s": {"cifs": ["nowhere.cif"], "grid_half_width": [20, 1, 1]}},
                      "evaluation": {"map_grid": 24}}}
    with pytest.raises(ConfigError, match=r"(?s)map_grid.*no such file 'nowhere.cif'"):
        check_phase_sets(cfg)


# ------------------------------------------------------------------ the loss

def _friedel(v: PhaseVolumes) -> PhaseVolumes:
    """The set without f'': amplitudes symmetric, phases antisymmetric (the grid's row V-1-j is -h of row j)."""
    a = 0.5 * (v.amplitude + v.amplitude[:, ::-1])
    z = np.exp(1j * v.phase_rad.astype(float))
    p = np.angle(0.5 * (z + np.conj(z[:, ::-1])))
    return dataclasses.replace(v, amplitude=a.astype(np.float32), phase_rad=p.astype(np.float32))


def test_the_loss_is_one_minus_the_map_correlation(volumes):
    """With Friedel-symmetric data the loss equals 1 - RSCC computed from the maps (Parseval), at any error."""
    v = _friedel(volumes)
    eq = Equivalents(v)
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.8, v.phase_rad.shape)
    noise = 0.5 * (noise - noise[:, ::-1])
    pred = v.phase_rad + noise
    s = score(np.stack([np.cos(pred), np.sin(pred)], axis=1), v, eq, shell_edges(v, 3), 12)
    assert 0.05 < s.loss.mean() < 0.9
    np.testing.assert_allclose(s.loss, 1 - s.rscc, atol=1e-5)


def test_the_loss_is_blind_to_permissible_origins_and_the_hand_only(volumes):
    v = _friedel(volumes)
    eq = Equivalents(v)
    rutile = np.flatnonzero(v.crystal == 1)
    t = np.array([0.5, 0.5, 0.5])  # permissible in P4_2/mnm
    moved = -(v.phase_rad[rutile] - 2 * np.pi * (v.hkl @ t))  # another origin and the other hand
    out = np.zeros((len(v.amplitude), 2, len(v.hkl)))
    out[:, 0] = 1.0
    out[rutile] = np.stack([np.cos(moved), np.sin(moved)], axis=1)
    s = score(out, v, eq, shell_edges(v, 3), 12)
    assert s.loss[rutile].max() < 1e-5
    wrong = v.phase_rad[rutile] - 2 * np.pi * (v.hkl @ np.array([0.25, 0.0, 0.0]))
    out[rutile] = np.stack([np.cos(wrong), np.sin(wrong)], axis=1)
    assert score(out, v, eq, shell_edges(v, 3), 12).loss[rutile].min() > 0.05


# ------------------------------------------------------------------ models and training

def test_every_model_predicts_friedel_pairs_and_training_is_reproducible(volumes, tmp_path):
    import torch

    from braggflow.phases.models import KINDS, build_model
    from braggflow.phases.train import train_phase_model

    path = tmp_path / "d.h5"
    write_phase_volumes(path, volumes)
    x = torch.randn(3, 2, 5, 5, 5)
    args = {"linear": {}, "mlp": {"hidden": 8}, "cnn": {"channels": 3}, "unet": {"channels": 3, "dropout": 0.1,
                                                                              "augment": True}}
    for kind in KINDS:
        out = build_model(kind, (5, 5, 5), args[kind]).eval()(x)
        flipped = torch.flip(out, dims=(2, 3, 4))
        torch.testing.assert_close(out[:, 0], flipped[:, 0])
        torch.testing.assert_close(out[:, 1], -flipped[:, 1])
    fit = PhaseFitSettings(batch_size=4, epochs=2, patience=2, learning_rate=1e-3, weight_decay=0.0)
    bytes_ = []
    for run, threads in enumerate((1, 2)):
        torch.set_num_threads(threads)
        w = tmp_path / f"unet{run}.pt"
        entry = train_phase_model(path, "unet", args["unet"], fit, 11, weights=str(w), card=str(tmp_path / f"{run}.json"),
                                  history=str(tmp_path / f"{run}.tsv"))
        bytes_.append(w.read_bytes())
    assert bytes_[0] == bytes_[1]
    assert entry["dataset"]["dataset_id"] == read_dataset_id(path) and entry["training"]["epochs_run"] == 2
