"""The DIALS export (``results/dials/.../export.npz``, ``results/experiments/{experiment}/dials/export.npz``): what
``workflow/scripts/dials_export.py`` (run by DIALS' Python) keeps of one dials.stills_process output, as plain
NumPy arrays in one .npz, so the rest of braggflow reads DIALS' results without DIALS.

Per frame (n rows): n_strong, indexed, a_matrix (A = UB, lab frame, 1/A, row-major 9), cell (6), n_indexed,
n_integrated, rmsd_px, and the geometry DIALS used (NaN where absent): s0 (n, 3) 1/A, panel_origin_mm /
panel_fast_axis / panel_slow_axis (n, P, 3), panel_pixel_size_mm (n, P, 2) (fast, slow), panel_image_size (n, P, 2)
(fast, slow), panel_parallax_mu_per_mm, panel_parallax_t0_mm (n, P): dxtbx's parallax correction (0 where none).
Per integrated reflection: ``refl_`` + REFLECTION_COLUMNS (DIALS pixel coordinates on refl_panel).
Per strong spot: ``strong_`` + STRONG_COLUMNS (xyzobs.px.value).

NumPy and the standard library only: DIALS' Python imports this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import atomic_path

GEOMETRY_SHAPES = {"s0": (3,), "panel_origin_mm": (None, 3), "panel_fast_axis": (None, 3),
                   "panel_slow_axis": (None, 3), "panel_pixel_size_mm": (None, 2), "panel_image_size": (None, 2),
                   "panel_parallax_mu_per_mm": (None,), "panel_parallax_t0_mm": (None,)}
FRAME_KEYS = ("n_strong", "indexed", "a_matrix", "cell", "n_indexed", "n_integrated", "rmsd_px", *GEOMETRY_SHAPES)
REFLECTION_COLUMNS = ("frame", "h", "k", "l", "x_obs", "y_obs", "x_cal", "y_cal", "intensity", "variance",
                      "partiality", "d", "panel", "i_over_sigma")
STRONG_COLUMNS = {"frame": np.int64, "panel": np.int64, "x": float, "y": float}
KEYS = (*FRAME_KEYS, *("refl_" + c for c in REFLECTION_COLUMNS), *("strong_" + c for c in STRONG_COLUMNS))


def _check(arrays, where, n_frames: int | None = None) -> None:
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise InputError(where, f"DIALS export lacks {missing}")
    n = len(arrays["indexed"])
    short = [k for k in FRAME_KEYS if len(arrays[k]) != n]
    if short:
        raise InputError(where, f"DIALS export per-frame arrays {short} do not have {n} rows")
    if n_frames is not None and n != n_frames:
        raise InputError(where, f"{n} frames exported; {n_frames} expected")


def write_dials_export(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """The arrays (every key of KEYS, in that order) as one .npz at ``path``, atomically. np.savez writes to an
    open file: given a path it would add ".npz" to the temporary file's name."""
    _check(arrays, path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{k: np.asarray(arrays[k]) for k in KEYS})


def read_dials_export(path: str | Path, n_frames: int | None = None) -> dict[str, np.ndarray]:
    """Every array of an export (checked: all keys present, per-frame arrays of one length, ``n_frames`` rows
    where given)."""
    try:
        with np.load(path) as ex:
            arrays = {k: ex[k] for k in ex.files}
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable DIALS export: {exc}") from None
    _check(arrays, path, n_frames)
    return arrays
