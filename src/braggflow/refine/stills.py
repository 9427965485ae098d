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
    """The pixels a refinement fits: (fast, slow) indices, the shoebox each belongs to, its counts (ADU)."""

    fast_px: np.ndarray  # (P,) int64
    slow_px: np.ndarray  # (P,) int64
    box: np.ndarray  # (P,) int64 in [0, n_boxes)
    counts_adu: np.ndarray  # (P,) float64
    centres_px: np.ndarray  # (B, 2) (fast, slow) continuous px of each shoebox's spot

    @property
    def n_boxes(self) -> int:
        return len(self.centres_px)

    @classmethod
    def around(cls, counts_adu: np.ndarray, untrusted: np.ndarray | None, centres_px: np.ndarray,
               half_width_px: int = 4) -> "Shoeboxes":
        """Square shoeboxes of (2 half_width + 1)^2 pixels around spot centres (fast, slow) px on a (slow, fast)
        frame; untrusted and non-finite pixels left out, a pixel shared by two boxes kept by the first."""
        counts = np.asarray(counts_adu, dtype=np.float64)
        if counts.ndim != 2:
            raise ValueError(f"counts must be a (slow, fast) frame, got shape {counts.shape}")
        bad = ~np.isfinite(counts) if untrusted is None else (np.asarray(untrusted, bool) | ~np.isfinite(counts))
        centres = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
        claimed = np.zeros(counts.shape, dtype=bool)
        fast, slow, box, kept = [], [], [], []
        for x, y in centres:
            if not (np.isfinite(x) and np.isfinite(y)):
                continue
            i0, j0 = int(math.floor(x)) - half_width_px, int(math.floor(y)) - half_width_px
            i1, j1 = i0 + 2 * half_width_px + 1, j0 + 2 * half_width_px + 1
            i0, j0 = max(i0, 0), max(j0, 0)
            i1, j1 = min(i1, counts.shape[1]), min(j1, counts.shape[0])
            if i0 >= i1 or j0 >= j1:
                continue
            jj, ii = np.mgrid[j0:j1, i0:i1]
            use = ~(bad[j0:j1, i0:i1] | claimed[j0:j1, i0:i1])
            if not use.any():
                continue
            claimed[j0:j1, i0:i1] |= use
            fast.append(ii[use])
            slow.append(jj[use])
            box.append(np.full(int(use.sum()), len(kept)))
            kept.append((x, y))
        if not kept:
            empty = np.zeros(0, np.int64)
            return cls(empty, empty, empty, np.zeros(0), np.zeros((0, 2)))
        f, s = np.concatenate(fast).astype(np.int64), np.concatenate(slow).astype(np.int64)
        return cls(f, s, np.concatenate(box).astype(np.int64), counts[s, f], np.array(kept))


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


