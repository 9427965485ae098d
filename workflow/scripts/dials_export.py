"""Run with DIALS' Python (libtbx.python): stills_process outputs of one shard -> one .npz of plain arrays.

usage: libtbx.python dials_export.py <stills_process output dir> <n frames> <out.npz> [<input list>]
Frames are identified by their 0-based index in the input: without <input list>, the index within the input
file (imageset.indices()[0]; one multi-frame input file). <input list> is a text file naming the input files
given to dials.stills_process in order, one a line (several CBFs, one frame each, or several multi-frame
files): a frame's number is then the frame counts (from dxtbx) of the files before its own plus its index
within its file; paths are matched by realpath.

Per frame: n_strong, indexed, a_matrix (A = UB, lab frame, 1/A, row-major), cell, n_indexed, n_integrated,
rmsd_px, and the geometry DIALS used (imported.expt of every frame, integrated.expt where indexed; NaN where
absent): s0 (n, 3) 1/A, panel_origin_mm / panel_fast_axis / panel_slow_axis (n, P, 3), panel_pixel_size_mm
(n, P, 2) (fast, slow), panel_image_size (n, P, 2) (fast, slow), P = panels of the first experiment found;
panel_parallax_mu_per_mm, panel_parallax_t0_mm (n, P): the parallax correction DIALS' pixel coordinates include
(dxtbx ParallaxCorrectedPxMmStrategy; 0 where none, NaN where unknown): a point (x, y) mm on a panel is pixel
((x, y) + (u.fast, u.slow) o) / pixel_size, u the unit ray to it, o = 1/mu - (t0/cos + 1/mu) exp(-mu t0/cos),
cos = u.normal (CSPAD: ~0.5 px).
Per integrated reflection: refl_frame, refl_h/k/l, refl_x_obs/y_obs, refl_x_cal/y_cal (DIALS pixel coordinates
on refl_panel), refl_intensity, refl_variance, refl_partiality, refl_d, refl_panel, refl_i_over_sigma.
Per strong spot: strong_frame, strong_panel, strong_x, strong_y (xyzobs.px.value).
"""

import glob
import json
import os
import sys

import numpy as np
from dials.array_family import flex
from dxtbx.model.experiment_list import ExperimentListFactory

if len(sys.argv) not in (4, 5):
    sys.exit("usage: libtbx.python dials_export.py <stills_process output dir> <n frames> <out.npz> [<input list>]")
out_dir, n_frames, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
list_path = sys.argv[4] if len(sys.argv) == 5 else None


def frame_count(path):
    """Frames dxtbx reads from one file (1 for single-image formats such as CBF)."""
    from dxtbx.format.FormatMultiImage import FormatMultiImage
    from dxtbx.format.Registry import get_format_class_for_file

    format_class = get_format_class_for_file(path)
    if format_class is None:
        sys.exit(f"dials_export.py: {path} (from {list_path}): dxtbx recognises no image format in it")
    if not issubclass(format_class, FormatMultiImage):
        return 1
    return int(format_class.get_instance(path).get_num_images())


def file_offsets(path):
    """realpath of each listed input file -> number of the file's first frame."""
    with open(path) as f:
        inputs = [line.strip() for line in f if line.strip()]
    if not inputs:
        sys.exit(f"dials_export.py: {path} lists no input files")
    offsets, start = {}, 0
    for name in inputs:
        real = os.path.realpath(name)
        if real in offsets:
            sys.exit(f"dials_export.py: {name} is listed twice in {path}")
        offsets[real] = start
        start += frame_count(name) if len(inputs) > 1 else 0  # one file: its frames need no offset
    if len(inputs) > 1 and start != n_frames:
        sys.exit(f"dials_export.py: the files in {path} hold {start} frames, {n_frames} expected")
    return offsets


offsets = file_offsets(list_path) if list_path is not None else None


def index_in_file(expt):
    return int(expt.imageset.indices()[0]) if hasattr(expt.imageset, "indices") else 0


def frame_of(expt):
    if offsets is None:
        f = index_in_file(expt)
    else:
        imageset = expt.imageset
        path = imageset.get_path(0)
        # One file per image (a CBF list as one imageset): indices run over the files, each holds frame 0.
        within = 0 if len(set(imageset.paths())) > 1 else index_in_file(expt)
        real = os.path.realpath(path)
        if real not in offsets:
            sys.exit(f"dials_export.py: DIALS processed {path}, which {list_path} does not list")
        f = offsets[real] + within
    if not 0 <= f < n_frames:
        sys.exit(f"dials_export.py: frame {f} of {expt.imageset.get_path(0)} is outside 0..{n_frames - 1}")
    return f


