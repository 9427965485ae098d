"""Evaluation of the phase models on every split, against two references that know nothing: every phase 0,
and random phases.

For each model and sample: the loss (``loss``; 1 - map correlation at the best equivalent origin and hand), the
amplitude-weighted mean phase error (degrees, at that equivalent), the real-space correlation coefficient of the
maps made with the true amplitudes and the true / the predicted phases (computed from the maps themselves, on a
``map_grid``^3 grid), and the mean phase error by resolution shell (shells of equal reflection count in 1/d over
the test samples). Central sections (z = 0) of a few test samples' maps are kept for the figure.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from .dataset import SPLITS, PhaseVolumes
from .loss import Equivalents, loss_weights, network_inputs, per_sample_loss

REFERENCES = ("zero_phases", "random_phases")
UNET = "unet"
_BATCH = 256


@dataclass
class Scores:
    loss: np.ndarray  # (N,)
    best: np.ndarray  # (N,) equivalent index
    phase_error_deg: np.ndarray  # (N,)
    rscc: np.ndarray  # (N,)
    shell_error_deg: np.ndarray  # (N, shells) amplitude-weighted mean phase error per shell (nan where empty)
    prediction: np.ndarray  # (N, V) predicted phases (radians)


def _wrap(x: np.ndarray) -> np.ndarray:
    return (x + np.pi) % (2 * np.pi) - np.pi


def predict(model, v: PhaseVolumes, device: str = "cpu") -> np.ndarray:
    """(N, 2, V) the model's (a, b) for every sample."""
    import torch

    from ..ml.determinism import one_thread

    out = []
    ctx = one_thread() if device == "cpu" else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        for i in range(0, len(v.amplitude), _BATCH):
            x = torch.from_numpy(network_inputs(v, np.arange(i, min(i + _BATCH, len(v.amplitude))))).to(device)
            out.append(model(x).flatten(2).cpu().numpy())
    return np.concatenate(out)


def reference_outputs(kind: str, v: PhaseVolumes, seed: int) -> np.ndarray:
    n, nv = len(v.amplitude), len(v.hkl)
    if kind == "zero_phases":
        return np.stack([np.ones((n, nv)), np.zeros((n, nv))], axis=1)
    if kind == "random_phases":  # Friedel pairs opposite, as every model predicts them
        r = np.random.default_rng([seed, 99]).uniform(-np.pi, np.pi, (n, nv))
        r = 0.5 * (r - r[:, ::-1])  # the grid in C order: row V-1-j is -h of row j
        return np.stack([np.cos(r), np.sin(r)], axis=1)
    raise ValueError(kind)


def shell_edges(v: PhaseVolumes, n_shells: int) -> np.ndarray:
    """Edges in 1/d (1/A) of shells with equal numbers of measurable reflections over the test samples."""
    test = np.concatenate([v.select("test_seen"), v.select("test_unseen")]) if len(v.select("test_unseen")) else \
        v.select("test_seen")
    idx = test if len(test) else np.arange(len(v.amplitude))
    c = v.crystal[idx]
    inv = 1.0 / v.d_angstrom[c][v.measurable[c]]
    return np.quantile(inv, np.linspace(0, 1, n_shells + 1))


