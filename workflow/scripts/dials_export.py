"""Run with DIALS' Python (libtbx.python): stills_process outputs of one shard -> one .npz of plain arrays.

usage: libtbx.python dials_export.py <stills_process output dir> <n frames> <out.npz> [<input list>]

Reads <stills_process output dir>/*_imported.expt, *_strong.refl, *_integrated.expt, *_integrated.refl and
*_indexed.refl (dials.stills_process with composite_output), and the input image files where a parallax
correction must be read back (see below); writes <out.npz> atomically: a temporary file beside it
(.<name>.<host>.<pid>.<random>.tmp, braggflow.io.atomic_path) renamed onto it, removed on any failure or SIGTERM.

Frames are identified by their 0-based index in the input: without <input list>, the index within the input
file (imageset.indices()[0]; one multi-frame input file). <input list> is a text file naming the input files
given to dials.stills_process in order, one a line (several CBFs, one frame each, or several multi-frame
files): a frame's number is then the frame counts (from dxtbx) of the files before its own plus its index
within its file; paths are matched by realpath.

The arrays (per frame, per integrated reflection, per strong spot) are those of src/braggflow/formats/dials_export.py,
which writes them. The geometry is the one DIALS used: imported.expt of every frame, integrated.expt where indexed,
P = panels of the first experiment found. The parallax correction DIALS' pixel coordinates include (dxtbx
ParallaxCorrectedPxMmStrategy; 0 where none, NaN where unknown): a point (x, y) mm on a panel is pixel
((x, y) + (u.fast, u.slow) o) / pixel_size, u the unit ray to it, o = 1/mu - (t0/cos + 1/mu) exp(-mu t0/cos),
cos = u.normal (CSPAD: ~0.5 px).
"""

import argparse
import glob
import json
import os
import sys

import numpy as np
from dials.array_family import flex
from dxtbx.model.experiment_list import ExperimentListFactory

PROG = "dials_export.py"
USAGE = "libtbx.python dials_export.py <stills_process output dir> <n frames> <out.npz> [<input list>]"
# braggflow's src/ in the checkout this program belongs to (workflow/scripts/ -> ../../src): DIALS' Python need
# not have braggflow installed, and the modules used here (formats.dials_export, logs) need only NumPy and the
# standard library.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "src"))
from braggflow.formats.dials_export import (GEOMETRY_SHAPES, REFLECTION_COLUMNS,  # noqa: E402
                                            STRONG_COLUMNS, write_dials_export)
from braggflow.cli import nonnegative_int  # noqa: E402
from braggflow.logs import sigterm_exits  # noqa: E402


def parse_args(args=None):
    """The command line (``args``, default sys.argv[1:]) as an argparse namespace: out_dir, n_frames, out_path,
    list_path (None without <input list>). Exits with a message naming the argument where one is wrong."""
    parser = argparse.ArgumentParser(prog=PROG, usage=USAGE, allow_abbrev=False,
                                     description="dials.stills_process outputs of one shard -> one .npz of "
                                                 "plain arrays (see the program's docstring).")
    parser.add_argument("out_dir", help="dials.stills_process output directory (output.output_dir)")
    parser.add_argument("n_frames", type=nonnegative_int, help="frames given to dials.stills_process")
    parser.add_argument("out_path", help="the .npz to write")
    parser.add_argument("list_path", nargs="?", default=None,
                        help="text file naming the input files given to dials.stills_process, in order")
    options = parser.parse_args(args)
    if not os.path.isdir(options.out_dir):
        parser.error(f"argument out_dir: {options.out_dir}: no such directory")
    if options.list_path is not None and not os.path.isfile(options.list_path):
        parser.error(f"argument list_path: {options.list_path}: no such file")
    if os.path.isdir(options.out_path):
        parser.error(f"argument out_path: {options.out_path} is a directory")
    return options


