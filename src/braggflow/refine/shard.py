"""Refining the stills of one DIALS shard, and the detector of a dataset, from what the workflow has on disk.

Each still starts from DIALS' model as the export holds it (the A matrix, the beam and the panel DIALS used) and
is fitted against the counts of the frames DIALS read, in shoeboxes around DIALS' strong spots (the brightest
``max_spots``), untrusted pixels left out. What the pixels cannot fix is the experiment's model, ``StillPrior``:
the crystal shape, the mosaic spread and domain count, the spectrum's shape and width, the nominal fluence, the
polarization and the oversampling (for the workflow's own datasets, the simulation section's values).

A still DIALS did not index, without strong spots, or whose pixels are not finite, gets its reason in the table
(``status``, ``message``); no still stops the shard. Nothing here reads a truth: the same code serves real stills.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from ..detector import INCIDENT_UNIT, Detector, Panel
from ..draws import axis_angle_matrix, mosaic_umats
from ..settings import Section
from ..simulator import Crystal, Numerics, Pulse, Still, StructureFactorTable
from .stills import NoiseModel, RefinedStill, RefineSettings, Shoeboxes, refine_detector, refine_still

ENERGY_KEV_ANGSTROM = 12.398419843320026
# a fixed draw: the model's domains are the same for every still and every run
MODEL_MOSAIC_SEED = 0


@dataclass(frozen=True)
class RefinementSettings(Section):
    """The ``refinement`` section without ``threads`` and ``device`` (where it runs, not what it computes)."""

    KEY: ClassVar[str] = "refinement"
    shoebox_half_width_px: int
    max_spots: int
    ncells_per_axis: bool
    refine_cell: bool
    refine_energy: bool
    nll_tolerance: float
    max_rounds: int
    iterations_per_round: int
    rotation_bound_deg: float
    cell_bound_rel: float
    ncells_bound_factor: float
    energy_bound_rel: float
    refine_mosaic: bool
    detector_stills: int
    distance_bound_mm: float
    beam_bound_px: float

    def still_settings(self, intensities: str = "structure_factors") -> RefineSettings:
        return RefineSettings(intensities=intensities, ncells_per_axis=self.ncells_per_axis, refine_cell=self.refine_cell,
                              refine_energy=self.refine_energy, max_rounds=self.max_rounds,
                              iterations_per_round=self.iterations_per_round, nll_tolerance=self.nll_tolerance,
                              rotation_bound_deg=self.rotation_bound_deg, cell_bound_rel=self.cell_bound_rel,
                              ncells_bound_factor=self.ncells_bound_factor, energy_bound_rel=self.energy_bound_rel,
                              refine_mosaic=self.refine_mosaic)


def _ncells_start(spec: dict[str, Any]) -> float:
    """The middle of the configured crystal-size distribution (the start of every still's Ncells)."""
    if spec["dist"] == "fixed":
        return float(spec["value"])
    if spec["dist"] == "uniform":
        return 0.5 * (float(spec["low"]) + float(spec["high"]))
    return float(spec["median"])


def model_mosaic(spread_deg: float, n_domains: int, model: str) -> np.ndarray:
    """The refinement's mosaic domains: domain 0 the crystal itself, the others one fixed draw of the configured
    model in antipodal pairs (R, R^-1), so that the domains' mean orientation is the crystal's and the model does
    not tilt the orientation it fits (an odd domain left over is the identity)."""
    n = max(int(n_domains), 1)
    drawn = mosaic_umats(np.random.default_rng(MODEL_MOSAIC_SEED), spread_deg, n, model)
    out = [np.eye(3)]
    for k in range(1, (n - 1) // 2 + 1):
        out += [drawn[k], drawn[k].T]
    if (n - 1) % 2:
        out.append(np.eye(3))
    return np.stack(out)


@dataclass(frozen=True)
class StillPrior:
    """What a still's refinement assumes of the experiment and does not refine."""

    crystal_shape: str
    ncells: float
    mosaic_umats: np.ndarray  # (M, 3, 3)
    spectrum_offsets: np.ndarray  # (S,) relative wavelength offsets from the central one
    spectrum_weights: np.ndarray  # (S,)
    fluence_photons_per_m2: float
    kahn_factor: float
    polarization_axis: tuple[float, float, float]
    oversample: int
    sensor_layers: int = 1  # a thick sensor's layers (the panel, from DIALS' geometry, has its thickness)
    beam: Any = None  # braggflow.beam.Beam: its divergence makes each spectrum sample several sources

    @classmethod
    def from_config(cls, sim: dict[str, Any], beam) -> "StillPrior":
        """From the ``simulation`` section and the beam (``braggflow.beam.Beam``) that made the frames."""
        from ..draws import spectrum

        lam, w = spectrum(1.0, sim["spectrum_shape"], float(sim["bandwidth_frac"]), int(sim["spectrum_samples"]))
        return cls(sim["crystal_shape"], _ncells_start(sim["ncells"]),
                   model_mosaic(float(sim["mosaic_spread_deg"]), int(sim["mosaic_domains"]), sim["mosaic_model"]),
                   lam - 1.0, w, float(beam.fluence_per_m2), float(beam.kahn_factor),
                   tuple(beam.polarization_axis), int(sim["oversample"]), max(int(sim["sensor_layers"]), 1), beam)

    def sources(self, wavelengths: np.ndarray):
        """(wavelengths, weights, directions) of the model's pulse: the beam's divergence, as simulated."""
        if self.beam is None:
            return wavelengths, self.spectrum_weights, None
        return self.beam.sources(wavelengths, self.spectrum_weights)

    def still(self, a_matrix: np.ndarray, central_wavelength_angstrom: float,
              ncells: tuple[float, float, float] | None = None, mosaic_umats: np.ndarray | None = None) -> Still:
        """The model's still at an A matrix and central wavelength; ``ncells`` and ``mosaic_umats``: other than the
        prior's (a refined crystal's)."""
        n = (self.ncells,) * 3 if ncells is None else tuple(ncells)
        lam, w, directions = self.sources(central_wavelength_angstrom * (1.0 + self.spectrum_offsets))
        return Still(Crystal(np.asarray(a_matrix, float).reshape(3, 3), ncells=n, shape=self.crystal_shape,
                             mosaic_umats=self.mosaic_umats if mosaic_umats is None else mosaic_umats),
                     Pulse(lam, weights=w, directions=directions, fluence_photons_per_m2=self.fluence_photons_per_m2,
                           kahn_factor=self.kahn_factor, polarization_axis=self.polarization_axis),
                     Numerics(oversample=self.oversample, sensor_layers=self.sensor_layers))


def export_detector(export: dict[str, np.ndarray], i: int) -> Detector | None:
    """The panels DIALS used for frame ``i``, each with the sensor DIALS corrects the parallax of (its thickness and
    attenuation; thin where the export does not know them); None where the export has no geometry for it."""
    origin = export["panel_origin_mm"][i]
    if origin.shape[0] == 0 or not np.all(np.isfinite(origin)):
        return None
    det = Detector.from_arrays([f"panel{p}" for p in range(len(origin))], origin, export["panel_fast_axis"][i],
                               export["panel_slow_axis"][i], export["panel_pixel_size_mm"][i],
                               export["panel_image_size"][i])
    t0, mu = export["panel_parallax_t0_mm"][i], export["panel_parallax_mu_per_mm"][i]
    return Detector(tuple(replace(p, thickness_mm=float(t), mu_per_mm=float(m))
                          if np.isfinite(t) and np.isfinite(m) and t > 0 and m > 0 else p
                          for p, t, m in zip(det.panels, t0, mu)))


def beam_of(export: dict[str, np.ndarray], i: int) -> tuple[np.ndarray, float]:
    """(unit beam direction, wavelength A) of DIALS' s0 for frame ``i``."""
    s0 = np.asarray(export["s0"][i], float)
    k = float(np.linalg.norm(s0))
    return s0 / k, 1.0 / k


def indexed_spots(export: dict[str, np.ndarray], i: int, xy: np.ndarray, panel: np.ndarray,
                  within_px: float) -> np.ndarray:
    """(n,) bool: which of frame ``i``'s spots (xy (n, 2) px on ``panel``) have a reflection DIALS predicted
    (its integrated xyzcal) within ``within_px`` on the same panel: the spots DIALS' lattice accounts for."""
    on = export["refl_frame"] == i
    cal = np.column_stack([export["refl_x_cal"][on], export["refl_y_cal"][on]]).astype(float)
    cal_panel = export["refl_panel"][on]
    out = np.zeros(len(xy), bool)
    for k in np.unique(panel):
        mine, theirs = panel == k, cal[cal_panel == k]
        if len(theirs):
            d = np.hypot(xy[mine, None, 0] - theirs[None, :, 0], xy[mine, None, 1] - theirs[None, :, 1])
            out[mine] = d.min(axis=1) <= within_px
    return out


def strong_centres(export: dict[str, np.ndarray], i: int, counts: np.ndarray, untrusted: np.ndarray | None,
                   max_spots: int, indexed_within_px: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """((n, 2) (fast, slow) px, (n,) panel) of frame ``i``'s strong spots, the ``max_spots`` brightest (by the
    counts of each spot's 3x3 pixels) where there are more; ``counts``: (slow, fast), or (panels, slow, fast).
    ``indexed_within_px``: only the spots DIALS' lattice accounts for (``indexed_spots``): a real still's strong
    spots include other lattices, ice and zingers, whose shoeboxes the model can fit only by moving its own
    spots."""
    c = np.asarray(counts, float)
    c = c if c.ndim == 3 else c[None]
    sel = (export["strong_frame"] == i) & (export["strong_panel"] >= 0) & (export["strong_panel"] < len(c))
    xy = np.column_stack([export["strong_x"][sel], export["strong_y"][sel]]).astype(float)
    panel = export["strong_panel"][sel].astype(np.int64)
    keep = np.isfinite(xy).all(axis=1)
    xy, panel = xy[keep], panel[keep]
    if indexed_within_px is not None:
        keep = indexed_spots(export, i, xy, panel, indexed_within_px)
        xy, panel = xy[keep], panel[keep]
    if len(xy) <= max_spots:
        return xy, panel
    if untrusted is not None:
        c = np.where(np.asarray(untrusted, bool).reshape(c.shape), 0.0, c)
    c = np.nan_to_num(c)
    fx = np.clip(np.floor(xy[:, 0]).astype(int), 1, c.shape[2] - 2)
    fy = np.clip(np.floor(xy[:, 1]).astype(int), 1, c.shape[1] - 2)
    bright = sum(c[panel, fy + dy, fx + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    order = np.argsort(-bright, kind="stable")[:max_spots]
    return xy[order], panel[order]


@dataclass(frozen=True)
class StillInput:
    """One still to refine: its start (or the reason there is none) and its pixels."""

    frame: int
    start: Still | None
    panels: tuple[Panel, ...] | None  # the detector DIALS used (boxes.panels index it)
    boxes: Shoeboxes | None
    beam_direction: np.ndarray | None
    message: str = ""

    @property
    def panel(self) -> Panel | None:
        """The one panel of a single-panel detector (the detector refinement's)."""
        return self.panels[0] if self.panels is not None and len(self.panels) == 1 else None


def still_inputs(export: dict[str, np.ndarray], counts: np.ndarray, untrusted: np.ndarray | None,
                 prior: StillPrior, settings: RefinementSettings,
                 indexed_within_px: float | None = None) -> list[StillInput]:
    """Per frame of the export, what its refinement starts from (``counts``: (frames, slow, fast) ADU, or
    (frames, panels, slow, fast) for a multi-panel detector; ``untrusted``: the same shape, or that of one frame
    for every frame, or None)."""
    out = []
    for i in range(len(export["indexed"])):
        if not export["indexed"][i]:
            out.append(StillInput(i, None, None, None, None, "DIALS did not index this still"))
            continue
        det = export_detector(export, i)
        a = np.asarray(export["a_matrix"][i], float)
        if det is None or not np.all(np.isfinite(a)) or not np.all(np.isfinite(export["s0"][i])):
            out.append(StillInput(i, None, None, None, None, "the DIALS export has no finite model for this still"))
            continue
        panels = tuple(det.panels)
        frame = np.asarray(counts[i], float)
        bad = None if untrusted is None else (untrusted if np.ndim(untrusted) == frame.ndim else untrusted[i])
        shapes = {(q.n_slow, q.n_fast) for q in panels}
        expected = ((len(panels),) if len(panels) > 1 else ()) + (next(iter(shapes)) if len(shapes) == 1 else ())
        if len(shapes) != 1 or frame.shape != expected:
            out.append(StillInput(i, None, None, None, None, f"frame of shape {frame.shape} on {len(panels)} "
                                  f"panel(s) of {sorted(shapes)} (slow, fast) px"))
            continue
        direction, wavelength = beam_of(export, i)
        centres, on = strong_centres(export, i, frame, bad, settings.max_spots, indexed_within_px)
        boxes = (Shoeboxes.around(frame, bad, centres, settings.shoebox_half_width_px, on) if frame.ndim == 3
                 else Shoeboxes.around(frame, bad, centres, settings.shoebox_half_width_px))
        out.append(StillInput(i, prior.still(a, wavelength), panels, boxes, direction))
    return out


def _check_beam(direction: np.ndarray) -> str:
    angle = math.degrees(math.acos(float(np.clip(direction @ INCIDENT_UNIT, -1, 1))))
    return "" if angle < 1e-6 else f"the beam is {angle:.3g} deg off the model's -z: not refined"


def still_row(item: StillInput, res: RefinedStill | None, status: str, message: str) -> dict[str, Any]:
    """One row of the stills table: the start and the refined model, and how the fit went (no times: the same
    inputs give the same bytes; the log has each still's CPU time, the benchmark file the job's)."""
    row: dict[str, Any] = {"frame": item.frame, "status": status, "message": message, "converged": False,
                           "spots": 0, "pixels": 0, "iterations": 0, "nll_start": np.nan, "nll_final": np.nan}
    start_a = (np.asarray(item.start.crystal.A_matrix) if item.start is not None else np.full((3, 3), np.nan))
    lam0 = float(item.start.pulse.wavelengths_A @ item.start.pulse.weights) if item.start is not None else np.nan
    model = res if res is not None and status != "failed" else None  # a failed fit has no model to report
    a = np.asarray(model.A_matrix) if model is not None else np.full((3, 3), np.nan)
    for j in range(9):
        row[f"A0_{j // 3}{j % 3}"] = float(start_a.flat[j])
    for j in range(9):
        row[f"A{j // 3}{j % 3}"] = float(a.flat[j])
    cell = model.cell if model is not None else (np.nan,) * 6
    for name, v in zip(("a", "b", "c", "alpha", "beta", "gamma"), cell):
        row[f"cell_{name}"] = float(v)
    ncells = model.ncells if model is not None else (np.nan,) * 3
    for name, v in zip(("na", "nb", "nc"), ncells):
        row[f"ncells_{name}"] = float(v)
    row["energy_start_kev"] = ENERGY_KEV_ANGSTROM / lam0 if np.isfinite(lam0) else np.nan
    row["energy_kev"] = row["energy_start_kev"] * model.energy_factor if model is not None else np.nan
    row["energy_refined"] = bool(model.energy_refined) if model is not None else False
    row["scale_factor"] = float(model.scale_factor) if model is not None else np.nan
    # each mosaic domain (but domain 0, the crystal's A) as its rotation from the prior's domain, in degrees
    start_umats = item.start.crystal.mosaic_umats if item.start is not None else np.zeros((0, 3, 3))
    refined_umats = model.mosaic_umats if model is not None else None
    for m in range(1, len(start_umats)):
        v = (rotation_vector(refined_umats[m] @ start_umats[m].T) if refined_umats is not None
             else (np.zeros(3) if model is not None else np.full(3, np.nan)))
        for axis, value in zip("xyz", np.degrees(v)):
            row[f"mosaic{m}_{axis}_deg"] = float(value)
    if res is not None:
        row.update(converged=bool(res.converged), spots=int(res.shoeboxes), pixels=int(res.pixels),
                   iterations=int(res.iterations), nll_start=float(res.nll_start), nll_final=float(res.nll_final))
    return row


def refine_shard(items: list[StillInput], sf: StructureFactorTable | None, noise: NoiseModel, space_group: str,
                 reference_cell: tuple[float, ...] | None, settings: RefinementSettings, device: str | None = None,
                 log=None, psf_fwhm_px: float = 0.0) -> tuple[list[dict[str, Any]], list[RefinedStill | None]]:
    """Refine every still of ``items``: the table's rows (one per frame) and the refined models (None where a
    still had none to refine). ``sf`` None: every shoebox its own intensity (``intensities: per_shoebox``)."""
    rows, refined = [], []
    for item in items:
        t0 = time.process_time()
        res, status, message = None, "skipped", item.message
        if item.start is not None:
            message = _check_beam(item.beam_direction)
            if not message:
                try:
                    res = refine_still(item.start, item.panels, sf, item.boxes, noise, space_group,
                                       settings.still_settings("per_shoebox" if sf is None else "structure_factors"),
                                       reference_cell, device, psf_fwhm_px)
                except ValueError as exc:  # a model the refinement cannot take (e.g. a cell off its space group)
                    message = f"{type(exc).__name__}: {exc}"
                if res is not None:
                    status = "converged" if res.converged else ("failed" if res.pixels == 0 or not
                                                                np.isfinite(res.nll_final) else "not converged")
                    message = res.message
        cpu = time.process_time() - t0
        rows.append(still_row(item, res, status, message))
        refined.append(res)
        if log:
            log.info("frame %d: %s (%s)%s", item.frame, status, message,
                     f", {res.shoeboxes} shoeboxes, {res.pixels} px, NLL {res.nll_start:.1f} -> "
                     f"{res.nll_final:.1f}, {cpu:.1f} CPU-s" if res is not None else "")
    return rows, refined


def detector_stills(items: list[StillInput], n_stills: int) -> list[StillInput]:
    """The stills a dataset's detector is refined from: the ``n_stills`` with the most shoeboxes (ties by order)."""
    usable = [it for it in items if it.start is not None and it.boxes is not None and it.boxes.n_boxes > 0
              and it.panel is not None and not _check_beam(it.beam_direction)]
    usable.sort(key=lambda it: -it.boxes.n_boxes)
    return usable[:n_stills]


def refine_dataset_detector(items: list[StillInput], sf: StructureFactorTable, noise: NoiseModel,
                            space_group: str, reference_cell: tuple[float, ...] | None,
                            settings: RefinementSettings, device: str | None = None) -> dict[str, Any]:
    """The panel refined from the dataset's best stills (``detector_stills``), as a JSON-able record: the start
    and refined panel, the distance and beam-centre shifts, the stills used and how the fit went."""
    chosen = detector_stills(items, settings.detector_stills)
    record: dict[str, Any] = {"stills": [int(it.frame) for it in chosen], "converged": False}
    if not chosen:
        record.update(message="no indexed still with shoeboxes to refine the detector from", distance_shift_mm=np.nan,
                      beam_shift_px=[np.nan, np.nan], panel_start=None, panel=None)
        return record
    panel = chosen[0].panel
    # one detector: the same panel geometry (its sensor's attenuation may differ with each still's energy)
    if any(not _same_panel(it.panel, panel) for it in chosen):
        record.update(message="the stills were indexed on different panels: one detector cannot be refined",
                      distance_shift_mm=np.nan, beam_shift_px=[np.nan, np.nan], panel_start=_panel_dict(panel),
                      panel=None)
        return record
    still_cfg = RefineSettings(**{**settings.still_settings().__dict__, "refine_cell": False, "refine_energy": False})
    res = refine_detector([it.start for it in chosen], [it.boxes for it in chosen], panel, sf, noise, space_group,
                          still_cfg, reference_cell, device, settings.distance_bound_mm, settings.beam_bound_px)
    record.update(message=res.message, converged=bool(res.converged),
                  distance_shift_mm=float(res.distance_shift_mm[0]),
                  beam_shift_px=[float(v) for v in res.beam_shift_px[0]], panel_start=_panel_dict(panel),
                  panel=_panel_dict(res.panel), nll_start=float(res.nll_start), nll_final=float(res.nll_final),
                  iterations=int(res.iterations),
                  still_messages=[s.message for s in res.stills])
    return record


def _same_panel(a: Panel, b: Panel, tol_mm: float = 1e-6) -> bool:
    return (a.n_fast, a.n_slow, a.pixel_mm) == (b.n_fast, b.n_slow, b.pixel_mm) and all(
        np.allclose(getattr(a, k), getattr(b, k), atol=tol_mm) for k in ("origin_mm", "fast_axis", "slow_axis"))


def _panel_dict(p: Panel) -> dict[str, Any]:
    return {"origin_mm": list(p.origin_mm), "fast_axis": list(p.fast_axis), "slow_axis": list(p.slow_axis),
            "pixel_size_mm": list(p.pixel_mm), "image_size": [p.n_fast, p.n_slow]}


def rotation_vector(r: np.ndarray) -> np.ndarray:
    """The axis x angle (rad) of a rotation matrix."""
    angle = math.acos(float(np.clip((np.trace(r) - 1) / 2, -1, 1)))
    if angle < 1e-12:
        return np.zeros(3)
    return np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2 * math.sin(angle)) * angle


def refined_mosaic(row, prior: "StillPrior") -> np.ndarray:
    """The domains of a stills-table row: the prior's, each turned by its refined rotation (where refined)."""
    out = [np.asarray(prior.mosaic_umats[0])]
    for m in range(1, len(prior.mosaic_umats)):
        v = np.radians([float(row.get(f"mosaic{m}_{a}_deg", 0.0)) for a in "xyz"])
        v = np.nan_to_num(v)
        angle = float(np.linalg.norm(v))
        r = np.eye(3) if angle < 1e-15 else axis_angle_matrix(v / angle, angle)
        out.append(r @ prior.mosaic_umats[m])
    return np.stack(out)


def mean_orientation(umats: np.ndarray) -> np.ndarray:
    """The rotation whose vector is the mean of the domains' rotation vectors: a mosaic crystal's orientation
    (its domain 0 is one of them)."""
    v = np.mean([rotation_vector(r) for r in np.asarray(umats, float).reshape(-1, 3, 3)], axis=0)
    angle = float(np.linalg.norm(v))
    return np.eye(3) if angle < 1e-15 else axis_angle_matrix(v / angle, angle)


def _shard_stills(export_path, frames_path, prior: StillPrior, settings: RefinementSettings,
                  saturation_adu: float) -> tuple[dict[str, np.ndarray], list[StillInput], np.ndarray]:
    """A shard's DIALS export, what each of its stills starts from, and its frames' indices. Untrusted: pixels
    written as < 0 (gaps, bad pixels) and saturated ones."""
    from ..formats import shards as S
    from ..formats.dials_export import read_dials_export

    counts = S.read_images(frames_path)
    export = read_dials_export(export_path, len(counts))
    items = still_inputs(export, counts, (counts < 0) | (counts >= saturation_adu), prior, settings)
    return export, items, S.read_frame_arrays(frames_path)["frame_index"]


def refine_overlay_shard(export_path, frames_path, mtz_path, prior: StillPrior, settings: RefinementSettings,
                         noise: NoiseModel, space_group: str, reference_cell: tuple[float, ...] | None,
                         saturation_adu: float, device: str | None = None, log=None):
    """The stills of one overlay shard as DIALS indexed them, refined: (the stills table, one ExptStill per still
    with a refined model)."""
    from ..shards import load_structure_factors

    export, items, frame_index = _shard_stills(export_path, frames_path, prior, settings, saturation_adu)
    sf, _ = load_structure_factors(mtz_path)
    rows, refined = refine_shard(items, sf, noise, space_group, reference_cell, settings, device, log)
    stills = _expt_stills(rows, items, refined, prior, space_group, export, frame_index,
                          lambda item: (str(frames_path), item.frame),
                          trusted_range=(-1.0, float(saturation_adu) - 1.0))
    return rows, stills


def _expt_stills(rows: list[dict[str, Any]], items: list[StillInput], refined: list[RefinedStill | None],
                 prior: StillPrior, space_group: str, export: dict[str, np.ndarray], frame_index, image,
                 **extra) -> list:
    """One ExptStill per still refined (not failed), its model on the panels DIALS used; each row gets its
    ``frame_index`` and ``expt_index`` (-1 where the still has none). ``image(item)``: (file, index) of the image
    DIALS read; ``extra``: further ExptStill fields."""
    import gemmi

    from ..formats.expt import ExptStill

    hall = gemmi.SpaceGroup(space_group).hall
    stills = []
    for row, item, res in zip(rows, items, refined):
        row["frame_index"] = int(frame_index[item.frame])
        row["expt_index"] = -1
        if res is None or row["status"] == "failed":
            continue
        row["expt_index"] = len(stills)
        lam = float(item.start.pulse.wavelengths_A @ item.start.pulse.weights) / res.energy_factor
        path, index = image(item)
        stills.append(ExptStill(res.A_matrix, hall, lam, item.beam_direction, list(item.panels), path, index,
                                identifier=f"frame {row['frame_index']}",
                                polarization_fraction=0.5 * (1.0 + prior.kahn_factor),
                                polarization_angle_deg=math.degrees(math.atan2(prior.polarization_axis[1],
                                                                               prior.polarization_axis[0])),
                                sensor_thickness_mm=export["panel_parallax_t0_mm"][item.frame],
                                sensor_mu_per_mm=export["panel_parallax_mu_per_mm"][item.frame], **extra))
    return stills


def torch_device(choice: str, threads: int, log=None) -> str:
    """The torch device of a refinement job (``refinement.device``: auto, cpu or cuda) with ``threads`` CPU
    threads; logs which runs and why. cuda where none is visible is an error, not a silent CPU run."""
    import torch

    torch.set_num_threads(int(threads))
    available = torch.cuda.is_available()
    if choice == "cuda" and not available:
        raise RuntimeError("config key 'refinement.device' is cuda, but torch sees no CUDA device")
    device = "cuda" if choice == "cuda" or (choice == "auto" and available) else "cpu"
    if log:
        why = {"cuda": "asked for", "cpu": "asked for"}.get(choice, "a CUDA device is visible" if available
                                                          else "no CUDA device is visible")
        log.info("refinement runs on %s (%s; torch %s, %d CPU threads)", device, why, torch.__version__, threads)
    return device


STILLS_COLUMNS_FIRST = ("frame_index", "frame", "expt_index", "status", "converged", "message")


def write_stills_table(path, rows: list[dict[str, Any]]) -> None:
    """The stills table as tab-separated text, atomically (a shard without frames: the header alone)."""
    import pandas as pd

    from ..io import atomic_path

    table = pd.DataFrame(rows)
    if len(table):
        table = table[[*STILLS_COLUMNS_FIRST, *[c for c in table.columns if c not in STILLS_COLUMNS_FIRST]]]
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.10g")


def refine_overlay_detector(export_paths, frames_paths, mtz_path, prior: StillPrior, settings: RefinementSettings,
                            noise: NoiseModel, space_group: str, reference_cell: tuple[float, ...] | None,
                            saturation_adu: float, device: str | None = None) -> dict[str, Any]:
    """A dataset's detector refined from its shards (``refine_dataset_detector``); the record names each still
    used by its shard file and frame index."""
    from ..shards import load_structure_factors

    if len(export_paths) != len(frames_paths):
        raise ValueError(f"{len(export_paths)} DIALS exports but {len(frames_paths)} frame files")
    items, names = [], []
    for export_path, frames_path in zip(export_paths, frames_paths):
        _, shard_items, frame_index = _shard_stills(export_path, frames_path, prior, settings, saturation_adu)
        for item in shard_items:
            items.append(item)
            names.append({"frames": str(frames_path), "frame_index": int(frame_index[item.frame])})
    sf, _ = load_structure_factors(mtz_path)
    # frames are numbered within their shard: number the dataset's stills by position instead
    items = [replace(item, frame=k) for k, item in enumerate(items)]
    record = refine_dataset_detector(items, sf, noise, space_group, reference_cell, settings, device)
    record["stills"] = [names[k] for k in record["stills"]]
    return record


def write_detector_record(path, record: dict[str, Any]) -> None:
    """The detector record as JSON, atomically (NaN written as null)."""
    import json
    from pathlib import Path

    from ..io import atomic_path

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(clean(record), indent=1, sort_keys=True) + "\n")


def refine_experiment_frames(export_path, frames_path, prior: StillPrior, settings: RefinementSettings,
                             noise: NoiseModel, space_group: str, reference_cell: tuple[float, ...] | None,
                             sf: StructureFactorTable | None = None, psf_fwhm_um: float = 0.0,
                             indexed_within_px: float | None = 2.0, device: str | None = None, log=None):
    """An experiment's stills (its frames file, in photons, -1 where untrusted, and its DIALS export), refined
    from their DIALS models on every panel DIALS used: (the stills table, one ExptStill per refined still, the
    still inputs, the refined stills). Real stills have no known F: with ``settings`` per_shoebox intensities
    ``sf`` may be None. The .expt names each frame's own source image (the file DIALS read)."""
    from ..formats import frames as F
    from ..formats.dials_export import read_dials_export

    info = F.read_frames_info(frames_path)
    counts = np.stack([F.read_frame_photons(frames_path, i) for i in range(info.n_frames)]).astype(float)
    if info.n_panels == 1:
        counts = counts[:, 0]
    export = read_dials_export(export_path, info.n_frames)
    items = still_inputs(export, counts, counts < 0, prior, settings, indexed_within_px)
    pixel_mm = float(info.panels[0].pixel_size_mm)
    rows, refined = refine_shard(items, sf, noise, space_group, reference_cell, settings, device, log,
                                 psf_fwhm_um * 1e-3 / pixel_mm)
    stills = _expt_stills(rows, items, refined, prior, space_group, export, np.arange(info.n_frames),
                          lambda item: (str(info.source_file[item.frame]), int(info.source_index[item.frame])))
    return rows, stills, items, refined


def experiment_prior(prior: dict[str, Any], calibration_path=None) -> tuple[StillPrior, float, float]:
    """(the model, the PSF's FWHM in um, the readout noise in photons) of an experiment's refinement from its
    rule's ``prior`` (``simulation``, ``beam``, ``readout_noise_photons``) and, where the experiment's matched
    simulation is calibrated, its calibration file (its beam, PSF, crystal size and noise replace the hand-set
    values, as the matched frames take them)."""
    from ..beam import Beam

    sim, beam, readout = dict(prior["simulation"]), dict(prior["beam"]), float(prior["readout_noise_photons"])
    if calibration_path:
        from ..calibration import calibrated, read_calibration

        fitted = read_calibration(calibration_path)
        beam, sim, overlay, _ = calibrated(fitted, beam=beam, simulation=sim, overlay={})
        readout = float(overlay.get("readout_noise_adu", readout))  # matched frames are in photons
    return StillPrior.from_config(sim, Beam.from_config(beam)), float(sim["psf_fwhm_um"]), readout