GEOMETRY_SHAPES = {"s0": (3,), "panel_origin_mm": (None, 3), "panel_fast_axis": (None, 3),
                   "panel_slow_axis": (None, 3), "panel_pixel_size_mm": (None, 2), "panel_image_size": (None, 2),
                   "panel_parallax_mu_per_mm": (None,), "panel_parallax_t0_mm": (None,)}
geometry = {}
n_panels = None
format_detectors = {}  # (realpath, index in file) -> the detector dxtbx's format class makes


def load_experiments(path):
    """Experiments of a .expt file, and per experiment whether its JSON lost a parallax correction: formats
    such as FormatCBFCspad set ParallaxCorrectedPxMmStrategy(mu, t0) without the panel's mu and thickness,
    which the JSON keeps only as the strategy's name (read back as SimplePxMmStrategy)."""
    experiments = ExperimentListFactory.from_json_file(path, check_format=False)
    with open(path) as f:
        doc = json.load(f)
    lost = []
    for i, expt in enumerate(experiments):
        try:
            panels = doc["detector"][doc["experiment"][i]["detector"]]["panels"]
            named = [p.get("px_mm_strategy", {}).get("type", "") for p in panels]
        except (KeyError, IndexError, TypeError):
            named = []
        lost.append(expt.detector is not None and any(
            "Parallax" in name and not hasattr(panel.get_px_mm_strategy(), "mu")
            for name, panel in zip(named, expt.detector)))
    return experiments, lost


