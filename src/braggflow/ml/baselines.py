"""Conventional baselines: a spot finder in the style of DIALS' dispersion algorithm and a scikit-learn
classifier of photon energy and camera length on azimuthally averaged profiles.

pyFAI's peakfinder8 (``pyFAI.opencl.peak_finder``) runs on OpenCL only, and no OpenCL runtime is part of this
environment, so the dispersion threshold (Parkhurst et al. 2014, DIALS ``spotfinder.threshold.algorithm=
dispersion``) is implemented here in NumPy / SciPy: a pixel is strong where, in its (2k+1)^2 neighbourhood of
trusted pixels, the index of dispersion var / mean exceeds 1 + sigma_background sqrt(2 / (n - 1)) (the
neighbourhood is not flat Poisson noise) and the pixel exceeds mean + sigma_strong sqrt(mean) (gain 1).
Strong pixels form spots by 8-connectivity; spots smaller than min_spot_px are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class DispersionSettings:
    kernel_half_px: int = 3  # DIALS kernel_size 3,3 = 7x7 pixels
    sigma_background: float = 6.0
    sigma_strong: float = 3.0
    min_local: int = 2
    min_spot_px: int = 2


def local_statistics(counts: np.ndarray, kernel_half_px: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, mean, variance) over trusted pixels (counts >= 0) of each pixel's square neighbourhood."""
    trusted = (counts >= 0).astype(np.float64)
    c = np.where(counts >= 0, counts, 0).astype(np.float64)
    size = 2 * kernel_half_px + 1
    area = size * size

    def box_sum(a):
        return ndimage.uniform_filter(a, size=size, mode="constant") * area

    n = np.rint(box_sum(trusted))
    s1, s2 = box_sum(c), box_sum(c * c)
    mean = s1 / np.maximum(n, 1)
    var = (s2 - s1 * s1 / np.maximum(n, 1)) / np.maximum(n - 1, 1)
    return n, mean, np.maximum(var, 0.0)


def dispersion_mask(counts: np.ndarray, s: DispersionSettings, stats=None) -> np.ndarray:
    n, mean, var = stats if stats is not None else local_statistics(counts, s.kernel_half_px)
    ok = (counts >= 0) & (n >= s.min_local + 1) & (mean > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        structured = var / mean > 1.0 + s.sigma_background * np.sqrt(2.0 / np.maximum(n - 1, 1))
        strong = counts > mean + s.sigma_strong * np.sqrt(mean)
    return ok & structured & strong


MERGE_PX = 1


def _grown(mask: np.ndarray, merge_px: int) -> np.ndarray:
    """``ndimage.binary_dilation(mask, ones((3, 3)), iterations=merge_px)`` by shifted ORs along each axis:
    the same pixels, several times faster on a 4M frame."""
    grown = mask
    for _ in range(merge_px):
        rows = grown.copy()
        rows[:, 1:] |= grown[:, :-1]
        rows[:, :-1] |= grown[:, 1:]
        grown = rows.copy()
        grown[1:] |= rows[:-1]
        grown[:-1] |= rows[1:]
    return grown


def spots_from_mask(mask: np.ndarray, weights: np.ndarray, min_spot_px: int = 1,
                    merge_px: int = MERGE_PX) -> np.ndarray:
    """(n, 2) spot centroids (x = fast, y = slow) in DIALS continuous pixels (+0.5: pixel centres) of the
    8-connected regions of ``mask`` with at least ``min_spot_px`` pixels, weighted by ``weights``.
    Regions closer than 2 merge_px + 1 pixels are one spot: a reflection's fragments (and its lattice-transform
    side maxima right beside it) give one position, not several. The sums run over the mask's pixels only, in
    row-major order (as ``ndimage.sum_labels`` sums them: the same bits)."""
    labels, n = ndimage.label(_grown(mask, merge_px), structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros((0, 2))
    yy, xx = np.nonzero(mask)
    lab = labels[yy, xx]
    w = np.maximum(weights[yy, xx], 0).astype(np.float64) + 1e-6
    sizes = np.bincount(lab, minlength=n + 1)[1:]
    total = np.bincount(lab, w, n + 1)[1:]
    cx = np.bincount(lab, w * xx, n + 1)[1:] / total + 0.5
    cy = np.bincount(lab, w * yy, n + 1)[1:] / total + 0.5
    keep = sizes >= min_spot_px
    return np.stack([cx[keep], cy[keep]], axis=1)


def spots_from_probability(prob: np.ndarray, counts: np.ndarray, threshold: float, min_spot_px: int) -> np.ndarray:
    """A peak finder's spots: connected regions of probability > threshold, centroids weighted by counts (DIALS
    continuous px). NumPy only, so the evaluator reads predictions without importing torch."""
    return spots_from_mask((prob > threshold) & (counts >= 0), counts, min_spot_px)


def find_spots(counts: np.ndarray, s: DispersionSettings, stats=None) -> np.ndarray:
    return spots_from_mask(dispersion_mask(counts, s, stats), counts, s.min_spot_px)


def tune_dispersion(frames: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], base: DispersionSettings,
                    sigma_strong_grid: Sequence[float], min_spot_grid: Sequence[int],
                    radius_px: float, min_recall: float | None = None) -> tuple[DispersionSettings, list[dict]]:
    """Pick sigma_strong and min_spot_px maximising F1 over (counts, visible xy, other truth xy[, unlisted-signal
    mask]) frames, or the most precise pair reaching ``min_recall`` (``metrics.select_setting``, the CNN's rule):
    the baseline is tuned on frames it is not scored on, as the CNN's spot extraction is.
    Returns the settings and the whole grid's scores."""
    from .metrics import PeakCounts, frame_peak_counts, peak_scores, select_setting

    stats = [local_statistics(f[0], base.kernel_half_px) for f in frames]
    grid = []
    for sigma in sigma_strong_grid:
        for min_px in min_spot_grid:
            s = DispersionSettings(base.kernel_half_px, base.sigma_background, float(sigma), base.min_local,
                                   int(min_px))
            total = PeakCounts()
            for (counts, vis, other, *unlisted), st in zip(frames, stats):
                total.add(frame_peak_counts(find_spots(counts, s, st), vis, radius_px, other, *unlisted))
            grid.append({"sigma_strong": float(sigma), "min_spot_px": int(min_px), **peak_scores(total)})
    best = select_setting(grid, min_recall, lambda g: (-g["sigma_strong"], -g["min_spot_px"]))
    return DispersionSettings(base.kernel_half_px, base.sigma_background, best["sigma_strong"], base.min_local,
                              best["min_spot_px"]), grid


def tune_hit_threshold(n_spots: Sequence[int], hits: Sequence[int]) -> int:
    """Smallest spot count that calls a hit with the best accuracy on the given frames."""
    n_spots, hits = np.asarray(n_spots), np.asarray(hits)
    candidates = sorted({1, *(int(v) + 1 for v in n_spots)})
    return max(candidates, key=lambda t: ((n_spots >= t).astype(int) == hits).mean() - 1e-9 * t)


def fit_profile_classifier(profiles: np.ndarray, labels: np.ndarray, seed: int):
    """StandardScaler + multinomial logistic regression on azimuthally averaged log profiles (a constant answer
    where the matrix has a single class, e.g. one camera length)."""
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(labels)) < 2:
        return DummyClassifier(strategy="most_frequent").fit(profiles, labels)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000, random_state=seed))
    return model.fit(profiles, labels)