class _Param:
    """p = init + bound tanh(sigma raw / bound) (or init + sigma raw without a bound); raw starts at 0."""

    def __init__(self, init: torch.Tensor, sigma: float | torch.Tensor, bound: float | None = None):
        self.init, self.sigma, self.bound = init, sigma, bound
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
    per entry of ``lams``); a component the pixels say nothing about keeps its units."""
    with torch.no_grad():
        for par in params:
            info = torch.zeros_like(par.raw)
            for j in range(par.raw.numel()):
                parts = []
                for step in (1.0, -1.0):
                    par.raw.view(-1)[j] = step
                    parts.append(predict())
                par.raw.view(-1)[j] = 0.0
                info.view(-1)[j] = sum((((a - b) / 2.0) ** 2 / lam).sum() for a, b, lam in zip(*parts, lams))
            sigma = torch.as_tensor(par.sigma, dtype=par.raw.dtype) * torch.ones_like(par.raw)
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


class _StillProblem:
    """One still's parameters, its shoebox pixels and its likelihood; the panel's origin can be moved (the
    detector refinement's shared parameters)."""

    def __init__(self, start: Still, panel: Panel, structure_factors: StructureFactorTable | F2Table,
                 boxes: Shoeboxes, noise: NoiseModel, space_group: str, settings: RefineSettings,
                 reference_cell: tuple[float, ...] | None, device: str | None):
        self.start, self.boxes, self.noise, self.settings = start, boxes, noise, settings
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
        if self.error:
            return
        dt = self.dt = torch.float64
        self.ts0 = torch_still(start, panel, dt, device)
        self.f2 = (structure_factors if isinstance(structure_factors, F2Table)
                   else F2Table.from_table(structure_factors, dt, device))
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
        self.log_size_offset = 0.0  # a temporary factor on Ncells (log): broader spots while the detector moves

    def stages(self) -> list[tuple[str, ...]]:
        st = [("scale", "background"), ("scale", "background", "rotation", "ncells")
              + (("energy",) if self.refine_energy else ())]
        if self.refine_mosaic:
            st.append(st[-1] + ("mosaic",))
        if self.settings.refine_cell and self.shape_params > 0:
            st.append(st[-1] + ("cell",))
        return st

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
        return replace(self.ts0, A=A, umats=umats, ncells=self.ts0.ncells * torch.exp(log_n),
                       kappa=self.kappa0 * torch.exp(p["energy"].value()),
                       scale=self.ts0.scale * torch.exp(p["scale"].value() - log_volume),
                       origin_mm=self.ts0.origin_mm if origin_mm is None else origin_mm)

    def bragg(self, origin_mm: torch.Tensor | None = None) -> torch.Tensor:
        if self.fixed_bragg is not None:  # only scale and background move: the model's shape is fixed
            return self.fixed_bragg * torch.exp(self.p["scale"].value())
        return expected_photons(self.model_still(origin_mm), self.f2, self.fast, self.slow)

    def freeze_bragg(self, origin_mm: torch.Tensor | None = None) -> None:
        with torch.no_grad():
            self.fixed_bragg = None
            self.fixed_bragg = self.bragg(origin_mm) / torch.exp(self.p["scale"].value())

    def loss(self, origin_mm: torch.Tensor | None = None) -> torch.Tensor:
        """Mean NLL over the shoebox pixels."""
        c = self.p["background"].value()
        background = c[self.box, 0] + c[self.box, 1] * self.dx + c[self.box, 2] * self.dy
        return self.noise.nll(self.bragg(origin_mm) + background, self.counts).mean()

    def precondition(self, names=("scale", "rotation", "ncells", "energy", "cell", "mosaic"),
                     origin_mm: torch.Tensor | None = None) -> None:
        """Rescale the raw units of the crystal's parameters so that each has unit Fisher information at the
        start, sum over pixels of (d lambda / d raw)^2 / lambda (the background's units are its standard errors
        already): L-BFGS then sees no direction much flatter than another. Central differences, raw = 0."""
        with torch.no_grad():
            c = self.p["background"].value()
            lam = torch.clamp(self.bragg(origin_mm) + c[self.box, 0] + c[self.box, 1] * self.dx + c[self.box, 2] * self.dy,
                              min=1e-3) + (self.noise.readout_noise_adu / self.noise.adu_per_photon) ** 2
        names = [n for n in names if n != "mosaic" or self.refine_mosaic]
        _unit_information([self.p[n] for n in names], lambda: [self.bragg(origin_mm)], [lam])

    def fit_alone(self) -> tuple[int, bool, str, list[dict]]:
        """The stages on this still alone: (iterations, converged, message, per-stage log)."""
        iterations, log = 0, []
        self.precondition()
        for names in self.stages():
            if set(names) <= {"scale", "background"}:
                n_iter, ok, why, loss = self._fit_background()
            else:
                n_iter, ok, why, loss = self._fit_in_blocks(names)
            iterations += n_iter
            log.append({"parameters": list(names), "iterations": n_iter, "nll": loss, "converged": ok})
            if not ok:
                return iterations, False, f"stage {'+'.join(names)} {why}", log
        return iterations, True, "converged", log

    def _fit_background(self) -> tuple[int, bool, str, float]:
        """Scale and the shoeboxes' planes with the Bragg model's shape frozen (cheap: no model evaluation)."""
        self.freeze_bragg()
        loss, n_iter, ok, why = _minimise([self.p[n].raw for n in ("scale", "background")], self.loss,
                                          self.settings, self.n_pixels)
        self.fixed_bragg = None
        return n_iter, ok, why, loss

    def _fit_in_blocks(self, names: tuple[str, ...]) -> tuple[int, bool, str, float]:
        """The crystal's parameters of ``names`` and the backgrounds in turn until a cycle gains less than the
        tolerance: hundreds of weakly coupled plane coefficients in one quasi-Newton fit with the crystal crawl
        (a still of 150 shoeboxes took ~2000 iterations), each block alone converges in tens."""
        crystal = [n for n in names if n != "background"]
        with torch.no_grad():
            loss = float(self.loss())
        iterations, why = 0, ""
        for _ in range(self.settings.max_rounds):
            before = loss
            _, n_iter, ok_c, why_c = _minimise([self.p[n].raw for n in crystal], self.loss, self.settings,
                                               self.n_pixels)
            b_iter, ok_b, why_b, loss = self._fit_background()
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


def refine_still(start: Still, panel: Panel, structure_factors: StructureFactorTable, boxes: Shoeboxes,
                 noise: NoiseModel, space_group: str, settings: RefineSettings = RefineSettings(),
                 reference_cell: tuple[float, ...] | None = None, device: str | None = None) -> RefinedStill:
    """Refine ``start`` (its crystal from the indexing, its pulse and numerics as simulated or measured) against
    the counts in ``boxes`` on ``panel``; ``space_group`` fixes which cell parameters are free.

    A still fixes only the ratio of its cell to its wavelength (scaling both leaves every Bragg angle as it is), so
    the photon energy is refined only against a ``reference_cell`` (the dataset's, or the structure's): the
    start's cell is brought to the reference's scale (the geometric mean of a, b, c; its energy moved with it, so
    its predictions stay), and then the cell's shape and the energy are refined, its scale held. Without one the
    whole cell is refined at the start's energy. NLLs in the result are summed over the shoebox pixels."""
    prob = _StillProblem(start, panel, structure_factors, boxes, noise, space_group, settings, reference_cell, device)
    if prob.error:
        return prob.result(prob.error)
    with torch.no_grad():
        nll_start = float(prob.loss()) * prob.n_pixels
    iterations, ok, message, log = prob.fit_alone()
    return prob.result(message, ok, nll_start, iterations, log)


@dataclass
class RefinedDetector:
    """The panel refined across the stills of a dataset (its distance and beam centre), with each still's model."""

    panel: Panel
    distance_shift_mm: float  # along the panel normal, away from the sample
    beam_shift_px: tuple[float, float]  # (fast, slow): where the direct beam now meets the panel, minus before
    stills: list[RefinedStill]
    nll_start: float
    nll_final: float
    iterations: int
    converged: bool
    message: str


def refine_detector(starts: list[Still], boxes: list[Shoeboxes], panel: Panel,
                    structure_factors: StructureFactorTable, noise: NoiseModel, space_group: str,
                    settings: RefineSettings = RefineSettings(refine_cell=False, refine_energy=False),
                    reference_cell: tuple[float, ...] | None = None, device: str | None = None,
                    distance_bound_mm: float = 5.0, beam_bound_px: float = 10.0) -> RefinedDetector:
    """Refine the panel's distance and beam centre, shared by every still, together with each still's own
    parameters (diffBragg's geometry refiner): each still is first refined alone on the starting panel (its
    stages), then everything at once by the summed likelihood. A still without pixels to fit is kept in the
    result with its message and left out of the fit."""
    if len(starts) != len(boxes):
        raise ValueError(f"{len(starts)} stills but {len(boxes)} sets of shoeboxes")
    dt = torch.float64
    f2 = F2Table.from_table(structure_factors, dt, device)
    problems = [_StillProblem(s, panel, f2, b, noise, space_group, settings, reference_cell, device)
                for s, b in zip(starts, boxes)]
    live = [q for q in problems if not q.error]
    if not live:
        return RefinedDetector(panel, 0.0, (0.0, 0.0), [q.result(q.error) for q in problems], math.nan, math.nan,
                               0, False, "no still has shoebox pixels to fit")
    n_pixels = sum(q.n_pixels for q in live)
    origin0 = torch.as_tensor(np.array(panel.origin_mm, dtype=float), dtype=dt, device=device)
    normal = np.cross(panel.fast_axis, panel.slow_axis)
    normal = normal / np.linalg.norm(normal) * np.sign(np.dot(panel.origin_mm, normal))  # away from the sample
    normal_t = torch.as_tensor(normal, dtype=dt, device=device)
    step_px = torch.as_tensor(np.stack([panel.fast_axis, panel.slow_axis]) * panel.pixel_size_mm, dtype=dt,
                              device=device)
    distance = _Param(torch.zeros((), dtype=dt, device=device), 0.01, distance_bound_mm)
    beam = _Param(torch.zeros(2, dtype=dt, device=device), 0.01, beam_bound_px)

    def origin() -> torch.Tensor:  # the beam centre moves by +b px where the panel moves by -b px
        return origin0 + distance.value() * normal_t - beam.value() @ step_px

    def total() -> torch.Tensor:
        o = origin()
        return sum(q.loss(o) * q.n_pixels for q in live) / n_pixels

    with torch.no_grad():
        nll_start = float(total()) * n_pixels
    iterations, per_still, messages = 0, {}, []
    for q in live:
        n_iter, ok, why, log = q.fit_alone()
        iterations += n_iter
        per_still[id(q)] = log
        if not ok:
            messages.append(why)
    # Then, in turn, the geometry (the detector with every crystal's rotation) and each still's own parameters
    # (blocks small and well conditioned: a joint quasi-Newton fit over ~10^3 parameters, backgrounds included,
    # crawled), first on crystals a quarter and a half as big: a detector that is off moves spots by more than their
    # width, and broader spots give the likelihood that reach (the scale is the integrated intensity's, so the
    # photons stay; each crystal's size is held while broadened). Raw units: one standard error each, per block.
    # Done when a cycle gains less than 0.01 of log-likelihood a still, or moves the detector by less than a tenth
    # of its standard error.
    def precondition_detector() -> None:
        with torch.no_grad():
            lams = [torch.clamp(q.bragg(origin()) + q.p["background"].value()[q.box, 0], min=1e-3) for q in live]
        for par in (distance, beam):
            par.recentre()
            par.sigma = torch.full_like(par.raw, 0.01)
        _unit_information([distance, beam], lambda: [q.bragg(origin()) for q in live], lams)

    ok, why, loss = False, "", math.nan
    for factor in (0.25, 0.5, 1.0):
        for q in live:
            q.log_size_offset = math.log(factor)
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
                # broadened: only the scale and background follow (cheap: the Bragg model is frozen for them)
                names = q.stages()[-1] if factor == 1.0 else ("scale", "background")
                if factor < 1.0:
                    q.freeze_bragg(o)
                _, n_iter, q_ok, q_why = _minimise([q.p[n].raw for n in names], lambda q=q: q.loss(o), settings,
                                                   q.n_pixels)
                q.fixed_bragg = None
                iterations += n_iter
                ok, why = ok and q_ok, why or q_why
            with torch.no_grad():
                loss = float(total())
            if not math.isfinite(loss):
                ok, why = False, "the likelihood became non-finite"
                break
            with torch.no_grad():  # in standard errors (sigma: one at the cycle's start)
                moved = max(float((par.value() - par.init).abs().max() / torch.as_tensor(par.sigma).min())
                            for par in (distance, beam))
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
        new_origin = tuple(float(v) for v in o.cpu().numpy())
        refined_panel = Panel(new_origin, panel.fast_axis, panel.slow_axis, panel.pixel_size_mm, panel.n_fast,
                              panel.n_slow, panel.pixel_size_slow_mm, panel.name)
        stills = [q.result(q.error) if q.error else
                  q.result("converged" if ok else f"joint refinement {why}", ok, math.nan, 0, per_still[id(q)], o)
                  for q in problems]
        b = beam.value()
        return RefinedDetector(refined_panel, float(distance.value()), (float(b[0]), float(b[1])), stills,
                               nll_start, float(loss) * n_pixels, iterations, ok,
                               "converged" if ok else f"joint refinement {why}"
                               + (f"; alone: {'; '.join(messages)}" if messages else ""))
