"""Per-still refinement against the pixels (diffBragg's stage 1, in braggflow's own physics).

Starting from an indexed model of a still (DIALS' A matrix, or any Still), the differentiable model
(``refine.model``) is fitted to the measured counts in shoeboxes around the strong spots:

- orientation: three small lab rotations R(v) applied to the starting U;
- unit cell: the free parameters of its lattice (``refine.cell``), A = R U0 B(cell);
- crystal size: Ncells, continuous (one factor for all axes, or one per axis);
- overall scale (fluence x volume), the still's central photon energy (every source's 1/lambda by one factor);
- background: a plane per shoebox (photons per pixel).

Loss: the negative log-likelihood of the counts under the overlay's noise model, counts = gain Poisson(lambda) +
N(0, sigma_read), taken as the shifted Poisson x + s^2 ~ Poisson(lambda + s^2) with x = counts / gain and
s = sigma_read / gain (same mean and variance; exact as sigma_read -> 0), over the shoebox pixels, untrusted and
non-finite pixels excluded. Bounded parameters (p = p0 + bound tanh(sigma raw / bound)), L-BFGS with a strong
Wolfe line search in stages (scale and background; then orientation, Ncells and energy; then everything), each
stage run in rounds of L-BFGS iterations until a round, or a Newton step, lowers the summed NLL by less
than 0.01 (raw units are rescaled to unit Fisher information at the start). A still that does not
converge, or has no pixels to fit, is reported in the result (``converged``, ``message``), never dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..detector import Panel
from ..simulator import Crystal, Pulse, Still, StructureFactorTable
from .cell import CellConstraints, b_matrix, cell_of_A, rotation
from .model import F2Table, TorchStill, expected_photons, torch_still


@dataclass(frozen=True)
class NoiseModel:
    """The detector's gain (ADU per photon) and Gaussian readout noise (ADU), as the overlay draws them."""

    adu_per_photon: float = 1.0
    readout_noise_adu: float = 0.0

    def __post_init__(self) -> None:
        if not self.adu_per_photon > 0:
            raise ValueError(f"adu_per_photon must be > 0, got {self.adu_per_photon!r}")
        if not self.readout_noise_adu >= 0:
            raise ValueError(f"readout_noise_adu must be >= 0, got {self.readout_noise_adu!r}")

    def nll(self, expected_photons: torch.Tensor, counts_adu: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood per pixel (shifted Poisson, without the data-only term)."""
        s2 = (self.readout_noise_adu / self.adu_per_photon) ** 2
        # a smooth floor at 0 (softplus, ~1e-3 photons wide): a background plane that dips below zero at a box's
        # corner keeps a gradient there, where a clamp would leave L-BFGS a kink
        lam = torch.nn.functional.softplus(expected_photons, beta=1e3) + (s2 + 1e-9)
        x = torch.clamp(counts_adu / self.adu_per_photon + s2, min=0.0)
        return lam - x * torch.log(lam)


@dataclass(frozen=True)
class Shoeboxes:
    """The pixels a refinement fits: (fast, slow) indices, the shoebox each belongs to, its counts (ADU), and the
    panel each lies on (a multi-panel detector; all 0 on one panel)."""

    fast_px: np.ndarray  # (P,) int64
    slow_px: np.ndarray  # (P,) int64
    box: np.ndarray  # (P,) int64 in [0, n_boxes)
    counts_adu: np.ndarray  # (P,) float64
    centres_px: np.ndarray  # (B, 2) (fast, slow) continuous px of each shoebox's spot
    half_width_px: int = 4
    box_panel: np.ndarray | None = None  # (B,) int64, the panel of each shoebox (None: all on panel 0)

    @property
    def n_boxes(self) -> int:
        return len(self.centres_px)

    @property
    def panels(self) -> np.ndarray:
        """(B,) the panel of each shoebox."""
        return np.zeros(self.n_boxes, np.int64) if self.box_panel is None else self.box_panel

    @property
    def panel(self) -> np.ndarray:
        """(P,) the panel of each pixel."""
        return self.panels[self.box]

    def corners_px(self) -> np.ndarray:
        """(B, 2) (fast, slow) of each box's first pixel: the square of 2 half_width + 1 px before it was clipped to
        its panel (its pixels' place in the box: (fast, slow) - corner)."""
        return np.floor(self.centres_px).astype(np.int64) - self.half_width_px

    @classmethod
    def around(cls, counts_adu: np.ndarray, untrusted: np.ndarray | None, centres_px: np.ndarray,
               half_width_px: int = 4, panels: np.ndarray | None = None) -> "Shoeboxes":
        """Square shoeboxes of (2 half_width + 1)^2 pixels around spot centres (fast, slow) px on a (slow, fast)
        frame, or on a (panels, slow, fast) stack with each centre's panel in ``panels``; untrusted and
        non-finite pixels left out, a pixel shared by two boxes kept by the first."""
        counts = np.asarray(counts_adu, dtype=np.float64)
        stacked = counts.ndim == 3
        if counts.ndim not in (2, 3) or (panels is not None and not stacked):
            raise ValueError(f"counts must be a (slow, fast) frame, or a (panels, slow, fast) stack with the "
                             f"centres' panels, got shape {counts.shape}")
        counts = counts if stacked else counts[None]
        bad = ~np.isfinite(counts)
        if untrusted is not None:
            bad |= np.asarray(untrusted, bool).reshape(counts.shape)
        centres = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
        on = np.zeros(len(centres), np.int64) if panels is None else np.asarray(panels, np.int64).reshape(-1)
        if len(on) != len(centres):
            raise ValueError(f"{len(centres)} centres but {len(on)} panels")
        claimed = np.zeros(counts.shape, dtype=bool)
        fast, slow, box, kept, kept_panel = [], [], [], [], []
        for (x, y), p in zip(centres, on):
            if not (np.isfinite(x) and np.isfinite(y)) or not 0 <= p < counts.shape[0]:
                continue
            i0, j0 = int(math.floor(x)) - half_width_px, int(math.floor(y)) - half_width_px
            i1, j1 = i0 + 2 * half_width_px + 1, j0 + 2 * half_width_px + 1
            i0, j0 = max(i0, 0), max(j0, 0)
            i1, j1 = min(i1, counts.shape[2]), min(j1, counts.shape[1])
            if i0 >= i1 or j0 >= j1:
                continue
            jj, ii = np.mgrid[j0:j1, i0:i1]
            use = ~(bad[p, j0:j1, i0:i1] | claimed[p, j0:j1, i0:i1])
            if not use.any():
                continue
            claimed[p, j0:j1, i0:i1] |= use
            fast.append(ii[use])
            slow.append(jj[use])
            box.append(np.full(int(use.sum()), len(kept)))
            kept.append((x, y))
            kept_panel.append(p)
        box_panel = np.array(kept_panel, np.int64) if stacked else None
        if not kept:
            empty = np.zeros(0, np.int64)
            return cls(empty, empty, empty, np.zeros(0), np.zeros((0, 2)), half_width_px,
                       empty if stacked else None)
        f, s = np.concatenate(fast).astype(np.int64), np.concatenate(slow).astype(np.int64)
        b = np.concatenate(box).astype(np.int64)
        pan = box_panel[b] if stacked else np.zeros(len(b), np.int64)
        return cls(f, s, b, counts[pan, s, f], np.array(kept), half_width_px, box_panel)


@dataclass(frozen=True)
class RefineSettings:
    """How a still is refined: which Ncells model, the stages' stopping rule, and the parameters' bounds."""

    ncells_per_axis: bool = False
    refine_cell: bool = True
    refine_energy: bool = True
    max_rounds: int = 25  # L-BFGS restarts per stage
    iterations_per_round: int = 20
    # a stage stops when a round lowers the NLL (summed over the pixels) by less than this, or a Newton step would
    # (raw units of about one standard error): a hundredth of a unit of log-likelihood, below what data tell apart
    nll_tolerance: float = 0.01
    rotation_bound_deg: float = 1.0
    cell_bound_rel: float = 0.05
    ncells_bound_factor: float = 4.0
    energy_bound_rel: float = 0.02
    # the mosaic domains' own orientations (each but domain 0 by three small rotations, within rotation_bound_deg):
    # a crystal of a few discrete domains places each spot's centroid by which domains light it
    refine_mosaic: bool = False
    # "structure_factors": each spot's photons from |F|^2 of the table, one scale for the still; "per_shoebox":
    # every shoebox its own intensity (real stills, whose F is not known: positions and shapes then fix the crystal)
    intensities: str = "structure_factors"

    def __post_init__(self) -> None:
        if self.intensities not in INTENSITY_MODELS:
            raise ValueError(f"intensities must be one of {INTENSITY_MODELS}, got {self.intensities!r}")


INTENSITY_MODELS = ("structure_factors", "per_shoebox")
INTENSITY_PRIOR_FACTOR = 10.0


class _Param:
    """p = init + bound tanh(sigma raw / bound) (or init + sigma raw without a bound); raw starts at 0."""

    def __init__(self, init: torch.Tensor, sigma: float | torch.Tensor, bound: float | None = None):
        self.init, self.sigma, self.bound = init, sigma, bound
        self.sigma0 = sigma  # the nominal unit, where information is measured from
        self.raw = torch.zeros_like(init, requires_grad=True)

    def value(self) -> torch.Tensor:
        if self.bound is None:
            return self.init + self.sigma * self.raw
        return self.init + self.bound * torch.tanh(self.sigma * self.raw / self.bound)

    def recentre(self) -> None:
        """Start again from the current value (raw = 0 there)."""
        self.init, self.raw.data = self.value().detach(), torch.zeros_like(self.raw)


def _unit_information(params: list[_Param], predict, lams: list[torch.Tensor]) -> None:
    """Rescale each raw component of ``params`` (at raw = 0) to unit Fisher information, the sum over pixels of
    (d lambda / d raw)^2 / lambda, by central differences of ``predict()`` (a list of expected-photon tensors, one
    per entry of ``lams``); a component the pixels say nothing about keeps its nominal units. The differences
    step by the nominal unit, not by the current one: a unit grown where the data said little (broad spots) would
    otherwise step far past where the model is linear, and the next unit grow again."""
    with torch.no_grad():
        for par in params:
            sigma = torch.as_tensor(par.sigma0, dtype=par.raw.dtype) * torch.ones_like(par.raw)
            par.sigma = sigma
            info = torch.zeros_like(par.raw)
            for j in range(par.raw.numel()):
                parts = []
                for step in (1.0, -1.0):
                    par.raw.view(-1)[j] = step
                    parts.append(predict())
                par.raw.view(-1)[j] = 0.0
                info.view(-1)[j] = sum((((a - b) / 2.0) ** 2 / lam).sum() for a, b, lam in zip(*parts, lams))
            good = info > 1e-12
            par.sigma = torch.where(good, sigma / torch.sqrt(torch.where(good, info, torch.ones_like(info))), sigma)


@dataclass
class RefinedStill:
    """The refined model of one still, and how the fit went."""

    A_matrix: np.ndarray
    cell: tuple[float, ...]
    ncells: tuple[float, float, float]
    scale_factor: float  # on the starting fluence
    energy_factor: float  # on every source's photon energy (1/lambda)
    background: np.ndarray  # (B, 3) per shoebox: photons per pixel at its centre, d/dfast, d/dslow
    nll_start: float
    nll_final: float
    iterations: int
    converged: bool
    message: str
    pixels: int
    shoeboxes: int
    energy_refined: bool = False
    stages: list[dict] = field(default_factory=list)
    mosaic_umats: np.ndarray | None = None  # (M, 3, 3) where the domains were refined

    def still(self, start: Still) -> Still:
        """``start`` with the refined crystal and pulse (the square transform takes whole Ncells, so they are
        rounded there)."""
        c, p = start.crystal, start.pulse
        ncells = tuple(float(round(n)) for n in self.ncells) if c.shape == "square" else self.ncells
        umats = c.mosaic_umats if self.mosaic_umats is None else self.mosaic_umats
        crystal = Crystal(self.A_matrix, ncells=ncells, shape=c.shape, mosaic_umats=umats)
        pulse = Pulse(p.wavelengths_A / self.energy_factor, weights=p.weights,
                      fluence_photons_per_m2=p.fluence_photons_per_m2 * self.scale_factor,
                      kahn_factor=p.kahn_factor, polarization_axis=p.polarization_axis, directions=p.directions)
        return Still(crystal, pulse, start.numerics)


def _orthonormal(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    r = u @ vt
    return r if np.linalg.det(r) > 0 else u @ np.diag([1, 1, -1]) @ vt


def _minimise(params: list[torch.Tensor], loss_fn, settings: RefineSettings, n_pixels: int
              ) -> tuple[float, int, bool, str]:
    """L-BFGS (strong Wolfe) on ``params`` in rounds until a round lowers the summed NLL (mean ``loss_fn`` x
    n_pixels) by less than settings.nll_tolerance: (loss, iterations, converged, why not)."""
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=settings.iterations_per_round, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-15)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    with torch.no_grad():
        loss_value = float(loss_fn())
    before, grad = loss_value, math.inf
    for _ in range(settings.max_rounds):
        before = loss_value
        opt.step(closure)  # returns the loss at the round's start: evaluate where it ended
        with torch.no_grad():
            loss_value = float(loss_fn())
        if not math.isfinite(loss_value):
            return loss_value, int(opt.state[params[0]].get("n_iter", 0)), False, "the likelihood became non-finite"
        grad = max(float(q.grad.abs().max()) for q in params if q.grad is not None)
        # the raw units have about unit curvature (standard errors): 1/2 |summed gradient|^2 is about what a
        # Newton step would still gain
        gain = 0.5 * sum(float((q.grad * n_pixels).square().sum()) for q in params if q.grad is not None)
        if min(abs(before - loss_value) * n_pixels, gain) <= settings.nll_tolerance:
            return loss_value, int(opt.state[params[0]].get("n_iter", 0)), True, ""
    return loss_value, int(opt.state[params[0]].get("n_iter", 0)), False, (
        f"did not converge in {settings.max_rounds} rounds of {settings.iterations_per_round} L-BFGS iterations "
        f"(the last round changed the NLL by {abs(before - loss_value) * n_pixels:.3g}, largest gradient "
        f"{grad:.3g})")


def unit_structure_factors() -> StructureFactorTable:
    """F = 1 at every node (the table of ``intensities: per_shoebox``, where each shoebox has its own scale)."""
    return StructureFactorTable(np.ones((1, 1, 1)), (0, 0, 0), 1.0)


def _panels(panel: Panel | Sequence[Panel]) -> list[Panel]:
    return [panel] if isinstance(panel, Panel) else list(panel)


class _StillProblem:
    """One still's parameters, its shoebox pixels and its likelihood; the panels' origins can be moved (the
    detector refinement's shared parameters). ``panel``: one panel, or the detector's panels that
    ``boxes.panels`` index (one pixel size and sensor for all). ``psf_fwhm_px`` > 0: the expected photons go
    through the simulator's Gaussian point-spread function (``simulator.apply_psf``), evaluated on each box's
    square and the PSF's reach around it (photons off the panel are lost, as the simulator loses them)."""

    def __init__(self, start: Still, panel: Panel | Sequence[Panel], structure_factors: StructureFactorTable | F2Table,
                 boxes: Shoeboxes, noise: NoiseModel, space_group: str, settings: RefineSettings,
                 reference_cell: tuple[float, ...] | None, device: str | None, psf_fwhm_px: float = 0.0):
        self.start, self.boxes, self.noise, self.settings = start, boxes, noise, settings
        self.per_shoebox = settings.intensities == "per_shoebox"
        self.amplitude = ("intensity",) if self.per_shoebox else ("scale",)
        self.cell0 = cell_of_A(np.asarray(start.crystal.A_matrix))
        self.constraints = CellConstraints.from_space_group(space_group, self.cell0)
        self.A0 = np.asarray(start.crystal.A_matrix)
        self.fixed_scale = reference_cell is not None
        self.refine_energy = settings.refine_energy and self.fixed_scale
        self.scale_to_reference = 1.0
        if self.fixed_scale:
            ref = np.asarray(reference_cell, dtype=float)
            if ref.shape != (6,) or not np.all(np.isfinite(ref)) or np.any(ref[:3] <= 0):
                raise ValueError(f"reference_cell must be (a, b, c, alpha, beta, gamma), got {reference_cell!r}")
            self.scale_to_reference = float(np.prod(ref[:3]) / np.prod(self.cell0[:3])) ** (1 / 3)
        self.n_pixels = len(boxes.fast_px)
        self.error = ""
        if self.n_pixels == 0:
            self.error = "no shoebox pixels to fit (no strong spots, or every pixel untrusted)"
        elif not np.all(np.isfinite(boxes.counts_adu)):
            self.error = "shoebox counts are not finite"
        panels = _panels(panel)
        used = sorted(set(boxes.panels.tolist()))
        if not self.error and (used[0] < 0 or used[-1] >= len(panels)):
            raise ValueError(f"shoeboxes on panel {used[-1]} of a detector of {len(panels)} panels")
        if not self.error and len({(panels[k].pixel_mm, panels[k].thickness_mm, panels[k].mu_per_mm)
                                   for k in used}) > 1:
            raise ValueError("the shoeboxes' panels differ in pixel size or sensor: the model takes one of each")
        if self.error:
            return
        dt = self.dt = torch.float64
        self.ts0 = torch_still(start, panels[used[0]], dt, device)
        self.f2 = (structure_factors if isinstance(structure_factors, F2Table)
                   else F2Table.from_table(unit_structure_factors() if self.per_shoebox else structure_factors, dt,
                                           device))
        geom = {k: torch.as_tensor(np.array([getattr(q, k) for q in panels], float), dtype=dt, device=device)
                for k in ("origin_mm", "fast_axis", "slow_axis")}
        self.origins, self.fast_axes, self.slow_axes = geom["origin_mm"], geom["fast_axis"], geom["slow_axis"]
        self._pixel_sets(boxes, panels, psf_fwhm_px, device)
        c = self.constraints
        free0 = c.scaled(c.free(self.cell0), self.scale_to_reference)
        self.mult = torch.as_tensor(c.length_multiplicity, dtype=dt, device=device)
        self.is_length = self.mult > 0
        self.shape_params = int((~self.is_length).sum()) + max(int(self.is_length.sum())
                                                               - (1 if self.fixed_scale else 0), 0)
        B0 = b_matrix(c.cell(torch.as_tensor(free0, dtype=dt)))
        self.U0 = torch.as_tensor(_orthonormal(self.A0 @ np.linalg.inv(B0.detach().numpy())), dtype=dt,
                                  device=device)
        self.fast = torch.as_tensor(boxes.fast_px, device=device)
        self.slow = torch.as_tensor(boxes.slow_px, device=device)
        self.counts = torch.as_tensor(boxes.counts_adu, dtype=dt, device=device)
        self.box = torch.as_tensor(boxes.box, device=device)
        centres = torch.as_tensor(boxes.centres_px, dtype=dt, device=device)
        self.dx = self.fast.to(dt) + 0.5 - centres[self.box, 0]
        self.dy = self.slow.to(dt) + 0.5 - centres[self.box, 1]
        # background start: each box's lowest quartile of photons (the spot sits on top of it)
        photons = boxes.counts_adu / noise.adu_per_photon
        bg0 = np.array([max(float(np.percentile(photons[boxes.box == b], 25)), 1e-3) for b in range(boxes.n_boxes)])
        # raw units of about one standard error of each coefficient (Poisson: var(mean) = bg / n, var(slope) =
        # bg / sum dx^2), so that no direction of the likelihood is much flatter than another for L-BFGS
        var = np.maximum(bg0, 0.1) + (noise.readout_noise_adu / noise.adu_per_photon) ** 2
        n_box = np.bincount(boxes.box, minlength=boxes.n_boxes)
        dx_np = boxes.fast_px + 0.5 - boxes.centres_px[boxes.box, 0]
        dy_np = boxes.slow_px + 0.5 - boxes.centres_px[boxes.box, 1]
        sxx = np.maximum(np.bincount(boxes.box, dx_np ** 2, boxes.n_boxes), 1.0)
        syy = np.maximum(np.bincount(boxes.box, dy_np ** 2, boxes.n_boxes), 1.0)
        bg_sigma = torch.as_tensor(np.sqrt(np.column_stack([var / n_box, var / sxx, var / syy])), dtype=dt,
                                   device=device)
        bg_init = torch.zeros((boxes.n_boxes, 3), dtype=dt, device=device)
        bg_init[:, 0] = torch.as_tensor(bg0, dtype=dt)
        zero = torch.zeros((), dtype=dt, device=device)
        self.p = {
            "intensity": _Param(torch.zeros(boxes.n_boxes if self.per_shoebox else 0, dtype=dt, device=device), 0.05,
                                math.log(1e4)),
            "scale": _Param(zero, 0.05, math.log(1e3)),
            "background": _Param(bg_init, bg_sigma),
            "rotation": _Param(torch.zeros(3, dtype=dt, device=device), 1e-4, math.radians(settings.rotation_bound_deg)),
            "ncells": _Param(torch.zeros(3 if settings.ncells_per_axis else 1, dtype=dt, device=device), 0.05,
                             math.log(settings.ncells_bound_factor)),
            "energy": _Param(zero, 1e-4, settings.energy_bound_rel),
            "cell": _Param(torch.zeros(len(free0), dtype=dt, device=device), 1e-4, settings.cell_bound_rel),
            "mosaic": _Param(torch.zeros((max(self.ts0.umats.shape[0] - 1, 0), 3), dtype=dt, device=device), 1e-4,
                             math.radians(settings.rotation_bound_deg)),
        }
        self.refine_mosaic = settings.refine_mosaic and self.ts0.umats.shape[0] > 1
        self.free0 = torch.as_tensor(free0, dtype=dt, device=device)
        self.kappa0 = self.ts0.kappa / self.scale_to_reference  # the same Bragg angles at the reference's scale
        self.fixed_bragg: torch.Tensor | None = None
        self.intensity_centre: torch.Tensor | None = None
        self.log_size_offset = 0.0  # a temporary factor on Ncells (log): broader spots while the detector moves

    def _pixel_sets(self, boxes: Shoeboxes, panels: list[Panel], psf_fwhm_px: float, device) -> None:
        """The pixels the model is evaluated at: the fitted ones, or with a PSF each box's square grown by the
        kernel's radius (``self.kernel``), and where each fitted pixel sits in its box (``self.local``)."""
        t = lambda a: torch.as_tensor(np.asarray(a), device=device)  # noqa: E731
        self.kernel = None
        if not psf_fwhm_px > 0:
            self.eval_fast, self.eval_slow, self.eval_panel = t(boxes.fast_px), t(boxes.slow_px), t(boxes.panel)
            self.single_panel = len(panels) == 1
            return
        from ..simulator.psf import gauss_psf_kernel_1d

        k = gauss_psf_kernel_1d(float(psf_fwhm_px))
        r, side = len(k) // 2, 2 * boxes.half_width_px + 1
        grid = side + 2 * r
        self.kernel = torch.as_tensor(np.outer(k, k), dtype=self.dt, device=device)[None, None]
        corner = boxes.corners_px() - r  # (B, 2) fast, slow of each support grid's first pixel
        jj, ii = np.mgrid[0:grid, 0:grid]
        fast = (corner[:, 0, None] + ii.ravel()[None]).ravel()
        slow = (corner[:, 1, None] + jj.ravel()[None]).ravel()
        pan = np.repeat(boxes.panels, grid * grid)
        n_fast = np.array([q.n_fast for q in panels])[pan]
        n_slow = np.array([q.n_slow for q in panels])[pan]
        inside = (fast >= 0) & (fast < n_fast) & (slow >= 0) & (slow < n_slow)
        self.eval_fast, self.eval_slow, self.eval_panel = t(fast), t(slow), t(pan)
        self.inside = torch.as_tensor(inside, dtype=self.dt, device=device)
        self.grid, self.side = grid, side
        local = boxes.corners_px()[boxes.box]
        self.local = t((boxes.slow_px - local[:, 1]) * side + (boxes.fast_px - local[:, 0]))
        self.single_panel = len(panels) == 1

    def _pixels(self, ts: TorchStill) -> torch.Tensor:
        """The Bragg photons at the fitted pixels (through the PSF where there is one)."""
        out = expected_photons(ts, self.f2, self.eval_fast, self.eval_slow)
        if self.kernel is None:
            return out
        b = self.boxes.n_boxes
        blurred = torch.nn.functional.conv2d((out * self.inside).reshape(b, 1, self.grid, self.grid), self.kernel)
        return blurred.reshape(b, self.side * self.side)[self.box, self.local]
    def stages(self) -> list[tuple[str, ...]]:
        """The parameters of each stage (per-shoebox intensities in place of the scale)."""
        amplitude = "intensity" if self.per_shoebox else "scale"
        st = [(amplitude, "background"), (amplitude, "background", "rotation", "ncells")
              + (("energy",) if self.refine_energy else ())]
        if self.refine_mosaic:
            st.append(st[-1] + ("mosaic",))
        if self.settings.refine_cell and self.shape_params > 0:
            st.append(st[-1] + ("cell",))
        return st

    def start_intensities(self) -> None:
        """Each box's intensity (on the still's scale) where its photons above the background put it, within a
        factor of 100 of the boxes' median (a box the start's spot misses would otherwise start at its tail's
        ratio, and fit the tail to the spot)."""
        with torch.no_grad():
            c = self.p["background"].value()
            net = torch.bincount(self.box, self.counts / self.noise.adu_per_photon - c[self.box, 0],
                                 minlength=self.boxes.n_boxes)
            model = torch.bincount(self.box, self.bragg(), minlength=self.boxes.n_boxes)
            ratio = torch.clamp(net, min=1.0) / torch.clamp(model, min=1e-12)
            par = self.p["intensity"]
            log_ratio = torch.log(ratio)
            median = torch.median(log_ratio)
            par.init = torch.clamp(log_ratio, median - math.log(100.0), median + math.log(100.0))
            self.intensity_centre = par.init.clone()
            par.raw.data = torch.zeros_like(par.raw)

    def cell_free(self) -> torch.Tensor:
        d = self.p["cell"].value()
        if self.fixed_scale:  # hold the geometric mean of a, b, c: take the scale out of the length changes
            d = torch.where(self.is_length, d - (self.mult * d).sum() / self.mult.sum(), d)
        return torch.where(self.is_length, self.free0 * torch.exp(d), self.free0 * (1 + d))

    def model_still(self, origin_mm: torch.Tensor | None = None) -> TorchStill:
        p = self.p
        A = rotation(p["rotation"].value()) @ self.U0 @ b_matrix(self.constraints.cell(self.cell_free()))
        log_n = p["ncells"].value() + self.log_size_offset
        # "scale" is the integrated intensity's (a spot's photons go as scale x Na Nb Nc): the crystal's size then
        # changes the spots' shape, not their photons, and the two do not trade along a narrow valley
        log_volume = log_n.sum() * (3.0 / log_n.numel())
        umats = self.ts0.umats
        if self.refine_mosaic:
            v = p["mosaic"].value()
            umats = torch.cat([umats[:1], torch.stack([rotation(v[m]) @ umats[m + 1] for m in range(v.shape[0])])])
        origins = self.origins if origin_mm is None else origin_mm.reshape(-1, 3)
        if self.single_panel:  # one panel: its vectors, no per-pixel copies
            geometry = dict(origin_mm=origins[0], fast_axis=self.fast_axes[0], slow_axis=self.slow_axes[0])
        else:
            geometry = dict(origin_mm=origins[self.eval_panel], fast_axis=self.fast_axes[self.eval_panel],
                            slow_axis=self.slow_axes[self.eval_panel])
        return replace(self.ts0, A=A, umats=umats, ncells=self.ts0.ncells * torch.exp(log_n),
                       kappa=self.kappa0 * torch.exp(p["energy"].value()),
                       scale=self.ts0.scale * torch.exp(p["scale"].value() - log_volume), **geometry)

    def _amplitudes(self) -> torch.Tensor:
        """The factor the scale (or each box's intensity) puts on the Bragg photons."""
        a = torch.exp(self.p["scale"].value())
        return a * torch.exp(self.p["intensity"].value())[self.box] if self.per_shoebox else a

    def bragg(self, origin_mm: torch.Tensor | None = None) -> torch.Tensor:
        if self.fixed_bragg is not None:  # only scale and background move: the model's shape is fixed
            return self.fixed_bragg * self._amplitudes()
        out = self._pixels(self.model_still(origin_mm))
        return out * torch.exp(self.p["intensity"].value())[self.box] if self.per_shoebox else out

    def freeze_bragg(self, origin_mm: torch.Tensor | None = None) -> None:
        with torch.no_grad():
            self.fixed_bragg = None
            self.fixed_bragg = self.bragg(origin_mm) / self._amplitudes()

    def loss(self, origin_mm: torch.Tensor | None = None) -> torch.Tensor:
        """Mean NLL over the shoebox pixels (per-shoebox intensities: with a weak log-normal prior, a factor of
        INTENSITY_PRIOR_FACTOR at one sigma, around where the data started them: a box whose spot the model
        misses has an intensity the pixels hardly fix, and would drift without one)."""
        c = self.p["background"].value()
        background = c[self.box, 0] + c[self.box, 1] * self.dx + c[self.box, 2] * self.dy
        nll = self.noise.nll(self.bragg(origin_mm) + background, self.counts).sum()
        if self.per_shoebox and self.intensity_centre is not None:
            z = (self.p["intensity"].value() - self.intensity_centre) / math.log(INTENSITY_PRIOR_FACTOR)
            nll = nll + 0.5 * (z * z).sum()
        return nll / self.n_pixels

    def precondition(self, names=("scale", "intensity", "rotation", "ncells", "energy", "cell", "mosaic"),
                     origin_mm: torch.Tensor | None = None) -> None:
        """Rescale the raw units of the crystal's parameters so that each has unit Fisher information at the
        start, sum over pixels of (d lambda / d raw)^2 / lambda (the background's units are its standard errors
        already): L-BFGS then sees no direction much flatter than another. Central differences, raw = 0."""
        with torch.no_grad():
            c = self.p["background"].value()
            lam = torch.clamp(self.bragg(origin_mm) + c[self.box, 0] + c[self.box, 1] * self.dx + c[self.box, 2] * self.dy,
                              min=1e-3) + (self.noise.readout_noise_adu / self.noise.adu_per_photon) ** 2
        names = [n for n in names if (n != "mosaic" or self.refine_mosaic) and (n != "intensity" or self.per_shoebox)]
        if "intensity" in names:  # d lambda / d log I_b is the box's own Bragg photons: no differences needed
            with torch.no_grad():
                par = self.p["intensity"]
                par.recentre()
                bragg = self.bragg(origin_mm)
                info = torch.bincount(self.box, bragg * bragg / lam, minlength=self.boxes.n_boxes)
                par.sigma = torch.where(info > 1e-12, 1.0 / torch.sqrt(torch.clamp(info, min=1e-12)),
                                        torch.full_like(info, 0.05))
            names.remove("intensity")
        _unit_information([self.p[n] for n in names], lambda: [self.bragg(origin_mm)], [lam])

    def fit_alone(self) -> tuple[int, bool, str, list[dict]]:
        """The stages on this still alone: (iterations, converged, message, per-stage log)."""
        iterations, log, started = 0, [], False
        self.precondition()
        for names in self.stages():
            if "intensity" in names and not started:  # from the data, in units at the model found so far
                self.start_intensities()
                self.precondition(("intensity",))
                started = True
            if set(names) <= {"scale", "intensity", "background"}:
                n_iter, ok, why, loss = self._fit_background(names)
            else:
                n_iter, ok, why, loss = self._fit_in_blocks(names)
            iterations += n_iter
            log.append({"parameters": list(names), "iterations": n_iter, "nll": loss, "converged": ok})
            if not ok and names == ("intensity", "background"):
                continue  # a warm start only: the intensities of boxes the start's spots miss are settled jointly
            if not ok:
                return iterations, False, f"stage {'+'.join(names)} {why}", log
        return iterations, True, "converged", log

    def _fit_background(self, names: tuple[str, ...] = ("scale",)) -> tuple[int, bool, str, float]:
        """Scale (or the boxes' intensities, as ``names`` hold) and the shoeboxes' planes with the Bragg model's
        shape frozen (cheap: no model evaluation)."""
        self.freeze_bragg()
        amplitude = [n for n in ("scale", "intensity") if n in names]
        loss, n_iter, ok, why = _minimise([self.p[n].raw for n in (*amplitude, "background")], self.loss,
                                          self.settings, self.n_pixels)
        self.fixed_bragg = None
        return n_iter, ok, why, loss

    def _fit_in_blocks(self, names: tuple[str, ...]) -> tuple[int, bool, str, float]:
        """The crystal's parameters of ``names`` and the backgrounds in turn until a cycle gains less than the
        tolerance: hundreds of weakly coupled plane coefficients in one quasi-Newton fit with the crystal crawl
        (a still of 150 shoeboxes took ~2000 iterations), each block alone converges in tens."""
        # each box's own intensity moves with the crystal (a spot's partiality does): fitted in the crystal's block
        crystal = [n for n in names if n != "background"]
        with torch.no_grad():
            loss = float(self.loss())
        iterations, why = 0, ""
        for _ in range(self.settings.max_rounds):
            before = loss
            _, n_iter, ok_c, why_c = _minimise([self.p[n].raw for n in crystal], self.loss, self.settings,
                                               self.n_pixels)
            b_iter, ok_b, why_b, loss = self._fit_background(names)
            iterations += n_iter + b_iter
            if not math.isfinite(loss):
                return iterations, False, "the likelihood became non-finite", loss
            why = why_c or why_b
            if (before - loss) * self.n_pixels <= self.settings.nll_tolerance:
                return iterations, ok_c and ok_b, why, loss
        return iterations, False, (f"did not converge in {self.settings.max_rounds} cycles of crystal and background "
                                   f"(the last cycle changed the NLL by {(before - loss) * self.n_pixels:.3g})"), loss

    def result(self, message: str, converged: bool = False, nll_start: float = math.nan, iterations: int = 0,
               log: list[dict] | None = None, origin_mm: torch.Tensor | None = None) -> RefinedStill:
        base = dict(A_matrix=self.A0, cell=self.cell0, ncells=tuple(self.start.crystal.ncells), scale_factor=1.0,
                    energy_factor=1.0, background=np.zeros((self.boxes.n_boxes, 3)), nll_start=nll_start,
                    nll_final=math.nan, iterations=iterations, converged=converged, message=message,
                    pixels=self.n_pixels, shoeboxes=self.boxes.n_boxes, stages=log or [])
        if self.error:
            return RefinedStill(**base)
        with torch.no_grad():
            ts = self.model_still(origin_mm)
            base.update(
                A_matrix=ts.A.cpu().numpy(), cell=tuple(float(v) for v in self.constraints.cell(self.cell_free())),
                ncells=tuple(float(v) for v in ts.ncells.cpu().numpy()), scale_factor=float(ts.scale / self.ts0.scale),
                energy_factor=float(torch.exp(self.p["energy"].value())) / self.scale_to_reference,
                background=self.p["background"].value().cpu().numpy(),
                nll_final=float(self.loss(origin_mm)) * self.n_pixels, energy_refined=self.refine_energy,
                mosaic_umats=ts.umats.cpu().numpy() if self.refine_mosaic else None)
        return RefinedStill(**base)


def refine_still(start: Still, panel: Panel | Sequence[Panel], structure_factors: StructureFactorTable | None,
                 boxes: Shoeboxes, noise: NoiseModel, space_group: str, settings: RefineSettings = RefineSettings(),
                 reference_cell: tuple[float, ...] | None = None, device: str | None = None,
                 psf_fwhm_px: float = 0.0) -> RefinedStill:
    """Refine ``start`` (its crystal from the indexing, its pulse and numerics as simulated or measured) against
    the counts in ``boxes`` on ``panel`` (or on the panels of a detector, as ``boxes.panels`` index them);
    ``space_group`` fixes which cell parameters are free; ``psf_fwhm_px``: the detector's point-spread function
    (the simulator's Gaussian). ``structure_factors`` may be None with ``settings.intensities`` per_shoebox.

    A still fixes only the ratio of its cell to its wavelength (scaling both leaves every Bragg angle as it is), so
    the photon energy is refined only against a ``reference_cell`` (the dataset's, or the structure's): the
    start's cell is brought to the reference's scale (the geometric mean of a, b, c; its energy moved with it, so
    its predictions stay), and then the cell's shape and the energy are refined, its scale held. Without one the
    whole cell is refined at the start's energy. NLLs in the result are summed over the shoebox pixels."""
    if structure_factors is None and settings.intensities != "per_shoebox":
        raise ValueError("structure factors are needed unless every shoebox has its own intensity (per_shoebox)")
    prob = _StillProblem(start, panel, structure_factors, boxes, noise, space_group, settings, reference_cell, device,
                         psf_fwhm_px)
    if prob.error:
        return prob.result(prob.error)
    with torch.no_grad():
        nll_start = float(prob.loss()) * prob.n_pixels
    iterations, ok, message, log = prob.fit_alone()
    return prob.result(message, ok, nll_start, iterations, log)


@dataclass
class RefinedDetector:
    """The detector refined across the stills of a dataset (each panel group's distance and beam centre), with
    each still's model. Shifts are per group, NaN for a group no shoebox lies on (its panels are left as they
    were)."""

    panels: list[Panel]
    groups: np.ndarray  # (P,) the group of each panel
    distance_shift_mm: np.ndarray  # (G,) along the group's normal, away from the sample
    beam_shift_px: np.ndarray  # (G, 2) fast, slow of the group's first panel: where the beam now meets it, minus before
    stills: list[RefinedStill]
    nll_start: float
    nll_final: float
    iterations: int
    converged: bool
    message: str

    @property
    def panel(self) -> Panel:
        """The refined panel of a one-panel detector."""
        if len(self.panels) != 1:
            raise ValueError(f"the detector has {len(self.panels)} panels; take .panels")
        return self.panels[0]


def _group_frames(panels: list[Panel], groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each group's normal (the mean of its panels', away from the sample; unit) and its two in-plane steps of one
    pixel (its first panel's fast and slow axes, made orthogonal to the normal, times that panel's pixel sizes)."""
    n_groups = int(groups.max()) + 1
    normals, steps = np.zeros((n_groups, 3)), np.zeros((n_groups, 2, 3))
    for g in range(n_groups):
        members = [panels[k] for k in np.flatnonzero(groups == g)]
        n = np.zeros(3)
        for q in members:
            m = np.cross(q.fast_axis, q.slow_axis)
            n += m / np.linalg.norm(m) * np.sign(np.dot(q.origin_mm, m))
        n /= np.linalg.norm(n)
        first = members[0]
        for j, (axis, size) in enumerate(zip((first.fast_axis, first.slow_axis), first.pixel_mm)):
            a = np.asarray(axis, float) - np.dot(axis, n) * n
            steps[g, j] = a / np.linalg.norm(a) * size
        normals[g] = n
    return normals, steps


def refine_detector(starts: list[Still], boxes: list[Shoeboxes], panel: Panel | Sequence[Panel],
                    structure_factors: StructureFactorTable | None, noise: NoiseModel, space_group: str,
                    settings: RefineSettings = RefineSettings(refine_cell=False, refine_energy=False),
                    reference_cell: tuple[float, ...] | None = None, device: str | None = None,
                    distance_bound_mm: float = 5.0, beam_bound_px: float = 10.0,
                    psf_fwhm_px: float = 0.0, panel_groups: Sequence[int] | None = None) -> RefinedDetector:
    """Refine the detector's distance and beam centre, shared by every still, together with each still's own
    parameters (diffBragg's geometry refiner): each still is first refined alone on the starting detector (its
    stages), then everything at once by the summed likelihood. ``panel``: one panel, or the detector's panels
    (as the boxes' ``panels`` index them); ``panel_groups``: each panel's group, the groups moving as rigid
    bodies (default: every panel its own; a group none of the shoeboxes lie on is not moved). A still without
    pixels to fit is kept in the result with its message and left out of the fit."""
    if len(starts) != len(boxes):
        raise ValueError(f"{len(starts)} stills but {len(boxes)} sets of shoeboxes")
    if structure_factors is None and settings.intensities != "per_shoebox":
        raise ValueError("structure factors are needed unless every shoebox has its own intensity (per_shoebox)")
    panels = _panels(panel)
    groups = np.arange(len(panels)) if panel_groups is None else np.asarray(panel_groups)
    if groups.shape != (len(panels),) or not np.issubdtype(groups.dtype, np.integer) or groups.min() < 0:
        raise ValueError(f"panel_groups must give each of the {len(panels)} panels a group index >= 0, "
                         f"got {panel_groups!r}")
    groups = np.unique(groups, return_inverse=True)[1].reshape(-1)  # groups 0..G-1 in order
    n_groups = int(groups.max()) + 1
    dt = torch.float64
    f2 = F2Table.from_table(unit_structure_factors() if settings.intensities == "per_shoebox" else structure_factors,
                            dt, device)
    problems = [_StillProblem(s, panels, f2, b, noise, space_group, settings, reference_cell, device, psf_fwhm_px)
                for s, b in zip(starts, boxes)]
    live = [q for q in problems if not q.error]
    nan_shift = np.full(n_groups, np.nan), np.full((n_groups, 2), np.nan)
    if not live:
        return RefinedDetector(panels, groups, *nan_shift, [q.result(q.error) for q in problems], math.nan,
                               math.nan, 0, False, "no still has shoebox pixels to fit")
    n_pixels = sum(q.n_pixels for q in live)
    used = np.zeros(n_groups, bool)
    for q in live:
        used[groups[q.boxes.panels]] = True
    moved_t = torch.as_tensor(used, dtype=dt, device=device)[:, None]
    groups_t = torch.as_tensor(groups, device=device)
    pixel_groups = [groups_t[torch.as_tensor(q.boxes.panel, device=device)] for q in live]
    origin0 = torch.as_tensor(np.array([q.origin_mm for q in panels], dtype=float), dtype=dt, device=device)
    normals, steps = (torch.as_tensor(a, dtype=dt, device=device) for a in _group_frames(panels, groups))
    distance = _Param(torch.zeros(n_groups, dtype=dt, device=device), 0.01, distance_bound_mm)
    beam = _Param(torch.zeros((n_groups, 2), dtype=dt, device=device), 0.01, beam_bound_px)

    def origin() -> torch.Tensor:  # (P, 3); the beam centre moves by +b px where the panel moves by -b px
        shift = distance.value()[:, None] * normals - torch.einsum("gj,gjk->gk", beam.value(), steps)
        return origin0 + (shift * moved_t)[groups_t]

    def total() -> torch.Tensor:
        o = origin()
        return sum(q.loss(o) * q.n_pixels for q in live) / n_pixels

    with torch.no_grad():
        nll_start = float(total()) * n_pixels
    iterations, per_still, messages = 0, {}, []
    # First the geometry alone on crystals a quarter and a half as big (each with every crystal's rotation, and
    # each still's scale and backgrounds following): a detector that is off moves spots by more than their width,
    # and broader spots give the likelihood that reach (the scale is the integrated intensity's, so the photons
    # stay). Then each still is refined alone (its stages) at the geometry found: on the starting detector its
    # crystal would take up the detector's error and settle in a minimum of its own. Then, in turn, the geometry
    # and each still's own parameters (blocks small and well conditioned: a joint quasi-Newton fit over ~10^3
    # parameters, backgrounds included, crawled). Raw units: one standard error each, per block. Done when a cycle
    # gains less than 0.01 of log-likelihood a still, or moves the detector by less than a tenth of its standard
    # error.
    for q in live:
        q.precondition()
        if q.per_shoebox:
            q.start_intensities()
            q.precondition(("intensity",))

    def precondition_detector() -> None:
        """Unit information for each group's distance and beam-centre components. A pixel sees only its own
        panel's group, so one central difference of a component in every group at once gives each group's
        information (two model evaluations per component, however many groups)."""
        with torch.no_grad():
            lams = [torch.clamp(q.bragg(origin()) + q.p["background"].value()[q.box, 0], min=1e-3) for q in live]
            for par in (distance, beam):
                par.recentre()
                par.sigma = torch.full_like(par.raw, 0.01)
                info = torch.zeros_like(par.raw)
                for j in range(par.raw.numel() // n_groups):
                    col = par.raw.view(n_groups, -1)[:, j]
                    parts = []
                    for step in (1.0, -1.0):
                        col.fill_(step)
                        parts.append([q.bragg(origin()) for q in live])
                    col.fill_(0.0)
                    for a, b, lam, pg in zip(*parts, lams, pixel_groups):
                        info.view(n_groups, -1)[:, j] += torch.bincount(pg, ((a - b) / 2.0) ** 2 / lam,
                                                                        minlength=n_groups)
                good = info > 1e-12
                par.sigma = torch.where(good, 0.01 / torch.sqrt(torch.where(good, info, torch.ones_like(info))),
                                        torch.full_like(info, 0.01))

    ok, why, loss = False, "", math.nan
    for factor in (0.25, 0.5, 1.0):
        with torch.no_grad():
            o = origin()
        for q in live:
            q.log_size_offset = math.log(factor)
            if factor == 1.0:  # each still alone at the geometry found
                q.origins = o
                n_iter, q_ok, q_why, per_still[id(q)] = q.fit_alone()
                iterations += n_iter
                if not q_ok:
                    messages.append(q_why)
                continue
            # the spots' new width first meets its own scale and backgrounds (fitted to other widths before): a
            # joint step from the old ones, thousands of log-likelihood off, flung crystals by degrees
            q.origins = o
            iterations += q._fit_background(q.amplitude)[0]
        with torch.no_grad():
            loss = float(total())
        # the broadened passes only bring the spots within reach: a few cycles each, converged or not
        for _ in range(settings.max_rounds if factor == 1.0 else 3):
            before = loss
            precondition_detector()
            with torch.no_grad():
                o = origin()
            for q in live:
                q.p["rotation"].recentre()
                q.precondition(("rotation",), origin_mm=o)
            # the geometry together: the detector with every crystal's rotation (a beam-centre shift and a small
            # rotation move spots alike), the rest of each still held
            _, n_iter, ok, why = _minimise([distance.raw, beam.raw] + [q.p["rotation"].raw for q in live], total,
                                           settings, n_pixels)
            iterations += n_iter
            with torch.no_grad():
                o = origin()
            for q in live:
                for par in q.p.values():
                    par.recentre()
                q.precondition(origin_mm=o)
                q.origins = o  # each still's own fits at the geometry so far
                if factor == 1.0:  # its crystal and backgrounds in turn
                    n_iter, q_ok, q_why, _ = q._fit_in_blocks(q.stages()[-1])
                else:  # broadened: only the scale and background follow (cheap: the Bragg model is frozen for them)
                    n_iter, q_ok, q_why, _ = q._fit_background(q.amplitude)
                iterations += n_iter
                ok, why = ok and q_ok, why or q_why
            with torch.no_grad():
                loss = float(total())
            if not math.isfinite(loss):
                ok, why = False, "the likelihood became non-finite"
                break
            with torch.no_grad():  # in standard errors (sigma: one at the cycle's start)
                moved = max(float(((par.value() - par.init).abs() / par.sigma).max()) for par in (distance, beam))
            if (before - loss) * n_pixels <= settings.nll_tolerance * len(live) or (factor == 1.0 and moved < 0.1):
                ok = True
                break
        else:
            if factor < 1.0:
                ok = True
                continue
            ok, why = False, (f"did not converge in {settings.max_rounds} cycles of detector and stills (the last "
                              f"cycle changed the NLL by {(before - loss) * n_pixels:.3g})")
        if not ok:
            break
    for q in live:
        q.log_size_offset = 0.0
    with torch.no_grad():
        o = origin()
        refined = [replace(p, origin_mm=tuple(float(v) for v in o[k].cpu().numpy())) for k, p in enumerate(panels)]
        stills = [q.result(q.error) if q.error else
                  q.result("converged" if ok else f"joint refinement {why}", ok, math.nan, 0, per_still.get(id(q), []), o)
                  for q in problems]
        d_shift = np.where(used, distance.value().cpu().numpy(), np.nan)
        b_shift = np.where(used[:, None], beam.value().cpu().numpy(), np.nan)
        return RefinedDetector(refined, groups, d_shift, b_shift, stills, nll_start, float(loss) * n_pixels,
                               iterations, ok, "converged" if ok else f"joint refinement {why}"
                               + (f"; alone: {'; '.join(messages)}" if messages else ""))
