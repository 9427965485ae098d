"""Summaries of the evaluation: per (experiment, model, finder, reference), per resolution bin, ranked."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def _medians(off: pd.DataFrame) -> dict[str, float]:
    if not len(off):
        return {"rmsd_px": np.nan, "median_offset_px": np.nan, "median_radial_px": np.nan,
                "median_transverse_px": np.nan}
    return {"rmsd_px": float(np.sqrt(np.mean(off.offset_px.astype(float) ** 2))),
            "median_offset_px": float(off.offset_px.median()), "median_radial_px": float(off.radial_px.median()),
            "median_transverse_px": float(off.transverse_px.median())}


SUMMARY_KEYS = ["experiment", "model", "finder", "reference"]


def summarize(frames: pd.DataFrame, offsets: pd.DataFrame) -> pd.DataFrame:
    """One row per (experiment, model, finder, reference): precision, recall, F1, spurious peaks per frame,
    RMSD and median offsets of the matched peaks."""
    rows = []
    for key, g in frames.groupby(SUMMARY_KEYS, sort=False):
        tp, fn, spurious, found = int(g.tp.sum()), int(g.fn.sum()), int(g.spurious.sum()), int(g.n_found.sum())
        precision = tp / (tp + spurious) if tp + spurious else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        sel = offsets
        for k, v in zip(SUMMARY_KEYS, key):
            sel = sel[sel[k] == v]
        rows.append({**dict(zip(SUMMARY_KEYS, key)), "frames": int(g.frame.nunique()), "n_found": found,
                     "n_reference": int(g.n_reference.sum()), "tp": tp, "fn": fn, "spurious": spurious,
                     "precision": precision, "recall": recall, "f1": f1,
                     "spurious_per_frame": spurious / max(g.frame.nunique(), 1), **_medians(sel),
                     # frames the finder's model extrapolates on (ml.ood): its figures there are not a model's
                     "out_of_distribution_frames": int(g.loc[g.out_of_distribution.astype(bool), "frame"].nunique())
                     if "out_of_distribution" in g else 0,
                     "geometry_source": ",".join(sorted({str(v) for v in g.geometry_source.dropna()}))})
    return pd.DataFrame(rows)


def resolution_edges(d_angstrom: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin edges in 1/d (ascending) of equal reciprocal-space volume between the lowest and highest 1/d."""
    s = 1.0 / np.asarray(d_angstrom, float)
    s = s[np.isfinite(s)]
    if not len(s):
        return np.array([0.0, 1.0])
    lo, hi = float(s.min()), float(s.max()) * (1 + 1e-9)
    return np.cbrt(np.linspace(lo**3, hi**3, n_bins + 1))


def offsets_by_resolution(offsets: pd.DataFrame, n_bins: int) -> pd.DataFrame:
    """Median offsets per resolution bin, per (experiment, model, finder, reference); the bins are shared by every
    model and finder of an (experiment, reference), so their rows compare bin by bin."""
    rows = []
    for (exp, ref), g in offsets.groupby(["experiment", "reference"], sort=False):
        edges = resolution_edges(g.d_angstrom.to_numpy(), n_bins)
        b = np.clip(np.searchsorted(edges, 1.0 / g.d_angstrom.to_numpy(float), side="right") - 1, 0, n_bins - 1)
        g = g.assign(bin=b)
        for (model, finder), h in g.groupby(["model", "finder"], sort=False):
            for k in range(n_bins):
                sel = h[h.bin == k]
                rows.append({"experiment": exp, "reference": ref, "model": model, "finder": finder, "bin": k,
                             "d_max_angstrom": 1.0 / edges[k] if edges[k] > 0 else np.inf,
                             "d_min_angstrom": 1.0 / edges[k + 1], "n": len(sel), **_medians(sel)})
    return pd.DataFrame(rows)


def rank_models(summary: pd.DataFrame) -> pd.DataFrame:
    """Rank every (model, finder) per (experiment, reference) by F1 (then recall, then fewer spurious peaks)."""
    out = summary.sort_values(["experiment", "reference", "f1", "recall", "spurious_per_frame"],
                              ascending=[True, True, False, False, True]).copy()
    out["rank"] = out.groupby(["experiment", "reference"]).cumcount() + 1
    return out.reset_index(drop=True)


def read_tables(paths: Sequence[str]) -> pd.DataFrame:
    frames = [pd.read_csv(p, sep="\t") for p in paths]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
