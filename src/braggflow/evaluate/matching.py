"""Found peaks against reference positions, panel by panel: one-to-one matches, spurious peaks, offsets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..detector import Detector
from ..formats.frames import FramesInfo


@dataclass
class Found:
    panel: np.ndarray  # (n,)
    xy: np.ndarray  # (n, 2) px


@dataclass
class Reference:
    panel: np.ndarray
    xy: np.ndarray
    d_angstrom: np.ndarray
    ignore_panel: np.ndarray  # positions where an unmatched peak is not counted against the finder
    ignore_xy: np.ndarray


def _empty_found() -> Found:
    return Found(np.zeros(0, int), np.zeros((0, 2)))


def offset_components(panels: Detector, panel: np.ndarray, found_xy: np.ndarray, ref_xy: np.ndarray,
                      beam_direction: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(overall, radial, transverse) offsets in px of found minus reference positions."""
    b = np.asarray(beam_direction, float) / np.linalg.norm(beam_direction)
    ref_lab, found_lab = panels.to_lab(panel, ref_xy), panels.to_lab(panel, found_xy)
    radial = ref_lab - np.outer(ref_lab @ b, b)
    radial /= np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), 1e-12)
    transverse = np.cross(b, radial)
    delta = found_lab - ref_lab
    px = panels.pixel_size_mm[np.asarray(panel, int)].mean(axis=1)
    return np.linalg.norm(delta, axis=1) / px, np.sum(delta * radial, axis=1) / px, \
        np.sum(delta * transverse, axis=1) / px


def match_by_panel(found: Found, ref_panel: np.ndarray, ref_xy: np.ndarray, radius_px: float):
    """Matched (found index, reference index) pairs, one-to-one within each panel."""
    from ..ml.metrics import match_peaks

    fi, ri = [], []
    for p in np.unique(np.concatenate([found.panel, ref_panel])) if len(found.panel) + len(ref_panel) else []:
        f_idx, r_idx = np.flatnonzero(found.panel == p), np.flatnonzero(ref_panel == p)
        a, b = match_peaks(found.xy[f_idx], ref_xy[r_idx], radius_px)
        fi.append(f_idx[a])
        ri.append(r_idx[b])
    cat = (lambda v: np.concatenate(v).astype(int) if v else np.zeros(0, int))
    return cat(fi), cat(ri)


def near_any(found: Found, panel: np.ndarray, xy: np.ndarray, radius_px: float) -> np.ndarray:
    """Which found peaks lie within radius of any of the given positions on their panel."""
    from scipy.spatial import cKDTree

    out = np.zeros(len(found.panel), bool)
    for p in np.unique(found.panel):
        sel, ref = found.panel == p, xy[panel == p]
        if len(ref):
            d, _ = cKDTree(ref).query(found.xy[sel])
            out[sel] = d <= radius_px
    return out


def score_frame(found: Found, ref: Reference, radius_px: float, info: FramesInfo, beam_direction: np.ndarray):
    """Counts and matched offsets of one frame: unmatched peaks near an ignore position are not spurious."""
    fi, ri = match_by_panel(found, ref.panel, ref.xy, radius_px)
    unmatched = np.setdiff1d(np.arange(len(found.panel)), fi)
    if len(unmatched) and len(ref.ignore_panel):
        rest = Found(found.panel[unmatched], found.xy[unmatched])
        unmatched = unmatched[~near_any(rest, ref.ignore_panel, ref.ignore_xy, radius_px)]
    counts = {"n_found": len(found.panel), "n_reference": len(ref.panel), "tp": len(fi),
              "fn": len(ref.panel) - len(ri), "spurious": len(unmatched)}
    if len(fi):
        total, radial, transverse = offset_components(info.panels, ref.panel[ri], found.xy[fi], ref.xy[ri],
                                                      beam_direction)
        offsets = pd.DataFrame({"d_angstrom": ref.d_angstrom[ri], "offset_px": total, "radial_px": radial,
                                "transverse_px": transverse})
    else:
        offsets = pd.DataFrame(columns=["d_angstrom", "offset_px", "radial_px", "transverse_px"], dtype=float)
    return counts, offsets
