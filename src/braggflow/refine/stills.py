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
stage run in rounds of L-BFGS iterations until a round lowers the summed NLL by less than 0.01. A still that does not
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
        lam = torch.clamp(expected_photons, min=0.0) + (s2 + 1e-9)
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
    # a stage stops when a round lowers the NLL (summed over the pixels) by less than this: a hundredth of a unit
    # of log-likelihood, far below what the data can tell apart
    nll_tolerance: float = 0.01
    rotation_bound_deg: float = 1.0
    cell_bound_rel: float = 0.05
    ncells_bound_factor: float = 4.0
    energy_bound_rel: float = 0.02


class _Param:
    """p = init + bound tanh(sigma raw / bound) (or init + sigma raw without a bound); raw starts at 0."""

    def __init__(self, init: torch.Tensor, sigma: float | torch.Tensor, bound: float | None = None):
        self.init, self.sigma, self.bound = init, sigma, bound
        self.raw = torch.zeros_like(init, requires_grad=True)

    def value(self) -> torch.Tensor:
        if self.bound is None:
            return self.init + self.sigma * self.raw
        return self.init + self.bound * torch.tanh(self.sigma * self.raw / self.bound)


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

    def still(self, start: Still) -> Still:
        """``start`` with the refined crystal and pulse (the square transform takes whole Ncells, so they are
        rounded there)."""
        c, p = start.crystal, start.pulse
        ncells = tuple(float(round(n)) for n in self.ncells) if c.shape == "square" else self.ncells
        crystal = Crystal(self.A_matrix, ncells=ncells, shape=c.shape, mosaic_umats=c.mosaic_umats)
        pulse = Pulse(p.wavelengths_A / self.energy_factor, weights=p.weights,
                      fluence_photons_per_m2=p.fluence_photons_per_m2 * self.scale_factor,
                      kahn_factor=p.kahn_factor, polarization_axis=p.polarization_axis)
        return Still(crystal, pulse, start.numerics)


