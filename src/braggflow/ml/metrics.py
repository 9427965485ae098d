"""Peak matching, precision / recall / F1, localization error, accuracies and confusion matrices.

Positions are DIALS continuous pixel coordinates (x = fast, y = slow; pixel i spans [i, i+1)).
Matching is one-to-one (Hungarian assignment on distance, pairs farther than the radius never match), so two
predictions on one reflection count one true positive and one false positive.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree


def match_peaks(pred_xy: np.ndarray, true_xy: np.ndarray, radius_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (pred, true) of matched pairs within ``radius_px``, maximising matches then minimising distance."""
    pred_xy, true_xy = np.asarray(pred_xy, float).reshape(-1, 2), np.asarray(true_xy, float).reshape(-1, 2)
    if len(pred_xy) == 0 or len(true_xy) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    pairs = cKDTree(pred_xy).query_ball_tree(cKDTree(true_xy), radius_px)
    rows = [i for i, js in enumerate(pairs) if js]
    cols = sorted({j for js in pairs for j in js})
    if not rows:
        return np.zeros(0, int), np.zeros(0, int)
    col_pos = {j: k for k, j in enumerate(cols)}
    big = 1e6  # "no edge": larger than any radius, so a real pair always beats it
    cost = np.full((len(rows), len(cols)), big)
    for a, i in enumerate(rows):
        for j in pairs[i]:
            cost[a, col_pos[j]] = np.hypot(*(pred_xy[i] - true_xy[j]))
    # Maximum matching first: every real pair costs less than any non-edge, and distances are below radius.
    r, c = linear_sum_assignment(np.where(cost < big, cost - 2 * radius_px * len(rows), big))
    keep = cost[r, c] < big
    return np.asarray(rows)[r[keep]], np.asarray(cols)[c[keep]]


@dataclass
class PeakCounts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    errors_px: list | None = None

    def add(self, other: "PeakCounts") -> None:
        self.tp, self.fp, self.fn = self.tp + other.tp, self.fp + other.fp, self.fn + other.fn
        self.errors_px = (self.errors_px or []) + (other.errors_px or [])


def frame_peak_counts(pred_xy: np.ndarray, true_xy: np.ndarray, radius_px: float,
                      ignore_xy: np.ndarray | None = None, ignore_mask: np.ndarray | None = None) -> PeakCounts:
    """TP / FP / FN of one frame. Unmatched predictions are neither rewarded nor penalised where they lie within
    ``radius_px`` of an ``ignore_xy`` point (true reflections too weak to be labelled visible) or on an
    ``ignore_mask`` pixel ((slow, fast) bool: Bragg signal that the truth table does not list)."""
    pred_xy = np.asarray(pred_xy, float).reshape(-1, 2)
    true_xy = np.asarray(true_xy, float).reshape(-1, 2)
    pi, ti = match_peaks(pred_xy, true_xy, radius_px)
    unmatched = np.setdiff1d(np.arange(len(pred_xy)), pi)
    if ignore_xy is not None and len(ignore_xy) and len(unmatched):
        d, _ = cKDTree(np.asarray(ignore_xy, float).reshape(-1, 2)).query(pred_xy[unmatched])
        unmatched = unmatched[d > radius_px]
    if ignore_mask is not None and len(unmatched):
        ix = np.clip(np.floor(pred_xy[unmatched, 0]).astype(int), 0, ignore_mask.shape[1] - 1)
        iy = np.clip(np.floor(pred_xy[unmatched, 1]).astype(int), 0, ignore_mask.shape[0] - 1)
        unmatched = unmatched[~ignore_mask[iy, ix]]
    errors = np.hypot(*(pred_xy[pi] - true_xy[ti]).T).tolist() if len(pi) else []
    return PeakCounts(tp=len(pi), fp=len(unmatched), fn=len(true_xy) - len(ti), errors_px=errors)


def unlisted_signal_mask(label: np.ndarray, truth_xy: np.ndarray, radius_px: float) -> np.ndarray:
    """Peak-label regions (grown by 1 px) with no truth reflection within ``radius_px``: Bragg signal the truth
    table does not list (the simulator lists reflections by partiality, so a strong reflection far from the Ewald
    sphere can light pixels without a row). A spot found there is not a false detection."""
    from scipy import ndimage

    grown = ndimage.binary_dilation(label, np.ones((3, 3), bool))
    regions, n = ndimage.label(grown, structure=np.ones((3, 3), bool))
    if n == 0:
        return grown
    listed = np.zeros(n + 1, bool)
    xy = np.asarray(truth_xy, float).reshape(-1, 2)
    if len(xy):
        r = int(np.ceil(radius_px))
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if dx * dx + dy * dy <= radius_px * radius_px:
                    x = np.clip(np.floor(xy[:, 0]).astype(int) + dx, 0, label.shape[1] - 1)
                    y = np.clip(np.floor(xy[:, 1]).astype(int) + dy, 0, label.shape[0] - 1)
                    listed[regions[y, x]] = True
    listed[0] = False
    return ~listed[regions] & grown


def peak_scores(c: PeakCounts) -> dict[str, float]:
    """precision, recall, F1 (0 where undefined), localization error median and 95th percentile (px)."""
    precision = c.tp / (c.tp + c.fp) if c.tp + c.fp else 0.0
    recall = c.tp / (c.tp + c.fn) if c.tp + c.fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    err = np.asarray(c.errors_px or [], float)
    return {"precision": precision, "recall": recall, "f1": f1, "tp": c.tp, "fp": c.fp, "fn": c.fn,
            "loc_error_median_px": float(np.median(err)) if len(err) else float("nan"),
            "loc_error_p95_px": float(np.percentile(err, 95)) if len(err) else float("nan")}


def select_setting(grid: Sequence[dict], min_recall: float | None, tie_break: Callable[[dict], tuple]) -> dict:
    """The tuned grid point: the best F1, or, given ``min_recall``, the most precise point whose recall reaches it
    (a target of the form "find >= x % with the fewest false peaks"); the best F1 where no point reaches it.
    ``tie_break`` orders equal scores (larger wins)."""
    if min_recall is not None:
        reach = [g for g in grid if g["recall"] >= min_recall]
        if reach:
            return max(reach, key=lambda g: (g["precision"], g["recall"], *tie_break(g)))
    return max(grid, key=lambda g: (g["f1"], *tie_break(g)))


def accuracy(pred: Sequence[int], true: Sequence[int]) -> float:
    pred, true = np.asarray(pred), np.asarray(true)
    return float((pred == true).mean()) if len(true) else float("nan")


def confusion_matrix(pred: Sequence[int], true: Sequence[int], n_classes: int) -> list[list[int]]:
    """Rows: true class, columns: predicted class."""
    m = np.zeros((n_classes, n_classes), int)
    np.add.at(m, (np.asarray(true, int), np.asarray(pred, int)), 1)
    return m.tolist()


def as_dict(c: PeakCounts) -> dict:
    return asdict(c)