def format_detector(expt):
    """The detector as dxtbx's format class reads it from the experiment's image file (None if it cannot)."""
    key = (os.path.realpath(expt.imageset.get_path(0)), index_in_file(expt))
    if key not in format_detectors:
        from dxtbx.format.FormatMultiImage import FormatMultiImage
        from dxtbx.format.Registry import get_format_class_for_file

        try:
            format_class = get_format_class_for_file(key[0])
            instance = format_class.get_instance(key[0])
            multi = issubclass(format_class, FormatMultiImage)
            format_detectors[key] = instance.get_detector(key[1]) if multi else instance.get_detector()
        except Exception as exc:  # moved or unreadable input: the parallax parameters stay unknown (NaN)
            print(f"dials_export.py: parallax correction of {key[0]} unknown: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            format_detectors[key] = None
    return format_detectors[key]


def parallax(panel):
    """(mu 1/mm, t0 mm) of a panel's parallax correction; (0, 0) without one."""
    strategy = panel.get_px_mm_strategy()
    return (strategy.mu(), strategy.t0()) if hasattr(strategy, "mu") else (0.0, 0.0)


def store_geometry(f, expt, parallax_lost):
    """The beam and panels of experiment ``expt`` as frame ``f``'s geometry."""
    global n_panels
    if expt.beam is None or expt.detector is None:
        return
    if n_panels is None:
        n_panels = len(expt.detector)
        for key, shape in GEOMETRY_SHAPES.items():
            geometry[key] = np.full((n_frames,) + tuple(n_panels if k is None else k for k in shape), np.nan)
    geometry["s0"][f] = expt.beam.get_s0()
    panels = list(expt.detector)[:n_panels]
    for p, panel in enumerate(panels):
        geometry["panel_origin_mm"][f, p] = panel.get_origin()
        geometry["panel_fast_axis"][f, p] = panel.get_fast_axis()
        geometry["panel_slow_axis"][f, p] = panel.get_slow_axis()
        geometry["panel_pixel_size_mm"][f, p] = panel.get_pixel_size()
        geometry["panel_image_size"][f, p] = panel.get_image_size()
    source = format_detector(expt) if parallax_lost else expt.detector
    if source is not None and len(source) == len(expt.detector):
        mu_t0 = np.array([parallax(panel) for panel in list(source)[:n_panels]])
        geometry["panel_parallax_mu_per_mm"][f, :len(mu_t0)] = mu_t0[:, 0]
        geometry["panel_parallax_t0_mm"][f, :len(mu_t0)] = mu_t0[:, 1]


n_strong = np.zeros(n_frames, np.int64)
strong_cols = {k: [] for k in ("frame", "panel", "x", "y")}
for expt_path in sorted(glob.glob(os.path.join(out_dir, "*_imported.expt"))):
    experiments, lost = load_experiments(expt_path)
    for expt, parallax_lost in zip(experiments, lost):
        store_geometry(frame_of(expt), expt, parallax_lost)
    strong_path = expt_path.replace("_imported.expt", "_strong.refl")
    if not os.path.exists(strong_path):
        continue
    strong = flex.reflection_table.from_file(strong_path)
    ids = np.array(strong["id"])
    xy = np.array(strong["xyzobs.px.value"]).reshape(-1, 3)[:, :2]
    panel = np.array(strong["panel"]).astype(np.int64)
    for i, expt in enumerate(experiments):
        f = frame_of(expt)
        sel = ids == i
        n_strong[f] += int(sel.sum())
        strong_cols["frame"].append(np.full(int(sel.sum()), f, np.int64))
        strong_cols["panel"].append(panel[sel])
        strong_cols["x"].append(xy[sel, 0])
        strong_cols["y"].append(xy[sel, 1])

indexed = np.zeros(n_frames, bool)
a_matrix = np.full((n_frames, 9), np.nan)
cell = np.full((n_frames, 6), np.nan)
n_indexed = np.zeros(n_frames, np.int64)
n_integrated = np.zeros(n_frames, np.int64)
rmsd_px = np.full(n_frames, np.nan)
cols = {k: [] for k in ("frame", "h", "k", "l", "x_obs", "y_obs", "x_cal", "y_cal", "intensity", "variance",
                        "partiality", "d", "panel", "i_over_sigma")}
for expt_path in sorted(glob.glob(os.path.join(out_dir, "*_integrated.expt"))):
    experiments, lost = load_experiments(expt_path)
    table = flex.reflection_table.from_file(expt_path.replace("_integrated.expt", "_integrated.refl"))
    idx_path = expt_path.replace("_integrated.expt", "_indexed.refl")
    indexed_table = flex.reflection_table.from_file(idx_path) if os.path.exists(idx_path) else None
    ids = np.array(table["id"])
    for i, expt in enumerate(experiments):
        f = frame_of(expt)
        indexed[f] = True
        store_geometry(f, expt, lost[i])  # beam and detector are fixed in stills refinement: normally as imported
        a_matrix[f] = np.array(expt.crystal.get_A())
        cell[f] = np.array(expt.crystal.get_unit_cell().parameters())
        sel = ids == i
        n_integrated[f] = int(sel.sum())
        if indexed_table is not None:
            n_indexed[f] = int((np.array(indexed_table["id"]) == i).sum())
        if sel.any():
            sub = table.select(flex.bool(sel.tolist()))
            obs = np.array(sub["xyzobs.px.value"]).reshape(-1, 3)[:, :2]
            cal = np.array(sub["xyzcal.px"]).reshape(-1, 3)[:, :2]
            hkl = np.array(sub["miller_index"]).reshape(-1, 3)
            cols["frame"].append(np.full(len(hkl), f))
            for j, c in enumerate("hkl"):
                cols[c].append(hkl[:, j])
            cols["x_obs"].append(obs[:, 0])
            cols["y_obs"].append(obs[:, 1])
            cols["x_cal"].append(cal[:, 0])
            cols["y_cal"].append(cal[:, 1])
            intensity = np.array(sub["intensity.sum.value"])
            variance = np.array(sub["intensity.sum.variance"])
            cols["intensity"].append(intensity)
            cols["variance"].append(variance)
            cols["partiality"].append(np.array(sub["partiality"]) if "partiality" in sub else np.full(len(hkl), np.nan))
            cols["d"].append(np.array(sub["d"]))
            cols["panel"].append(np.array(sub["panel"]).astype(np.int64))
            positive = variance > 0
            sigma = np.sqrt(np.where(positive, variance, 1.0))
            cols["i_over_sigma"].append(np.where(positive, intensity / sigma, np.nan))
            good = np.isfinite(obs).all(axis=1) & (obs[:, 0] > 0)
            if good.any():
                rmsd_px[f] = float(np.sqrt(np.mean(np.sum((obs[good] - cal[good]) ** 2, axis=1))))

arrays = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.items()}
if not cols["panel"]:
    arrays["panel"] = np.zeros(0, np.int64)
strong_dtypes = {"frame": np.int64, "panel": np.int64, "x": float, "y": float}
strong_arrays = {"strong_" + k: (np.concatenate(v) if v else np.zeros(0, strong_dtypes[k]))
                 for k, v in strong_cols.items()}
if n_panels is None:  # no experiment at all: no panel count either
    geometry = {key: np.full((n_frames,) + tuple(0 if k is None else k for k in shape), np.nan)
                for key, shape in GEOMETRY_SHAPES.items()}
np.savez(out_path, n_strong=n_strong, indexed=indexed, a_matrix=a_matrix, cell=cell, n_indexed=n_indexed,
         n_integrated=n_integrated, rmsd_px=rmsd_px, **{"refl_" + k: v for k, v in arrays.items()},
         **strong_arrays, **geometry)
