"""Calibrate an experiment's matched simulation from its own frames, so a new detector needs no hand-tuning.

Measured in the experiment's frames file (photons, -1 untrusted) and its DIALS result:

- background: the water-like level and its radial (q) profile, a sigma-clipped mean per q bin over the first
  frames (spots clipped away); the detector kind: photon counting where every pixel holds a whole number of
  photons, integrating otherwise; an integrating detector's readout noise where the values still cluster around
  whole photons (below ~0.25 photons; wider, it is not resolved and the configured value stays);
- spots: at every reflection DIALS integrated on an indexed frame, the net photons of a 5x5 box at its predicted
  position (box minus the 21x21 local median) and the share of them in the brightest pixel;
- the photon cut: net photons against DIALS' I/sigma, a power law fitted (Theil-Sen, in logs) to the reflections
  with I/sigma within a factor 2 of the evaluator's cut, read at the cut: the ``score_min_photons`` at which
  simulated reflections are counted as the evaluator counts real ones;
- lone bright pixels (``outliers.py``), from ``matched_outlier_pixels``' measurement.

Then a few trial frames are simulated in the experiment's geometry at the configured beam (Bragg photons only, no
PSF, at crystal sizes 0.5x, 1x and 2x the configured Ncells) and measured the same way, on noisy frames with the
measured background (noise lifts weak reflections over a cut). Bragg photons scale with the pulse's photons and
the PSF is applied after the simulation, so the settings follow without re-simulating:

- ``simulation.psf_fwhm_um``: the PSF whose simulated peak share equals the real one;
- ``beam.photons_per_pulse``: per crystal size, the scale that puts as many reflections per frame above the photon
  cut as the real indexed frames hold; ``simulation.ncells``: the crystal size whose reflections above the cut then
  have the real median net photons (interpolated in log size where the sign of the mismatch changes; where all
  sizes mismatch alike, as on four CSPAD stills, the frames do not tell and the configured size stays);
- ``jet_thickness_um``: the water model's scale that fits the measured radial profile, at that beam;
- ``overlay.readout_noise_adu``: the readout noise (photon units: matched frames are written in photons);
- outliers: the lone-pixel rate of the experiment minus that of the trial frames with their Poisson noise and
  readout noise; drawn into the training frames (``outliers_from_frames``) only where this excess is significant,
  so Poisson noise of a photon-counting detector is not taken for hot pixels;
- ``overlay.label_min_photons``: half the brightest pixel of a reflection at the cut.

Values set by hand in ``experiments.<name>.matched`` are kept and the others fitted around them (a hand-set beam
fixes the scale; a hand-set Ncells fixes the size). The fit report (measured against simulated, per setting) is
written with the settings; ``figures.calibration`` draws it.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from .beam import Beam
from .draws import draw_frame
from .errors import InputError
from .formats.frames import FramesInfo, read_frame_photons, read_frames_info, read_untrusted_pixels
from .io import write_text_atomic
from .outliers import eligible_count, isolated_pixels, read_outlier_pixels
from .overlay import OverlaySettings, frame_rng, overlay_frame
from .shards import SimulationSettings, b_matrix, load_structure_factors, simulate_panels
from .simulator import apply_psf, resolve_backend
from .water import water_photons

BOX_PX = 5  # net photons of a spot: the box the CSPAD calibration used (a 1-2 px PSF keeps > 95 % inside)
LOCAL_BACKGROUND_PX = 21
CUT_WINDOW = 2.0  # reflections with I/sigma within cut / 2 ... cut * 2 set the photon cut
MIN_REFLECTIONS = 10
NCELLS_FACTORS = (0.5, 1.0, 2.0)
SIZE_UNDETERMINED = 0.15  # |log median mismatch| spread across the sizes below which no size is preferred
PSF_GRID_PX = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
Q_BINS = 24
MAX_REPORTED = 2000  # reflections kept in the fit report for its figure
BACKGROUND_FRAMES = 20
FRACTION_RESOLVED = 0.25  # rms distance to whole photons below which the readout noise is read from it (uniform: 0.29)
OUTLIER_SIGMAS = 3.0  # an excess of lone pixels counts when above this many standard errors ...
OUTLIER_MIN_SHARE = 0.2  # ... and at least this share of the experiment's own rate
LABEL_SHARE = 0.5  # labels: pixels with at least half the brightest pixel of a spot at the photon cut
CALIBRATED = ("beam.photons_per_pulse", "jet_thickness_um", "simulation.psf_fwhm_um", "simulation.ncells",
              "overlay.readout_noise_adu", "overlay.outlier_pixels_per_mpx", "overlay.label_min_photons",
              "outliers_from_frames", "peak_finder.score_min_photons")
TRIAL_STREAM = 0xCA1  # trial frames draw crystals apart from the training frames
SCALE_ROUNDS = 4
# Trial reflections down to a thousandth of a photon at the configured beam: DIALS predicts every reflection near
# the Ewald sphere, and a box at a weak one next to a bright one holds the bright one's photons, in both.
TRIAL_TRUTH_PHOTONS = 1e-3
NOISY_MIN_SHARE = 0.05  # noisy trial frames: reflections from 5 % of the cut (noise-free) up, as noise lifts weak ones


# ---------------------------------------------------------------- spots

def spot_boxes(photons: np.ndarray, panel: np.ndarray, xy: np.ndarray, noise_free: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """(net photons, brightest pixel's share) of the 5x5 box at each (panel, x, y) of a (panels, slow, fast) frame;
    NaN where the box leaves the panel, holds an untrusted pixel or has its brightest pixel off the central 3x3 (a
    box at a weak reflection beside a bright one measures the bright one: counted once, at its own position, the
    count does not depend on how many weak reflections a predictor lists). ``noise_free``: Bragg-only photons, no
    local background to subtract."""
    h = BOX_PX // 2
    net = np.full(len(panel), np.nan)
    share = np.full(len(panel), np.nan)
    for i, (j, (x, y)) in enumerate(zip(panel, xy)):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        s, f = int(math.floor(y)), int(math.floor(x))
        a = photons[j]
        if s - h < 0 or f - h < 0 or s + h >= a.shape[0] or f + h >= a.shape[1]:
            continue
        box = a[s - h:s + h + 1, f - h:f + h + 1].astype(np.float64)
        if (box < 0).any():
            continue
        if not noise_free:
            r = LOCAL_BACKGROUND_PX // 2
            bg = a[max(s - r, 0):s + r + 1, max(f - r, 0):f + r + 1]
            box = box - float(np.median(bg[bg >= 0]))
        k = np.unravel_index(int(np.argmax(box)), box.shape)
        if abs(k[0] - h) > 1 or abs(k[1] - h) > 1:
            continue  # the box's brightest pixel is a neighbour's spot, not this reflection's
        total = box.sum()
        net[i] = total
        share[i] = box.max() / total if total > 0 else np.nan
    return net, share


def photon_cut(i_over_sigma: np.ndarray, net: np.ndarray, cut: float) -> dict[str, float]:
    """Net photons at DIALS I/sigma = ``cut``: a power law net = a (I/sigma)^b fitted to the reflections within a
    factor CUT_WINDOW of the cut (Theil-Sen in logs, robust to the odd overlapped spot)."""
    sel = (i_over_sigma >= cut / CUT_WINDOW) & (i_over_sigma <= cut * CUT_WINDOW) & (net > 0)
    n = int(sel.sum())
    if n < MIN_REFLECTIONS:
        raise ValueError(f"{n} integrated reflections with I/sigma {cut / CUT_WINDOW:g}-{cut * CUT_WINDOW:g} "
                         f"(at least {MIN_REFLECTIONS} needed)")
    slope, intercept, _, _ = stats.theilslopes(np.log(net[sel]), np.log(i_over_sigma[sel]))
    return {"photons": float(math.exp(intercept + slope * math.log(cut))), "exponent": float(slope),
            "reflections": n}


# ---------------------------------------------------------------- background

def clipped_moments(values: np.ndarray, n_sigma: float = 4.0, rounds: int = 5) -> tuple[float, float, int]:
    """(mean, variance, count) after clipping the bright tail (spots, hot pixels) at mean + n_sigma sd + 1."""
    v = values.astype(np.float64)
    for _ in range(rounds):
        m, sd = v.mean(), v.std()
        keep = v <= m + n_sigma * sd + 1.0
        if keep.all():
            break
        v = v[keep]
    return float(v.mean()), float(v.var()), len(v)


def q_edges(q: np.ndarray, trusted: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(q[trusted], [0.5, 99.5])
    return np.linspace(lo, hi, Q_BINS + 1)


def background_profile(frames: list[np.ndarray], q: np.ndarray, edges: np.ndarray) -> dict[str, np.ndarray]:
    """Per q bin over all frames: clipped mean, clipped variance and pixel count of the trusted pixels."""
    mean, var, count = (np.full(len(edges) - 1, np.nan) for _ in range(3))
    stack = np.stack(frames)
    qq = np.broadcast_to(q, stack.shape)
    b = np.digitize(qq, edges) - 1
    ok = stack >= 0
    for k in range(len(edges) - 1):
        v = stack[ok & (b == k)]
        if len(v) >= 100:
            mean[k], var[k], count[k] = clipped_moments(v)
    return {"mean": mean, "var": var, "count": count}


def readout_noise(frames: list[np.ndarray]) -> float:
    """Readout noise (photons) of an integrating detector, where it is below ~0.25 photons (CSPAD, Jungfrau, ePix
    at XFEL energies): the values then cluster around whole photons and their rms distance to the nearest one is
    the noise (pixels above half a photon, clear of the clipping at 0 the readers apply). Wider, the distances are
    uniform and the noise is not resolved from Poisson's in a few frames: NaN (the configured value is kept)."""
    v = np.concatenate([f[f > 0.5].ravel() for f in frames]).astype(np.float64)
    if not len(v):
        return math.nan
    frac = float(np.sqrt(np.mean((v - np.rint(v)) ** 2)))
    return frac if frac < FRACTION_RESOLVED else math.nan


def integer_valued(frames: list[np.ndarray]) -> bool:
    v = np.concatenate([f[f >= 0].ravel() for f in frames])
    return bool(np.mean(np.abs(v - np.rint(v)) < 1e-3) > 0.99)


# ---------------------------------------------------------------- the experiment's frames

@dataclass
class Measured:
    """What the calibration reads off an experiment's frames."""

    n_frames: int
    indexed_frames: int
    counting: bool
    readout_noise_photons: float
    q_edges: np.ndarray
    background: dict[str, np.ndarray]  # mean, var, count per q bin
    frame_background_photons: list[float]  # clipped mean of each frame
    i_over_sigma: np.ndarray
    net_photons: np.ndarray
    peak_share: np.ndarray
    frame_of: np.ndarray
    lone_pixels_per_mpx: float | None
    lone_pixels: int | None


def measure_experiment(info: FramesInfo, export_npz: str | Path, q: np.ndarray, untrusted: np.ndarray,
                       outliers_json: str | Path | None) -> Measured:
    from .evaluate import dials_frames  # the evaluator's reader of DIALS' results
    from .stills import predicted_positions

    # The background from the first frames (enough pixels for every q bin; a long run is not held in memory).
    frames = [read_frame_photons(info.path, i) for i in range(min(info.n_frames, BACKGROUND_FRAMES))]
    edges = q_edges(q, ~untrusted)
    bg = background_profile(frames, q, edges)
    counting = integer_valued(frames)
    readout = 0.0 if counting else readout_noise(frames)
    per_frame = [clipped_moments(f[f >= 0])[0] for f in frames]
    ios, net, share, frame_of = [], [], [], []
    for i, fr in enumerate(dials_frames(export_npz, info.n_frames)):
        if not fr.indexed or not len(fr.hkl):
            continue
        xy = predicted_positions(fr.a_matrix, fr.hkl, fr.panel, fr.panels, fr.beam_direction,
                                 fr.wavelength_angstrom, 0.0, fr.parallax)
        photons = frames[i] if i < len(frames) else read_frame_photons(info.path, i)
        n, s = spot_boxes(photons, fr.panel, xy)
        ok = np.isfinite(n) & np.isfinite(fr.i_over_sigma)
        ios.append(fr.i_over_sigma[ok])
        net.append(n[ok])
        share.append(s[ok])
        frame_of.append(np.full(ok.sum(), i))
    indexed = len(net)
    cat = (lambda parts: np.concatenate(parts) if parts else np.zeros(0))
    rate = count = None
    if outliers_json is not None:
        rate, amplitudes = read_outlier_pixels(outliers_json)
        count = len(amplitudes)
    return Measured(info.n_frames, indexed, counting, readout, edges, bg, per_frame, cat(ios), cat(net),
                    cat(share), cat(frame_of).astype(int), rate, count)


# ---------------------------------------------------------------- trial frames

@dataclass
class Trial:
    """Bragg-only photons (no PSF) of trial frames at one crystal size, at the configured beam."""

    ncells_factor: float
    images: list[np.ndarray]  # (panels, slow, fast) per frame
    panel: list[np.ndarray]
    xy: list[np.ndarray]
    _last_blur: tuple[float, list[np.ndarray]] | None = field(default=None, repr=False)

    def blurred_images(self, psf_px: float) -> list[np.ndarray]:
        """The images through a PSF of ``psf_px``; the last one kept, as the scale's rounds reuse it."""
        if self._last_blur is None or self._last_blur[0] != psf_px:
            self._last_blur = (psf_px, [blurred(image, psf_px) for image in self.images])
        return self._last_blur[1]


def scaled_ncells(spec: dict[str, Any], factor: float) -> dict[str, Any]:
    """An Ncells distribution with every size ``factor`` times larger (its relative spread kept)."""
    out = dict(spec)
    for k in ("value", "low", "high", "median"):
        if k in out:
            out[k] = round(float(out[k]) * factor, 3)
    return out


def simulate_trials(dets, mtz_path: str | Path, simulation: dict[str, Any], beam: Beam, wavelength_angstrom: float,
                    untrusted: np.ndarray, factors: tuple[float, ...], n_frames: int, seed: int, dataset_index: int,
                    backend: str = "numpy", log=None) -> list[Trial]:
    sf, cell = load_structure_factors(mtz_path)
    b = b_matrix(cell)
    xp, backend_line = resolve_backend(backend)
    if log:
        log.info(backend_line)
    trials = []
    for factor in factors:
        sim = {**simulation, "psf_fwhm_um": 0.0, "ncells": scaled_ncells(simulation["ncells"], factor)}
        settings = SimulationSettings.at_wavelength(sim, wavelength_angstrom, beam)
        images, panels, xys = [], [], []
        for frame in range(n_frames):
            d = draw_frame(settings.draws, seed, dataset_index * 1000 + TRIAL_STREAM, frame)
            image, pan, xy = [], [], []
            per_panel = simulate_panels(d, b, sf, dets, settings, beam, xp, TRIAL_TRUTH_PHOTONS)
            for p, (img, truth) in enumerate(per_panel):
                image.append(np.where(untrusted[p], -1.0, img))
                pan.append(np.full(len(truth.x_px), p))
                xy.append(np.column_stack([truth.x_px, truth.y_px]))
            images.append(np.stack(image))
            panels.append(np.concatenate(pan).astype(int))
            xys.append(np.concatenate(xy))
            if log:
                log.info("trial frame %d at %.2fx Ncells (N = %s): %d reflections", frame, factor, d.ncells,
                         len(panels[-1]))
        trials.append(Trial(factor, images, panels, xys))
    return trials


def blurred(image: np.ndarray, psf_px: float) -> np.ndarray:
    if psf_px <= 0:
        return image
    return np.stack([np.where(p < 0, -1.0, apply_psf(np.where(p < 0, 0.0, p), psf_px)) for p in image])


def trial_spots(trial: Trial, psf_px: float, scale: float = 1.0, water: np.ndarray | None = None,
                readout_photons: float = 0.0, seed: int = 0, min_net: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(net photons, peak share) of the trial frames' reflections, their Bragg photons times ``scale``, NaN
    dropped. Without ``water``: the noise-free photons. With it: measured as the experiment's spots are, on frames
    with that background, Poisson and readout noise (noise lifts reflections below a cut above it more often than
    it drops the fewer above below it), for the reflections with at least ``min_net`` noise-free photons."""
    nets, shares = [], []
    for k, (b, panel, xy) in enumerate(zip(trial.blurred_images(psf_px), trial.panel, trial.xy)):
        n, sh = spot_boxes(b, panel, xy, noise_free=True)
        n = n * scale
        if water is not None:
            sel = np.isfinite(n) & (n >= min_net)
            rng = np.random.default_rng([seed, TRIAL_STREAM, k])
            counts = rng.poisson(np.where(b < 0, 0.0, b) * scale + water).astype(np.float64)
            if readout_photons > 0:
                counts += rng.normal(0.0, readout_photons, counts.shape)
            counts[b < 0] = -1.0
            n, sh = spot_boxes(counts, panel[sel], xy[sel])
        nets.append(n)
        shares.append(sh)
    n, sh = np.concatenate(nets), np.concatenate(shares)
    ok = np.isfinite(n) & (n > 0)
    return n[ok], sh[ok]


def scale_for_count(nets: np.ndarray, n_frames: int, per_frame: float, cut: float) -> float:
    """The factor on ``nets`` that puts ``per_frame`` reflections per frame at or above ``cut``."""
    k = int(round(per_frame * n_frames))
    if k < 1:
        raise ValueError("no reflection of the experiment reaches the photon cut")
    srt = np.sort(nets)[::-1]
    if k > len(srt):
        return math.inf  # the crystal puts fewer reflections on the detector than the experiment's frames hold
    return cut / srt[k - 1]


def solve_scale(trial: Trial, psf_px: float, water: np.ndarray, readout_photons: float, per_frame: float,
                cut: float, n_frames: int, seed: int) -> float:
    """The factor on the configured beam's photons that puts ``per_frame`` measured reflections per trial frame
    above the cut: from the noise-free photons, then refined on noisy frames (fixed point, a few rounds)."""
    s = scale_for_count(trial_spots(trial, psf_px)[0], n_frames, per_frame, cut)
    for _ in range(SCALE_ROUNDS):
        if not np.isfinite(s):
            return s
        nets, _ = trial_spots(trial, psf_px, s, water, readout_photons, seed, min_net=NOISY_MIN_SHARE * cut)
        step = scale_for_count(nets, n_frames, per_frame, cut)
        s = s * step
        if abs(step - 1.0) < 1e-3:
            break
    return s


def interpolate_psf(psf_grid_px: np.ndarray, share: np.ndarray, target: float) -> float:
    """The PSF (px) whose peak share equals ``target``; the share falls as the PSF widens."""
    order = np.argsort(share)
    s, p = share[order], psf_grid_px[order]
    if target >= s[-1]:
        return float(p[-1])  # sharper than the sharpest: no PSF
    if target <= s[0]:
        return float(p[0])
    return float(np.interp(target, s, p))


# ---------------------------------------------------------------- the fit

def calibrate(*, frames_path: str | Path, export_npz: str | Path, mtz_path: str | Path, water_table: str | Path,
              outliers_json: str | Path | None, beam_cfg: dict[str, Any], simulation: dict[str, Any],
              overlay: dict[str, Any], fixed: dict[str, Any], min_i_over_sigma: float,
              trial_frames: int, seed: int, dataset_index: int, backend: str = "numpy", log=None) -> dict[str, Any]:
    """The calibrated matched settings of an experiment and the fit report (see the module's doc). ``fixed``: the
    hand-set values, by CALIBRATED key; ``beam_cfg``/``simulation``/``overlay``: the merged sections the trial
    frames start from."""
    from .matched import experiment_beam_direction, experiment_wavelength_angstrom, panel_detectors

    unknown = set(fixed) - set(CALIBRATED)
    if unknown:
        raise ValueError(f"not calibrated keys: {sorted(unknown)}")
    info = read_frames_info(frames_path)
    wavelength = experiment_wavelength_angstrom(info)
    dets = panel_detectors(info.panels, experiment_beam_direction(info), info.path)
    beam0 = Beam.from_config(beam_cfg).at_wavelength(wavelength)
    unit_water, q = water_photons(dets, beam0, 1e-6, water_table)  # per um of jet at the configured beam
    untrusted = read_untrusted_pixels(info.path)
    m = measure_experiment(info, export_npz, q, untrusted, outliers_json)
    report: dict[str, Any] = {"frames_file": Path(info.path).name, "frames": m.n_frames,
                              "indexed_frames": m.indexed_frames, "panels": info.n_panels,
                              "wavelength_angstrom": wavelength,
                              "detector_kind": "photon counting" if m.counting else "integrating",
                              "hand_set": sorted(fixed)}
    if m.indexed_frames == 0 and not all(k in fixed for k in ("beam.photons_per_pulse", "simulation.ncells",
                                                              "peak_finder.score_min_photons")):
        raise InputError(export_npz, "DIALS indexed none of the experiment's frames, so the spots cannot be "
                                     "measured: set experiments.<name>.matched.beam.photons_per_pulse, "
                                     "simulation.ncells and peak_finder.score_min_photons by hand")

    # The photon cut that matches the evaluator's I/sigma.
    if "peak_finder.score_min_photons" in fixed:
        cut = float(fixed["peak_finder.score_min_photons"])
        report["photon_cut"] = {"photons": cut, "hand_set": True}
    else:
        try:
            report["photon_cut"] = photon_cut(m.i_over_sigma, m.net_photons, min_i_over_sigma)
        except ValueError as exc:
            raise InputError(export_npz, f"cannot set the photon cut at I/sigma {min_i_over_sigma:g}: {exc}; set "
                                         "experiments.<name>.matched.peak_finder.score_min_photons by hand") from None
        cut = round(report["photon_cut"]["photons"], 1)
    strong = m.net_photons >= cut
    real_per_frame = float(strong.sum() / max(m.indexed_frames, 1))
    real_median = float(np.median(m.net_photons[strong])) if strong.any() else math.nan
    real_share = float(np.nanmedian(m.peak_share[strong])) if strong.any() else math.nan
    report["measured"] = {"reflections_above_cut_per_frame": real_per_frame,
                          "median_net_photons_above_cut": real_median, "peak_share": real_share,
                          "background_photons_per_px": float(np.median(m.frame_background_photons)),
                          "frame_background_photons_per_px": m.frame_background_photons,
                          "readout_noise_photons": m.readout_noise_photons,
                          "lone_pixels_per_mpx": m.lone_pixels_per_mpx}

    pixel_um = float(np.mean(dets.pixel_size_mm)) * 1e3
    p0 = beam0.photons_per_pulse
    p_fixed = fixed.get("beam.photons_per_pulse")
    # Readout noise unresolved (an integrating detector with a background below 2 photons and noise wider than
    # ~0.25 photons): the configured value stays.
    readout = float(fixed.get("overlay.readout_noise_adu", round(m.readout_noise_photons, 3)
                              if np.isfinite(m.readout_noise_photons) else overlay["readout_noise_adu"]))

    # Water: the model's scale (um of jet at the configured beam) that fits the radial profile.
    def profile(photons):
        return background_profile([photons.astype(np.float32) * np.where(untrusted, -1, 1)], q, m.q_edges)["mean"]

    model_unit, real_profile = profile(unit_water), m.background["mean"]
    ok = np.isfinite(model_unit) & np.isfinite(real_profile) & (model_unit > 0)
    if not ok.any():
        raise InputError(frames_path, "no q bin with trusted pixels to fit the background")
    w = m.background["count"][ok]

    def lsq(model):
        return float(np.sum(w * real_profile[ok] * model[ok]) / np.sum(w * model[ok] ** 2))

    scale_um = lsq(model_unit)
    background = np.where(untrusted, 0.0, unit_water * scale_um)  # for the trial frames' noise

    ncells_fixed = "simulation.ncells" in fixed
    base_sim = copy.deepcopy(simulation)
    if ncells_fixed:
        base_sim["ncells"] = fixed["simulation.ncells"]
    factors = (1.0,) if ncells_fixed else NCELLS_FACTORS
    trials = simulate_trials(dets, mtz_path, base_sim, beam0, wavelength, untrusted, factors, trial_frames, seed,
                             dataset_index, backend, log)
    one = trials[factors.index(1.0)]
    noise = {"water": background, "readout_photons": readout, "seed": seed}

    def scale_of(trial, psf_px):
        if p_fixed is not None:
            return float(p_fixed) / p0
        return solve_scale(trial, psf_px, background, readout, real_per_frame, cut, trial_frames, seed)

    def measured(trial, psf_px, scale):
        """Noisy nets and shares of the reflections above the cut."""
        if not np.isfinite(scale):
            return np.zeros(0), np.zeros(0)
        nets, shares = trial_spots(trial, psf_px, scale, min_net=NOISY_MIN_SHARE * cut, **noise)
        return nets[nets >= cut], shares[nets >= cut]

    # PSF: peak share of the reflections above the cut (at the scale fitted without a PSF) against the PSF.
    psf_rows = []
    s_pre = scale_of(one, 0.0)
    for psf_px in PSF_GRID_PX:
        _, shares = measured(one, psf_px, s_pre)
        psf_rows.append({"psf_fwhm_um": psf_px * pixel_um,
                         "peak_share": float(np.median(shares)) if len(shares) else math.nan})
    report["psf_fit"] = psf_rows
    if "simulation.psf_fwhm_um" in fixed:
        psf_um = float(fixed["simulation.psf_fwhm_um"])
    else:
        grid = np.array([r["psf_fwhm_um"] for r in psf_rows])
        share = np.array([r["peak_share"] for r in psf_rows])
        ok_share = np.isfinite(share)
        if not ok_share.any() or not np.isfinite(real_share):
            raise InputError(export_npz, "no reflection above the photon cut to measure the spot profile: set "
                                         "experiments.<name>.matched.simulation.psf_fwhm_um by hand")
        psf_um = round(interpolate_psf(grid[ok_share], share[ok_share], real_share), 1)
    psf_px = psf_um / pixel_um

    # Beam and crystal size: reflections per frame above the cut, then their median photons.
    size_rows = []
    for t in trials:
        sc = scale_of(t, psf_px)
        nets, _ = measured(t, psf_px, sc)
        med = float(np.median(nets)) if len(nets) else math.nan
        size_rows.append({"ncells_factor": t.ncells_factor, "ncells": scaled_ncells(base_sim["ncells"],
                                                                                   t.ncells_factor),
                          "photons_per_pulse": sc * p0,
                          "reflections_above_cut_per_frame": len(nets) / trial_frames if np.isfinite(sc) else math.nan,
                          "median_net_photons_above_cut": med,
                          "log_mismatch": math.log(med / real_median) if med > 0 and real_median > 0 else math.nan})
    report["size_fit"] = size_rows
    factor, photons = _choose_size(size_rows)
    if p_fixed is not None:
        photons = float(p_fixed)
    ncells = fixed["simulation.ncells"] if ncells_fixed else scaled_ncells(simulation["ncells"], factor)

    # The jet at the fitted beam (water photons are linear in the jet only while it is thin: one correction).
    if "jet_thickness_um" in fixed:
        jet_um = float(fixed["jet_thickness_um"])
    else:
        jet_um = scale_um * p0 / photons
        at = water_photons(dets, replace(beam0, photons_per_pulse=photons), jet_um * 1e-6, water_table)[0]
        jet_um = float(f"{jet_um * lsq(profile(at)):.4g}")
    water = water_photons(dets, replace(beam0, photons_per_pulse=photons), jet_um * 1e-6, water_table)[0]
    model_at = profile(water)
    report["background_fit"] = {"q_edges_inv_angstrom": m.q_edges.tolist(), "measured": _list(real_profile),
                                "measured_variance": _list(m.background["var"]), "model": _list(model_at),
                                "rms_relative_residual": float(np.sqrt(np.nanmean(
                                    ((real_profile[ok] - model_at[ok]) / model_at[ok]) ** 2)))}

    # Lone pixels: the experiment's rate beyond what Poisson and readout noise make in the trial frames.
    o = OverlaySettings.from_config({**overlay, "adu_per_photon": 1.0, "readout_noise_adu": readout,
                                     "blank_fraction": 0.0, "outlier_pixels_per_mpx": 0.0})
    lone, eligible = 0, 0
    t_near = trials[int(np.argmin([abs(math.log(t.ncells_factor / factor)) for t in trials]))]
    s_near = photons / p0
    for k, image in enumerate(t_near.blurred_images(psf_px)):
        bragg = np.where(image < 0, 0.0, image) * s_near
        fr = overlay_frame(bragg, water.astype(np.float32), untrusted, True, 1.0, 1.0, o,
                           frame_rng(seed, dataset_index * 1000 + TRIAL_STREAM, k))
        counts = fr.counts.astype(np.float32)
        lone += len(isolated_pixels(counts, o.outlier_photons[0]))
        eligible += eligible_count(counts)
    sim_rate = lone / eligible * 1e6 if eligible else 0.0
    outliers = {"min_photons": o.outlier_photons[0], "simulated_per_mpx": sim_rate,
                "measured_per_mpx": m.lone_pixels_per_mpx}
    if m.lone_pixels_per_mpx is not None:
        real_n = m.lone_pixels or 0
        real_eligible = real_n / m.lone_pixels_per_mpx * 1e6 if m.lone_pixels_per_mpx > 0 else 1.0
        excess = m.lone_pixels_per_mpx - sim_rate
        se = math.sqrt(real_n / real_eligible**2 + lone / max(eligible, 1) ** 2) * 1e6
        significant = excess > OUTLIER_SIGMAS * se and excess > OUTLIER_MIN_SHARE * m.lone_pixels_per_mpx
        outliers.update({"excess_per_mpx": excess, "standard_error_per_mpx": se, "significant": bool(significant)})
    else:
        significant, excess = False, 0.0
    report["outlier_fit"] = outliers
    from_frames = bool(fixed.get("outliers_from_frames", significant))
    rate = float(fixed.get("overlay.outlier_pixels_per_mpx", round(max(excess, 0.0), 2) if from_frames else 0.0))

    share_at_cut = real_share if np.isfinite(real_share) else 0.4
    label = float(fixed.get("overlay.label_min_photons", round(LABEL_SHARE * share_at_cut * cut, 1)))
    report["settings"] = {
        "beam": {"photons_per_pulse": float(f"{photons:.4g}")},
        "jet_thickness_um": jet_um,
        "simulation": {"psf_fwhm_um": psf_um, "ncells": ncells},
        "overlay": {"readout_noise_adu": readout, "outlier_pixels_per_mpx": rate, "label_min_photons": label},
        "outliers_from_frames": from_frames,
        "peak_finder": {"score_min_photons": cut}}
    report["calibrated_ncells_factor"] = factor
    report["min_i_over_sigma"] = min_i_over_sigma
    keep = slice(0, MAX_REPORTED)
    report["reflections"] = {"i_over_sigma": np.round(m.i_over_sigma[keep], 3).tolist(),
                             "net_photons": np.round(m.net_photons[keep], 2).tolist()}
    report["simulated_net_photons"] = np.round(np.sort(measured(t_near, psf_px, s_near)[0])[::-1][keep], 2).tolist()
    report["summary"] = _summary(report, cut, min_i_over_sigma)
    return _plain(report)


def _summary(r: dict[str, Any], cut: float, min_i_over_sigma: float) -> list[str]:
    """The fit in words, for the log."""
    ms, st, pc, of = r["measured"], r["settings"], r["photon_cut"], r["outlier_fit"]
    hand = f" (hand-set: {', '.join(r['hand_set'])})" if r["hand_set"] else ""
    lines = [f"{r['frames_file']}: {r['frames']} frames, {r['indexed_frames']} indexed by DIALS, "
             f"{r['panels']} panel(s), {r['detector_kind']} detector{hand}",
             f"photon cut: DIALS I/sigma {min_i_over_sigma:g} <-> {cut:g} net photons"
             + (f" (power law of {pc['reflections']} reflections, exponent {pc['exponent']:.2f})"
                if "reflections" in pc else ""),
             f"background: {ms['background_photons_per_px']:.3g} photons/px (frames {ms['frame_background_photons_per_px']})"
             f"; water model at jet {st['jet_thickness_um']:g} um, rms relative residual over q "
             f"{r['background_fit']['rms_relative_residual']:.1%}",
             (f"readout noise {ms['readout_noise_photons']:.3g} photons" if np.isfinite(ms["readout_noise_photons"])
              else "readout noise not resolved (wider than 0.25 photons)")
             + f" -> overlay.readout_noise_adu {st['overlay']['readout_noise_adu']:g} (matched frames are in photons)",
             f"spots: {ms['reflections_above_cut_per_frame']:.1f} reflections per indexed frame above the cut, "
             f"median {ms['median_net_photons_above_cut']:.0f} net photons, peak share {ms['peak_share']:.2f}"]
    for row in r["size_fit"]:
        lines.append(f"  trial Ncells x{row['ncells_factor']:g}: {row['photons_per_pulse']:.3g} photons/pulse for "
                     f"{row['reflections_above_cut_per_frame']} per frame, median "
                     f"{row['median_net_photons_above_cut']} photons")
    lines += [f"-> photons_per_pulse {st['beam']['photons_per_pulse']:.4g}, ncells {st['simulation']['ncells']}, "
              f"psf_fwhm_um {st['simulation']['psf_fwhm_um']:g}, label_min_photons "
              f"{st['overlay']['label_min_photons']:g}",
              f"lone pixels >= {of['min_photons']:g} photons: {of['measured_per_mpx']} per Mpx per frame measured, "
              f"{of['simulated_per_mpx']:.1f} from noise in simulated frames -> outliers_from_frames "
              f"{st['outliers_from_frames']}, {st['overlay']['outlier_pixels_per_mpx']:g} per Mpx"]
    return lines


def _choose_size(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """(Ncells factor, photons per pulse): where the median mismatch changes sign, interpolated in log size; else
    the size with the smallest mismatch, unless all mismatch alike (within SIZE_UNDETERMINED): then the configured
    size (factor 1)."""
    ok = [r for r in rows if np.isfinite(r["log_mismatch"]) and np.isfinite(r["photons_per_pulse"])]
    if not ok:
        raise ValueError("no trial crystal size puts enough reflections above the photon cut")
    for a, b in zip(ok[:-1], ok[1:]):
        da, db = a["log_mismatch"], b["log_mismatch"]
        if da == 0 or da * db < 0:
            t = da / (da - db)
            lf = (1 - t) * math.log(a["ncells_factor"]) + t * math.log(b["ncells_factor"])
            lp = (1 - t) * math.log(a["photons_per_pulse"]) + t * math.log(b["photons_per_pulse"])
            return round(math.exp(lf), 3), math.exp(lp)
    best = min(ok, key=lambda r: abs(r["log_mismatch"]))
    spread = max(abs(r["log_mismatch"]) for r in ok) - min(abs(r["log_mismatch"]) for r in ok)
    one = [r for r in ok if r["ncells_factor"] == 1.0]
    if one and spread < SIZE_UNDETERMINED:
        best = one[0]  # no size fits better than the others: these frames do not tell, the configured one stays
    return best["ncells_factor"], best["photons_per_pulse"]


def _list(a: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in a]


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


# ---------------------------------------------------------------- the file

def write_calibration(path: str | Path, report: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(report, indent=1, allow_nan=False) + "\n")


def read_calibration(path: str | Path) -> dict[str, Any]:
    """The calibrated settings of a calibration file (``settings``), checked."""
    try:
        report = json.loads(Path(path).read_text())
        s = report["settings"]
        checks = [s["beam"]["photons_per_pulse"] > 0, s["jet_thickness_um"] > 0,
                  s["simulation"]["psf_fwhm_um"] >= 0, isinstance(s["simulation"]["ncells"], dict),
                  s["overlay"]["readout_noise_adu"] >= 0, s["overlay"]["outlier_pixels_per_mpx"] >= 0,
                  s["overlay"]["label_min_photons"] >= 0, isinstance(s["outliers_from_frames"], bool),
                  s["peak_finder"]["score_min_photons"] > 0]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f"unreadable calibration: {exc}") from None
    if not all(checks):
        raise InputError(path, f"calibrated settings out of range: {s}")
    return s


def calibrated(settings: dict[str, Any], *, beam: dict[str, Any], simulation: dict[str, Any],
               overlay: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], float]:
    """The matched sections with the calibrated values in: (beam, simulation, overlay, jet thickness in m)."""
    return ({**beam, **settings["beam"]}, {**simulation, **settings["simulation"]},
            {**overlay, **settings["overlay"]}, settings["jet_thickness_um"] * 1e-6)


def calibrated_training(params: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """A training rule's recorded settings with the calibrated photon cut (where it records the peak finder)."""
    out = copy.deepcopy(dict(params))
    if "peak_finder" in out:
        pf = dict(out["peak_finder"])
        pf.update({k: v for k, v in settings["peak_finder"].items() if k in pf})
        out["peak_finder"] = pf
    return out


def training_params(params: dict[str, Any], inputs) -> dict[str, Any]:
    """A training job's settings: its rule's, with the calibrated photon cut where the rule takes a calibration
    (``inputs.calibration``, the matched models)."""
    calibration = getattr(inputs, "calibration", None)
    if not calibration:
        return params
    return calibrated_training(params, read_calibration(calibration[0]))