def frame_count(path, list_path):
    """Frames dxtbx reads from one file (1 for single-image formats such as CBF)."""
    from dxtbx.format.FormatMultiImage import FormatMultiImage
    from dxtbx.format.Registry import get_format_class_for_file

    format_class = get_format_class_for_file(path)
    if format_class is None:
        sys.exit(f"{PROG}: {path} (from {list_path}): dxtbx recognises no image format in it")
    if not issubclass(format_class, FormatMultiImage):
        return 1
    return int(format_class.get_instance(path).get_num_images())


def file_offsets(path, n_frames):
    """realpath of each input file listed in ``path`` -> number of the file's first frame."""
    with open(path) as f:
        inputs = [line.strip() for line in f if line.strip()]
    if not inputs:
        sys.exit(f"{PROG}: {path} lists no input files")
    offsets, start = {}, 0
    for name in inputs:
        real = os.path.realpath(name)
        if real in offsets:
            sys.exit(f"{PROG}: {name} is listed twice in {path}")
        offsets[real] = start
        start += frame_count(name, path) if len(inputs) > 1 else 0  # one file: its frames need no offset
    if len(inputs) > 1 and start != n_frames:
        sys.exit(f"{PROG}: the files in {path} hold {start} frames, {n_frames} expected")
    return offsets


def index_in_file(expt):
    """The experiment's image's index within its file (0 for an imageset without indices)."""
    return int(expt.imageset.indices()[0]) if hasattr(expt.imageset, "indices") else 0


class FrameNumbers:
    """Frame numbers 0..n_frames-1 of experiments: by index in file, or over the files of an input list."""

    def __init__(self, n_frames, list_path=None):
        self.n_frames = n_frames
        self.list_path = list_path
        self.offsets = file_offsets(list_path, n_frames) if list_path is not None else None

    def of(self, expt):
        """The frame number of one experiment (exits where it is not one of the inputs' frames)."""
        if self.offsets is None:
            f = index_in_file(expt)
        else:
            imageset = expt.imageset
            path = imageset.get_path(0)
            # One file per image (a CBF list as one imageset): indices run over the files, each holds frame 0.
            within = 0 if len(set(imageset.paths())) > 1 else index_in_file(expt)
            real = os.path.realpath(path)
            if real not in self.offsets:
                sys.exit(f"{PROG}: DIALS processed {path}, which {self.list_path} does not list")
            f = self.offsets[real] + within
        if not 0 <= f < self.n_frames:
            sys.exit(f"{PROG}: frame {f} of {expt.imageset.get_path(0)} is outside 0..{self.n_frames - 1}")
        return f


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


def parallax(panel):
    """(mu 1/mm, t0 mm) of a panel's parallax correction; (0, 0) without one."""
    strategy = panel.get_px_mm_strategy()
    return (strategy.mu(), strategy.t0()) if hasattr(strategy, "mu") else (0.0, 0.0)


