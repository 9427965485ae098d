"""The phase dataset: complex structure factors on an hkl grid of many perturbed copies of small-molecule crystals.

Each crystal (a CIF) is expanded over its unit cell with braggflow's own structure factors (``sf``: IT92 f0,
Cromer-Liberman f' and f'' at the set's photon energy, the CIF's displacement parameters), its continuous origin
fixed (``origins``), and perturbed: every atom of the cell moved at random (``along_a``: along a by a normal of
sigma = sigma_fraction of a, the study's model; ``isotropic``: along each axis by sigma_fraction of that axis),
the mean move removed so the origin stays the parent's. Reflections beyond the limiting sphere (d < lambda / 2)
cannot be measured at that energy: they are kept out of the inputs and the loss (``measurable``).

Splits: every sample of an ``unseen`` crystal is ``test_unseen`` (crystals never seen in training, the honest
test); the samples of the others are split at random into train / validation / test_seen (held-out
perturbations of seen crystals).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import gemmi
import numpy as np

from ..errors import InputError
from ..io import file_sha256
from ..sf import UnitCellAtoms, atom_scattering, unit_cell_atoms
from ..structures import CrystalModel, read_structure
from ..units import HC_KEV_ANGSTROM
from . import origins

DANS_PREFIX = "dans:"
SPLITS = ("train", "validation", "test_seen", "test_unseen")
PERTURBATIONS = ("along_a", "isotropic")
_SAMPLE_CHUNK = 64  # samples per structure-factor batch: (chunk, reflections, atoms) complex stays ~ 100 MB


def resolve_cif(name: str) -> Path:
    """A CIF of the set: ``dans:<Name>`` is <Name>.cif among the structures the dans-diffraction package ships
    (read where it is installed, not copied: most are ICSD entries), anything else a path."""
    if not name.startswith(DANS_PREFIX):
        return Path(name)
    spec = find_spec("Dans_Diffraction")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(name, "needs the dans-diffraction package (pip install dans-diffraction)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "Structures"
    path = folder / f"{name[len(DANS_PREFIX):]}.cif"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.cif"))
        raise InputError(name, f"no such structure in {folder} (known: {', '.join(known)})")
    return path


def hkl_grid(half_width: tuple[int, int, int]) -> np.ndarray:
    """(V, 3) every h, k, l with |h| <= H, |k| <= K, |l| <= L, in C order of the (2H+1, 2K+1, 2L+1) volume."""
    axes = [np.arange(-w, w + 1) for w in half_width]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def d_spacing(model: CrystalModel, hkl: np.ndarray) -> np.ndarray:
    """d of each h (inf at the origin), in A."""
    recip = np.array(model.gemmi_cell.frac.mat).T
    s = np.linalg.norm(hkl @ recip.T, axis=1)
    with np.errstate(divide="ignore"):
        return np.where(s > 0, 1.0 / np.where(s > 0, s, 1.0), np.inf)


@dataclass(frozen=True)
class Crystal:
    """One crystal of the set, its origin fixed: the parent that the samples perturb."""

    name: str
    path: str
    sha256: str
    model: CrystalModel
    atoms: UnitCellAtoms
    scattering: np.ndarray  # (V, atoms) complex: atom_scattering on the grid
    measurable: np.ndarray  # (V,) bool: d >= lambda / 2, not the origin
    d_angstrom: np.ndarray  # (V,)
    axes: np.ndarray  # (k, 3) continuous origin directions
    reference_hkl: np.ndarray  # (k, 3)
    origin_shift: np.ndarray  # (3,) what the parent was moved by (fractional)
    shifts: np.ndarray  # (n, 3) permissible discrete origin shifts left to the loss


def structure_factors_of(crystal: Crystal, hkl: np.ndarray, fract: np.ndarray) -> np.ndarray:
    """F(h) on the grid for atom positions ``fract`` (samples, atoms, 3) of the crystal's atoms."""
    return _structure_factors(hkl, fract, crystal.scattering)


def _structure_factors(hkl: np.ndarray, fract: np.ndarray, scattering: np.ndarray) -> np.ndarray:
    out = np.empty((len(fract), len(hkl)), dtype=complex)
    for i in range(0, len(fract), _SAMPLE_CHUNK):
        x = fract[i:i + _SAMPLE_CHUNK]
        ph = np.exp(2j * np.pi * np.einsum("vk,snk->svn", hkl.astype(float), x))
        out[i:i + _SAMPLE_CHUNK] = np.einsum("svn,vn->sv", ph, scattering)
    return out


def load_crystal(name: str, path: str | Path, hkl: np.ndarray, energy_kev: float) -> Crystal:
    model = read_structure(path)
    if model.kind != "small-molecule":
        raise InputError(path, "the phase dataset takes small-molecule CIFs (atoms of one unit cell)")
    atoms = unit_cell_atoms(model)
    scattering = atom_scattering(model, atoms, hkl, energy_kev)
    d = d_spacing(model, hkl)
    wavelength = HC_KEV_ANGSTROM / energy_kev
    measurable = np.isfinite(d) & (d >= wavelength / 2)
    sg = model.spacegroup
    axes = origins.continuous_axes(sg)
    f = _structure_factors(hkl, atoms.fract[None], scattering)[0]
    refs = origins.reference_reflections(hkl, np.where(measurable, np.abs(f), 0.0), axes)
    ref_phase = np.angle(f[[_row(hkl, r) for r in refs]]) if len(refs) else np.zeros(0)
    shift = origins.origin_fixing_shift(ref_phase, refs, axes)
    atoms = UnitCellAtoms(atoms.atomic_number, atoms.fract - shift, atoms.occupancy, atoms.u_cart)
    return Crystal(name, str(path), file_sha256(path), model, atoms, scattering, measurable, d, axes, refs, shift,
                   origins.discrete_shifts(sg, refs))