def density_map(amplitude: np.ndarray, phase: np.ndarray, hkl: np.ndarray, measurable: np.ndarray,
                grid: int) -> np.ndarray:
    """rho(x) = sum_h |F| exp(i phi) exp(-2 pi i h.x) on a grid^3 of fractional x (F000 left out: mean-free)."""
    f = np.zeros((grid, grid, grid), dtype=complex)
    h = hkl[measurable] % grid
    f[h[:, 0], h[:, 1], h[:, 2]] = amplitude[measurable] * np.exp(1j * phase[measurable])
    return np.fft.fftn(f).real


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def score(out: np.ndarray, v: PhaseVolumes, eq: Equivalents, edges: np.ndarray, map_grid: int) -> Scores:
    import torch

    n = len(v.amplitude)
    loss, best = np.empty(n), np.empty(n, dtype=int)
    for i in range(0, n, _BATCH):
        idx = np.arange(i, min(i + _BATCH, n))
        cos_t, sin_t, valid = eq.targets(v, idx)
        w = loss_weights(v, idx)
        o = torch.from_numpy(out[idx].astype(np.float32)).view(len(idx), 2, *v.shape)
        l, b = per_sample_loss(o, torch.from_numpy(w), torch.from_numpy(cos_t), torch.from_numpy(sin_t),
                               torch.from_numpy(valid))
        loss[idx], best[idx] = l.numpy(), b.numpy()
    pred = np.arctan2(out[:, 1], out[:, 0])
    err, rscc = np.empty(n), np.empty(n)
    shells = np.full((n, len(edges) - 1), np.nan)
    for i in range(n):
        c = v.crystal[i]
        m = v.measurable[c]
        target = eq.equivalent(v, i, best[i])
        d = np.abs(_wrap(pred[i] - target))
        a = v.amplitude[i].astype(np.float64)
        err[i] = np.degrees((a[m] * d[m]).sum() / max(a[m].sum(), 1e-30))
        which = np.clip(np.searchsorted(edges, 1.0 / v.d_angstrom[c][m], side="right") - 1, 0, len(edges) - 2)
        num = np.bincount(which, weights=a[m] * d[m], minlength=len(edges) - 1)
        den = np.bincount(which, weights=a[m], minlength=len(edges) - 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            shells[i] = np.degrees(num / den)
        rscc[i] = _corr(density_map(a, target, v.hkl, m, map_grid), density_map(a, pred[i], v.hkl, m, map_grid))
    return Scores(loss, best, err, rscc, shells, pred)


def section_samples(v: PhaseVolumes, n: int) -> list[int]:
    """The first n samples of each test split (one per crystal where it has enough crystals)."""
    out = []
    for split in ("test_seen", "test_unseen"):
        idx = v.select(split)
        seen = set()
        for i in idx:
            if v.crystal[i] not in seen and len([j for j in out if v.split[j] == v.split[i]]) < n:
                out.append(int(i))
                seen.add(v.crystal[i])
    return out


def _sem(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def tables(v: PhaseVolumes, scores: dict[str, Scores], edges: np.ndarray):
    """The loss table (model x split), the shell table (model x test split x shell) and the per-sample table."""
    import pandas as pd

    rows, shell_rows, sample_rows = [], [], []
    for name, s in scores.items():
        for k, split in enumerate(SPLITS):
            idx = np.flatnonzero(v.split == k)
            if len(idx) == 0:
                continue
            # The U-Net's loss less this model's on the same samples (negative: the U-Net is better), with its
            # standard error: paired, so the spread between samples drops out.
            diff = scores[UNET].loss[idx] - s.loss[idx] if UNET in scores else np.full(len(idx), np.nan)
            rows.append({"model": name, "split": split, "samples": len(idx), "loss": s.loss[idx].mean(),
                         "loss_sem": _sem(s.loss[idx]), "phase_error_deg": s.phase_error_deg[idx].mean(),
                         "rscc_median": np.median(s.rscc[idx]), "rscc_mean": s.rscc[idx].mean(),
                         "unet_minus_this": diff.mean(), "unet_minus_this_sem": _sem(diff)})
            if split.startswith("test"):
                for j in range(len(edges) - 1):
                    shell_rows.append({"model": name, "split": split, "shell": j, "inv_d_low": edges[j],
                                       "inv_d_high": edges[j + 1],
                                       "phase_error_deg": np.nanmean(s.shell_error_deg[idx, j])})
        for i in range(len(v.amplitude)):
            sample_rows.append({"model": name, "sample": i, "crystal": v.crystals[v.crystal[i]]["name"],
                                "split": SPLITS[v.split[i]], "loss": s.loss[i],
                                "phase_error_deg": s.phase_error_deg[i], "rscc": s.rscc[i]})
    return pd.DataFrame(rows), pd.DataFrame(shell_rows), pd.DataFrame(sample_rows)


def sections_of(v: PhaseVolumes, scores: dict[str, Scores], eq: Equivalents, samples: list[int], map_grid: int) -> dict:
    """Central sections (z = 0) of each chosen sample's map with the true phases and with each model's, the
    prediction moved back from the equivalent origin and hand it chose to the dataset's."""
    out = {"samples": np.array(samples), "truth": []}
    for name in scores:
        out[name] = []
    for i in samples:
        c = v.crystal[i]
        m = v.measurable[c]
        a = v.amplitude[i].astype(np.float64)
        out["truth"].append(density_map(a, v.phase_rad[i].astype(np.float64), v.hkl, m, map_grid)[:, :, 0])
        for name, s in scores.items():
            g = s.best[i]
            back = eq.sign[c, g] * (s.prediction[i] + eq.offset[c, g])
            out[name].append(density_map(a, back, v.hkl, m, map_grid)[:, :, 0])
    return {k: np.array(val) for k, val in out.items()}


def run_evaluation(dataset, models: list[tuple[str, str]], settings, seed: int, *, table, shells, samples, sections,
                   log=None):
    """Score every (card, weights) model and the references; write the tables and the sections."""
    from ..formats.phase_sections import write_sections
    from ..formats.phase_volumes import read_phase_volumes
    from ..io import atomic_path
    from .train import load_model

    v = read_phase_volumes(dataset)
    eq = Equivalents(v)
    edges = shell_edges(v, settings.shells)
    scores = {r: score(reference_outputs(r, v, seed), v, eq, edges, settings.map_grid) for r in REFERENCES}
    for card, weights in models:
        model, entry = load_model(card, weights)
        scores[entry["model"]] = score(predict(model, v), v, eq, edges, settings.map_grid)
    tab, sh, per = tables(v, scores, edges)
    for frame, path in ((tab, table), (sh, shells), (per, samples)):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    chosen = section_samples(v, settings.map_samples)
    write_sections(sections, sections_of(v, scores, eq, chosen, settings.map_grid),
                   [v.crystals[v.crystal[i]]["name"] for i in chosen], [SPLITS[v.split[i]] for i in chosen])
    if log:
        for r in tab.itertuples():
            log.info("%-14s %-11s %5d samples: loss %.4f +- %.4f, phase error %.1f deg, RSCC median %.3f", r.model,
                     r.split, r.samples, r.loss, r.loss_sem, r.phase_error_deg, r.rscc_median)
        for split in ("test_seen", "test_unseen"):
            t = tab[tab.split == split].set_index("model")
            if UNET in t.index and len(t) > 1:
                others = t.drop(UNET)
                best = others.loss.idxmin()
                verdict = "beats" if (t.loss[UNET] < others.loss).all() else "does not beat"
                log.info("%s: the U-Net (loss %.4f) %s every other model; the best other, %s (%.4f), is %.4f +- %.4f "
                         "worse on the same samples", split, t.loss[UNET], verdict, best, others.loss[best],
                         -others.unet_minus_this[best], others.unet_minus_this_sem[best])
    return tab