class Geometry:
    """Per-frame beam and panel arrays (GEOMETRY_SHAPES), NaN until a frame's experiment is stored; the panel
    count P is that of the first experiment stored."""

    def __init__(self, n_frames):
        self.n_frames = n_frames
        self.n_panels = None
        self.values = {}
        self.format_detectors = {}  # (realpath, index in file) -> the detector dxtbx's format class makes

    def format_detector(self, expt):
        """The detector as dxtbx's format class reads it from the experiment's image file (None if it cannot)."""
        key = (os.path.realpath(expt.imageset.get_path(0)), index_in_file(expt))
        if key not in self.format_detectors:
            from dxtbx.format.FormatMultiImage import FormatMultiImage
            from dxtbx.format.Registry import get_format_class_for_file

            try:
                format_class = get_format_class_for_file(key[0])
                instance = format_class.get_instance(key[0])
                multi = issubclass(format_class, FormatMultiImage)
                self.format_detectors[key] = instance.get_detector(key[1]) if multi else instance.get_detector()
            except Exception as exc:  # moved or unreadable input: the parallax parameters stay unknown (NaN)
                print(f"{PROG}: parallax correction of {key[0]} unknown: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
                self.format_detectors[key] = None
        return self.format_detectors[key]

    def store(self, f, expt, parallax_lost):
        """The beam and panels of experiment ``expt`` as frame ``f``'s geometry."""
        if expt.beam is None or expt.detector is None:
            return
        if self.n_panels is None:
            self.n_panels = len(expt.detector)
            for key, shape in GEOMETRY_SHAPES.items():
                self.values[key] = np.full((self.n_frames,) + tuple(self.n_panels if k is None else k
                                                                    for k in shape), np.nan)
        values = self.values
        values["s0"][f] = expt.beam.get_s0()
        panels = list(expt.detector)[:self.n_panels]
        for p, panel in enumerate(panels):
            values["panel_origin_mm"][f, p] = panel.get_origin()
            values["panel_fast_axis"][f, p] = panel.get_fast_axis()
            values["panel_slow_axis"][f, p] = panel.get_slow_axis()
            values["panel_pixel_size_mm"][f, p] = panel.get_pixel_size()
            values["panel_image_size"][f, p] = panel.get_image_size()
        source = self.format_detector(expt) if parallax_lost else expt.detector
        if source is not None and len(source) == len(expt.detector):
            mu_t0 = np.array([parallax(panel) for panel in list(source)[:self.n_panels]])
            values["panel_parallax_mu_per_mm"][f, :len(mu_t0)] = mu_t0[:, 0]
            values["panel_parallax_t0_mm"][f, :len(mu_t0)] = mu_t0[:, 1]

    def arrays(self):
        """The geometry arrays by name; with no experiment stored, NaN arrays with P = 0."""
        if self.n_panels is None:
            return {key: np.full((self.n_frames,) + tuple(0 if k is None else k for k in shape), np.nan)
                    for key, shape in GEOMETRY_SHAPES.items()}
        return self.values


def read_imported(out_dir, frames, geometry):
    """Every frame's imported geometry and its strong spots: n_strong and the strong_* arrays by name."""
    n_strong = np.zeros(frames.n_frames, np.int64)
    columns = {k: [] for k in STRONG_COLUMNS}
    for expt_path in sorted(glob.glob(os.path.join(out_dir, "*_imported.expt"))):
        experiments, lost = load_experiments(expt_path)
        for expt, parallax_lost in zip(experiments, lost):
            geometry.store(frames.of(expt), expt, parallax_lost)
        strong_path = expt_path.replace("_imported.expt", "_strong.refl")
        if not os.path.exists(strong_path):
            continue
        strong = flex.reflection_table.from_file(strong_path)
        ids = np.array(strong["id"])
        xy = np.array(strong["xyzobs.px.value"]).reshape(-1, 3)[:, :2]
        panel = np.array(strong["panel"]).astype(np.int64)
        for i, expt in enumerate(experiments):
            f = frames.of(expt)
            sel = ids == i
            n_strong[f] += int(sel.sum())
            columns["frame"].append(np.full(int(sel.sum()), f, np.int64))
            columns["panel"].append(panel[sel])
            columns["x"].append(xy[sel, 0])
            columns["y"].append(xy[sel, 1])
    strong = {"strong_" + k: (np.concatenate(v) if v else np.zeros(0, STRONG_COLUMNS[k])) for k, v in columns.items()}
    return n_strong, strong


def append_reflections(columns, f, sub):
    """One frame's integrated reflections (a reflection table) onto the refl_* columns; returns its
    observed-vs-calculated RMSD in pixels over reflections with a finite observed position (NaN where none)."""
    obs = np.array(sub["xyzobs.px.value"]).reshape(-1, 3)[:, :2]
    cal = np.array(sub["xyzcal.px"]).reshape(-1, 3)[:, :2]
    hkl = np.array(sub["miller_index"]).reshape(-1, 3)
    columns["frame"].append(np.full(len(hkl), f))
    for j, c in enumerate("hkl"):
        columns[c].append(hkl[:, j])
    columns["x_obs"].append(obs[:, 0])
    columns["y_obs"].append(obs[:, 1])
    columns["x_cal"].append(cal[:, 0])
    columns["y_cal"].append(cal[:, 1])
    intensity = np.array(sub["intensity.sum.value"])
    variance = np.array(sub["intensity.sum.variance"])
    columns["intensity"].append(intensity)
    columns["variance"].append(variance)
    columns["partiality"].append(np.array(sub["partiality"]) if "partiality" in sub else np.full(len(hkl), np.nan))
    columns["d"].append(np.array(sub["d"]))
    columns["panel"].append(np.array(sub["panel"]).astype(np.int64))
    positive = variance > 0
    sigma = np.sqrt(np.where(positive, variance, 1.0))
    columns["i_over_sigma"].append(np.where(positive, intensity / sigma, np.nan))
    good = np.isfinite(obs).all(axis=1) & (obs[:, 0] > 0)
    return float(np.sqrt(np.mean(np.sum((obs[good] - cal[good]) ** 2, axis=1)))) if good.any() else np.nan


def read_integrated(out_dir, frames, geometry):
    """The indexed frames' crystals, counts and refined geometry, and their integrated reflections: the per-frame
    arrays (indexed, a_matrix, cell, n_indexed, n_integrated, rmsd_px) and the refl_* arrays by name."""
    n = frames.n_frames
    per_frame = {"indexed": np.zeros(n, bool), "a_matrix": np.full((n, 9), np.nan), "cell": np.full((n, 6), np.nan),
                 "n_indexed": np.zeros(n, np.int64), "n_integrated": np.zeros(n, np.int64),
                 "rmsd_px": np.full(n, np.nan)}
    columns = {k: [] for k in REFLECTION_COLUMNS}
    for expt_path in sorted(glob.glob(os.path.join(out_dir, "*_integrated.expt"))):
        experiments, lost = load_experiments(expt_path)
        table = flex.reflection_table.from_file(expt_path.replace("_integrated.expt", "_integrated.refl"))
        idx_path = expt_path.replace("_integrated.expt", "_indexed.refl")
        indexed_table = flex.reflection_table.from_file(idx_path) if os.path.exists(idx_path) else None
        ids = np.array(table["id"])
        for i, expt in enumerate(experiments):
            f = frames.of(expt)
            per_frame["indexed"][f] = True
            geometry.store(f, expt, lost[i])  # beam and detector are fixed in stills refinement: normally as imported
            per_frame["a_matrix"][f] = np.array(expt.crystal.get_A())
            per_frame["cell"][f] = np.array(expt.crystal.get_unit_cell().parameters())
            sel = ids == i
            per_frame["n_integrated"][f] = int(sel.sum())
            if indexed_table is not None:
                per_frame["n_indexed"][f] = int((np.array(indexed_table["id"]) == i).sum())
            if sel.any():
                per_frame["rmsd_px"][f] = append_reflections(columns, f, table.select(flex.bool(sel.tolist())))
    refl = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in columns.items()}
    if not columns["panel"]:
        refl["panel"] = np.zeros(0, np.int64)
    return per_frame, {"refl_" + k: v for k, v in refl.items()}


def run(args=None):
    """dials_export.py's command line (``args``, default sys.argv[1:]): read the stills_process outputs, write
    the .npz."""
    options = parse_args(args)
    with sigterm_exits(PROG):
        frames = FrameNumbers(options.n_frames, options.list_path)
        geometry = Geometry(options.n_frames)
        n_strong, strong = read_imported(options.out_dir, frames, geometry)
        per_frame, refl = read_integrated(options.out_dir, frames, geometry)
        arrays = {"n_strong": n_strong, **per_frame, **refl, **strong, **geometry.arrays()}
        write_dials_export(options.out_path, arrays)


if __name__ == "__main__":
    run()