def _orthonormal(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    r = u @ vt
    return r if np.linalg.det(r) > 0 else u @ np.diag([1, 1, -1]) @ vt


def refine_still(start: Still, panel: Panel, structure_factors: StructureFactorTable, boxes: Shoeboxes,
                 noise: NoiseModel, space_group: str, settings: RefineSettings = RefineSettings(),
                 reference_cell: tuple[float, ...] | None = None, device: str | None = None) -> RefinedStill:
    """Refine ``start`` (its crystal from the indexing, its pulse and numerics as simulated or measured) against
    the counts in ``boxes`` on ``panel``; ``space_group`` fixes which cell parameters are free.

    A still fixes only the ratio of its cell to its wavelength (scaling both leaves every Bragg angle as it is), so
    the photon energy is refined only against a ``reference_cell`` (the dataset's, or the structure's): the
    start's cell is brought to the reference's scale (the geometric mean of a, b, c; its energy moved with it, so
    its predictions stay), and then the cell's shape and the energy are refined, its scale held. Without one the
    whole cell is refined at the start's energy."""
    cell0 = cell_of_A(np.asarray(start.crystal.A_matrix))
    constraints = CellConstraints.from_space_group(space_group, cell0)
    A0 = np.asarray(start.crystal.A_matrix)
    fixed_scale = reference_cell is not None
    refine_energy = settings.refine_energy and fixed_scale
    scale_to_reference = 1.0
    if fixed_scale:
        ref = np.asarray(reference_cell, dtype=float)
        if ref.shape != (6,) or not np.all(np.isfinite(ref)) or np.any(ref[:3] <= 0):
            raise ValueError(f"reference_cell must be (a, b, c, alpha, beta, gamma), got {reference_cell!r}")
        scale_to_reference = float(np.prod(ref[:3]) / np.prod(cell0[:3])) ** (1 / 3)

    def result(msg: str, **kw) -> RefinedStill:
        base = dict(A_matrix=A0, cell=cell0, ncells=tuple(start.crystal.ncells), scale_factor=1.0, energy_factor=1.0,
                    background=np.zeros((boxes.n_boxes, 3)), nll_start=math.nan, nll_final=math.nan, iterations=0,
                    converged=False, message=msg, pixels=len(boxes.fast_px), shoeboxes=boxes.n_boxes)
        return RefinedStill(**{**base, **kw})

    if len(boxes.fast_px) == 0:
        return result("no shoebox pixels to fit (no strong spots, or every pixel untrusted)")
    if not np.all(np.isfinite(boxes.counts_adu)):
        return result("shoebox counts are not finite")

    dt = torch.float64
    ts0 = torch_still(start, panel, dt, device)
    f2 = F2Table.from_table(structure_factors, dt, device)
    free0 = constraints.scaled(constraints.free(cell0), scale_to_reference)
    mult = torch.as_tensor(constraints.length_multiplicity, dtype=dt, device=device)
    is_length = mult > 0
    shape_params = int((~is_length).sum()) + max(int(is_length.sum()) - (1 if fixed_scale else 0), 0)
    B0 = b_matrix(constraints.cell(torch.as_tensor(free0, dtype=dt)))
    U0 = torch.as_tensor(_orthonormal(A0 @ np.linalg.inv(B0.detach().numpy())), dtype=dt, device=device)
    fast = torch.as_tensor(boxes.fast_px, device=device)
    slow = torch.as_tensor(boxes.slow_px, device=device)
    counts = torch.as_tensor(boxes.counts_adu, dtype=dt, device=device)
    box = torch.as_tensor(boxes.box, device=device)
    centres = torch.as_tensor(boxes.centres_px, dtype=dt, device=device)
    n_pixels = len(boxes.fast_px)
    dx = fast.to(dt) + 0.5 - centres[box, 0]
    dy = slow.to(dt) + 0.5 - centres[box, 1]

    # background start: each box's lowest quartile of photons (the spot sits on top of it)
    photons = boxes.counts_adu / noise.adu_per_photon
    bg0 = np.array([max(float(np.percentile(photons[boxes.box == b], 25)), 1e-3) for b in range(boxes.n_boxes)])
    bg_sigma = torch.as_tensor(np.maximum(bg0, 0.1), dtype=dt, device=device)[:, None] * torch.tensor(
        [1.0, 0.1, 0.1], dtype=dt, device=device)
    bg_init = torch.zeros((boxes.n_boxes, 3), dtype=dt, device=device)
    bg_init[:, 0] = torch.as_tensor(bg0, dtype=dt)
    n_axes = 3 if settings.ncells_per_axis else 1
    p = {
        "scale": _Param(torch.zeros((), dtype=dt, device=device), 0.05, math.log(1e3)),
        "background": _Param(bg_init, bg_sigma),
        "rotation": _Param(torch.zeros(3, dtype=dt, device=device), 1e-4, math.radians(settings.rotation_bound_deg)),
        "ncells": _Param(torch.zeros(n_axes, dtype=dt, device=device), 0.05, math.log(settings.ncells_bound_factor)),
        "energy": _Param(torch.zeros((), dtype=dt, device=device), 1e-4, settings.energy_bound_rel),
        "cell": _Param(torch.zeros(len(free0), dtype=dt, device=device), 1e-4, settings.cell_bound_rel),
    }
    free0_t = torch.as_tensor(free0, dtype=dt, device=device)

    kappa0 = ts0.kappa / scale_to_reference  # the same Bragg angles with the cell at the reference's scale

    def cell_free() -> torch.Tensor:
        d = p["cell"].value()
        if fixed_scale:  # hold the geometric mean of a, b, c: take the scale out of the length changes
            d = torch.where(is_length, d - (mult * d).sum() / mult.sum(), d)
        return torch.where(is_length, free0_t * torch.exp(d), free0_t * (1 + d))

    def model_still() -> TorchStill:
        A = rotation(p["rotation"].value()) @ U0 @ b_matrix(constraints.cell(cell_free()))
        log_n = p["ncells"].value()
        # "scale" is the integrated intensity's (a spot's photons go as scale x Na Nb Nc): the crystal's size then
        # changes the spots' shape, not their photons, and the two do not trade along a narrow valley
        log_volume = log_n.sum() * (3.0 / log_n.numel())
        return replace(ts0, A=A, ncells=ts0.ncells * torch.exp(log_n), kappa=kappa0 * torch.exp(p["energy"].value()),
                       scale=ts0.scale * torch.exp(p["scale"].value() - log_volume))

    def background() -> torch.Tensor:
        c = p["background"].value()
        return c[box, 0] + c[box, 1] * dx + c[box, 2] * dy

    def loss_of(bragg: torch.Tensor) -> torch.Tensor:
        return noise.nll(bragg + background(), counts).mean()

    with torch.no_grad():
        nll_start = float(loss_of(expected_photons(model_still(), f2, fast, slow)))
    stages = [("scale", "background"), ("scale", "background", "rotation", "ncells")
              + (("energy",) if refine_energy else ())]
    if settings.refine_cell and shape_params > 0:
        stages.append(stages[-1] + ("cell",))
    iterations, converged, message, log = 0, True, "converged", []
    loss_value = nll_start
    for names in stages:
        params = [p[n].raw for n in names]
        fixed_bragg = None
        if set(names) <= {"scale", "background"}:  # the Bragg model does not move: compute it once
            with torch.no_grad():
                fixed_bragg = expected_photons(model_still(), f2, fast, slow) / torch.exp(p["scale"].value())
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=settings.iterations_per_round, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-15)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            bragg = (fixed_bragg * torch.exp(p["scale"].value()) if fixed_bragg is not None
                     else expected_photons(model_still(), f2, fast, slow))
            loss = loss_of(bragg)
            loss.backward()
            return loss

        stage_ok, grad, before = False, math.inf, loss_value
        for _ in range(settings.max_rounds):
            before = loss_value
            loss_value = float(opt.step(closure).detach())
            if not math.isfinite(loss_value):
                break
            grad = max(float(q.grad.abs().max()) for q in params if q.grad is not None)
            if abs(before - loss_value) * n_pixels <= settings.nll_tolerance:
                stage_ok = True
                break
        n_iter = int(opt.state[params[0]].get("n_iter", 0))
        iterations += n_iter
        log.append({"parameters": list(names), "iterations": n_iter, "nll": loss_value, "converged": stage_ok})
        if not math.isfinite(loss_value):
            converged, message = False, f"the likelihood became non-finite in stage {'+'.join(names)}"
            break
        if not stage_ok:
            converged = False
            message = (f"stage {'+'.join(names)} did not converge in {settings.max_rounds} rounds of "
                       f"{settings.iterations_per_round} L-BFGS iterations (the last round changed the NLL by "
                       f"{abs(before - loss_value) * n_pixels:.3g}, largest gradient {grad:.3g})")
    with torch.no_grad():
        ts = model_still()
        nll_final = float(loss_of(expected_photons(ts, f2, fast, slow)))
        cell = tuple(float(v) for v in constraints.cell(cell_free()))
        ncells = tuple(float(v) for v in ts.ncells.cpu().numpy())
        return result(message, A_matrix=ts.A.cpu().numpy(), cell=cell, ncells=ncells,
                      scale_factor=float(ts.scale / ts0.scale),
                      energy_factor=float(torch.exp(p["energy"].value())) / scale_to_reference,
                      background=p["background"].value().cpu().numpy(), nll_start=nll_start, nll_final=nll_final,
                      iterations=int(iterations), converged=converged, energy_refined=refine_energy, stages=log)