def _row(hkl: np.ndarray, h) -> int:
    return int(np.flatnonzero(np.all(hkl == np.asarray(h), axis=1))[0])


def sample_rng(seed: int, crystal: str, sample: int) -> np.random.Generator:
    """One stream per (seed, crystal name, sample): a sample's atoms do not depend on the set's other members or
    size."""
    return np.random.default_rng([seed, zlib.crc32(crystal.encode()), sample])


def perturbed_positions(crystal: Crystal, n: int, model: str, sigma_fraction: float, seed: int) -> np.ndarray:
    """(n, atoms, 3) fractional positions: each atom moved by a normal draw (``model``), the mean move removed."""
    if model not in PERTURBATIONS:
        raise ValueError(f"perturbation model {model!r}: one of {PERTURBATIONS}")
    x0 = crystal.atoms.fract
    out = np.empty((n, *x0.shape))
    for i in range(n):
        rng = sample_rng(seed, crystal.name, i)
        move = np.zeros(x0.shape)
        if model == "along_a":
            move[:, 0] = rng.normal(0.0, sigma_fraction, len(x0))
        else:
            move[:] = rng.normal(0.0, sigma_fraction, x0.shape)
        out[i] = x0 + move - move.mean(axis=0)
    return out


def split_codes(n: int, unseen: bool, validation_fraction: float, test_fraction: float, seed: int,
                crystal: str) -> np.ndarray:
    """Split index (SPLITS) of each of a crystal's n samples."""
    if unseen:
        return np.full(n, SPLITS.index("test_unseen"), dtype=np.uint8)
    order = np.random.default_rng([seed, zlib.crc32(crystal.encode()), 2**31]).permutation(n)
    n_val, n_test = int(round(validation_fraction * n)), int(round(test_fraction * n))
    codes = np.zeros(n, dtype=np.uint8)
    codes[order[:n_val]] = SPLITS.index("validation")
    codes[order[n_val:n_val + n_test]] = SPLITS.index("test_seen")
    return codes


@dataclass(frozen=True)
class PhaseVolumes:
    """What the dataset file holds (formats.phase_volumes): samples x the (2H+1, 2K+1, 2L+1) grid."""

    hkl: np.ndarray  # (V, 3)
    shape: tuple[int, int, int]
    amplitude: np.ndarray  # (N, V) float32, electrons
    phase_rad: np.ndarray  # (N, V) float32, in (-pi, pi]
    crystal: np.ndarray  # (N,) crystal index
    split: np.ndarray  # (N,) SPLITS index
    crystals: list[dict]  # per crystal: name, file, sha256, space group, cell, origin, shifts, ...
    measurable: np.ndarray  # (C, V) bool
    d_angstrom: np.ndarray  # (C, V) float32
    settings: dict

    def select(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == SPLITS.index(split))


def build(settings, cif_paths: dict[str, Path]) -> PhaseVolumes:
    """The whole set: ``settings`` a PhaseSetSettings, ``cif_paths`` each crystal name's file."""
    hkl = hkl_grid(tuple(settings.grid_half_width))
    shape = tuple(2 * w + 1 for w in settings.grid_half_width)
    unknown = [u for u in settings.unseen if u not in settings.cifs]
    if unknown:
        raise ValueError(f"unseen crystals {unknown} are not among the set's cifs")
    amp, ph, cry, spl, meta, meas, dd = [], [], [], [], [], [], []
    for c, name in enumerate(settings.cifs):
        crystal = load_crystal(name, cif_paths[name], hkl, settings.energy_kev)
        x = perturbed_positions(crystal, settings.samples_per_crystal, settings.perturbation.model,
                                settings.perturbation.sigma_fraction, settings.seed)
        f = structure_factors_of(crystal, hkl, x)
        amp.append(np.abs(f).astype(np.float32))
        ph.append(np.angle(f).astype(np.float32))
        cry.append(np.full(len(f), c, dtype=np.int16))
        spl.append(split_codes(len(f), name in settings.unseen, settings.validation_fraction,
                               settings.test_fraction, settings.seed, name))
        meas.append(crystal.measurable)
        dd.append(np.where(np.isfinite(crystal.d_angstrom), crystal.d_angstrom, 0.0).astype(np.float32))
        sg = crystal.model.spacegroup
        meta.append({"name": name, "file": Path(crystal.path).name, "sha256": crystal.sha256,
                     "space_group": sg.hm, "centrosymmetric": bool(sg.is_centrosymmetric()),
                     "cell": [round(v, 6) for v in crystal.model.cell], "atoms_in_cell": len(crystal.atoms.fract),
                     "elements": crystal.model.elements, "continuous_axes": crystal.axes.tolist(),
                     "reference_hkl": crystal.reference_hkl.tolist(),
                     "origin_shift": [round(float(v), 12) for v in crystal.origin_shift],
                     "origin_shifts": crystal.shifts.round(12).tolist(), "unseen": name in settings.unseen})
    return PhaseVolumes(hkl, shape, np.concatenate(amp), np.concatenate(ph), np.concatenate(cry),
                        np.concatenate(spl), meta, np.array(meas), np.array(dd), settings.params())


def space_group(entry: dict) -> gemmi.SpaceGroup:
    return gemmi.SpaceGroup(entry["space_group"])
