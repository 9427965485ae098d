"""Run with DIALS' Python (libtbx.python): any image files dxtbx reads -> one normalized HDF5 file of photons.

usage: libtbx.python dxtbx_import.py [--untrusted-border-px=N] <out.h5> <adu_per_photon> <input file> [...]

Reads every format dxtbx reads (CBF, multi-frame NXmx HDF5, Eiger master files, ...) and writes <out.h5>
atomically (a temporary file beside it, .<name>.<host>.<pid>.<random>.tmp as braggflow.io.atomic_path names it,
renamed onto it; removed on any failure or SIGTERM)
in braggflow's frames-file layout (src/braggflow/formats/frames.py, which writes it): photons = raw counts /
adu_per_photon clipped to >= 0; untrusted pixels (outside the panel's trusted range, in the imageset's static or
dynamic mask, or within N px of a panel's border with --untrusted-border-px) are exactly -1.0; the panels are the
first frame's dxtbx detector (names "panel{i}" where dxtbx has none), each frame keeps its own beam.
Frames: input files in the given order, frames within a file in order. Pixel coordinates follow DIALS
(x = fast, y = slow, pixel i spans [i, i+1)).
"""

import argparse
import os
import sys

import numpy as np
from dxtbx.model.experiment_list import ExperimentListFactory

PROG = "dxtbx_import.py"
USAGE = "libtbx.python dxtbx_import.py [--untrusted-border-px=N] <out.h5> <adu_per_photon> <input file> [...]"
# braggflow's src/ in the checkout this program belongs to (workflow/scripts/ -> ../../src): DIALS' Python need
# not have braggflow installed, and the modules used here (formats.frames, logs) need only NumPy, h5py and the
# standard library.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "src"))
from braggflow.cli import nonnegative_int  # noqa: E402
from braggflow.detector import Detector  # noqa: E402
from braggflow.formats.frames import frames_writer  # noqa: E402
from braggflow.logs import sigterm_exits  # noqa: E402


class InputFileError(Exception):
    """A problem with one input file (its path leads the message)."""

    def __init__(self, path, message):
        super().__init__(f"{path}: {message}")


def positive_number(text):
    """argparse type of <adu_per_photon>: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def parse_args(args=None):
    """The command line (``args``, default sys.argv[1:]) as an argparse namespace: untrusted_border_px,
    out_path, adu_per_photon, inputs. Exits with a message naming the argument where one is wrong."""
    parser = argparse.ArgumentParser(prog=PROG, usage=USAGE, allow_abbrev=False,
                                     description="Image files dxtbx reads -> one HDF5 file of photons (see the "
                                                 "program's docstring).")
    parser.add_argument("--untrusted-border-px", type=nonnegative_int, default=0, metavar="N",
                        help="mark pixels within N px of every panel's border untrusted (-1.0)")
    parser.add_argument("out_path", help="the HDF5 file to write")
    parser.add_argument("adu_per_photon", type=positive_number, help="raw counts per photon")
    parser.add_argument("inputs", nargs="+", metavar="input_file", help="image files dxtbx reads, in order")
    options = parser.parse_args(args)
    if os.path.isdir(options.out_path):
        parser.error(f"argument out_path: {options.out_path} is a directory")
    return options


def load_imagesets(path):
    """The imagesets dxtbx makes of one file, in order (one per file for CBF stills and multi-frame files)."""
    if not os.path.isfile(path):
        raise InputFileError(path, "no such file")
    unhandled = []
    try:
        experiments = ExperimentListFactory.from_filenames([path], unhandled=unhandled)
    except Exception as exc:  # dxtbx raises many kinds for damaged files
        raise InputFileError(path, f"dxtbx cannot read it: {type(exc).__name__}: {exc}") from None
    imagesets = list(experiments.imagesets())
    if unhandled or not imagesets:
        raise InputFileError(path, "dxtbx recognises no image format in it")
    return imagesets


def list_frames(inputs):
    """Pass 1, models only (cheap): every frame as (path, imageset, index in imageset, index in file), input
    files in order."""
    frames = []
    for path in inputs:
        n_in_file = 0
        try:
            for imageset in load_imagesets(path):
                indices = list(imageset.indices()) if hasattr(imageset, "indices") else range(len(imageset))
                for i in range(len(imageset)):
                    frames.append((path, imageset, i, int(indices[i]) if i < len(indices) else n_in_file))
                    n_in_file += 1
        except InputFileError:
            raise
        except Exception as exc:
            raise InputFileError(path, f"{type(exc).__name__}: {exc}") from None
        if n_in_file == 0:
            raise InputFileError(path, "holds no images")
    return frames


def frame_model(get, i):
    """A frame's model (imageset.get_beam / get_detector): its own where the imageset keeps one per frame,
    else the imageset's single model."""
    try:
        model = get(i)
    except Exception:
        model = None
    return model if model is not None else get()


def frame_beam(imageset, i):
    """The beam of frame ``i`` of an imageset (ValueError where there is none)."""
    beam = frame_model(imageset.get_beam, i)
    if beam is None:
        raise ValueError(f"no beam model for frame {i}")
    return beam


def frame_detector(imageset, i):
    """The detector of frame ``i`` of an imageset."""
    return frame_model(imageset.get_detector, i)


def panel_table(detector):
    """A detector's panels as arrays (the /panels datasets) by name."""
    panels = list(detector)
    return {
        "name": [p.get_name() or f"panel{i}" for i, p in enumerate(panels)],
        "origin_mm": np.array([p.get_origin() for p in panels], np.float64),
        "fast_axis": np.array([p.get_fast_axis() for p in panels], np.float64),
        "slow_axis": np.array([p.get_slow_axis() for p in panels], np.float64),
        "pixel_size_mm": np.array([p.get_pixel_size() for p in panels], np.float64),
        "image_size": np.array([p.get_image_size() for p in panels], np.int64),
    }


def panel_layout(frames):
    """The first frame's panels: (panel table, panel shape (slow, fast), format class name). All panels must
    share one shape."""
    first_path, first_set = frames[0][0], frames[0][1]
    try:
        table = panel_table(frame_detector(first_set, 0))
        format_class = first_set.get_format_class().__name__
    except Exception as exc:
        raise InputFileError(first_path, f"{type(exc).__name__}: {exc}") from None
    sizes = {tuple(s) for s in table["image_size"]}
    if len(sizes) != 1:
        raise InputFileError(first_path, f"panels of different sizes (fast, slow) {sorted(sizes)}: "
                                         "the layout (frames, panels, slow, fast) needs one panel shape")
    n_fast, n_slow = sizes.pop()
    return table, (int(n_slow), int(n_fast)), format_class


def photons(imageset, i, detector, adu_per_photon, shape, border_px=0):
    """One frame as (panels, slow, fast) float32 photons, untrusted pixels -1."""
    raw = imageset.get_raw_data(i)
    mask = imageset.get_mask(i)
    if len(raw) != len(detector):
        raise ValueError(f"frame {i}: {len(raw)} data blocks for {len(detector)} panels")
    out = np.empty((len(raw),) + shape, np.float32)
    for p, (block, panel) in enumerate(zip(raw, detector)):
        values = block.as_numpy_array()
        if values.shape != shape:
            raise ValueError(f"frame {i} panel {p}: data shape {values.shape}, expected {shape}")
        trusted = panel.get_trusted_range_mask(block).as_numpy_array()
        if mask is not None and p < len(mask) and mask[p] is not None:
            trusted &= mask[p].as_numpy_array()
        photon = np.clip(values.astype(np.float64) / adu_per_photon, 0.0, None)
        out[p] = np.where(trusted, photon, -1.0)
    if border_px:
        out[:, :border_px], out[:, -border_px:] = -1.0, -1.0
        out[:, :, :border_px], out[:, :, -border_px:] = -1.0, -1.0
    return out


def write_frames(out_path, frames, table, shape, format_class, adu_per_photon, border_px):
    """Pass 2: every frame's photons, beam and the first frame's panels into ``out_path``, atomically, through
    braggflow's frames-file writer (braggflow.formats.frames)."""
    n_panels = len(table["name"])
    first_path = frames[0][0]
    panels = Detector.from_arrays(table["name"], table["origin_mm"], table["fast_axis"], table["slow_axis"],
                                  table["pixel_size_mm"], table["image_size"])
    with frames_writer(out_path, len(frames), panels, adu_per_photon, format_class, border_px) as (data, columns):
        for k, (path, imageset, i, index_in_file) in enumerate(frames):
            try:
                detector = frame_detector(imageset, i)
                if len(detector) != n_panels:
                    raise InputFileError(path, f"frame {index_in_file}: {len(detector)} panels, "
                                               f"the first frame ({first_path}) has {n_panels}")
                beam = frame_beam(imageset, i)
                columns.set(k, beam.get_wavelength(), beam.get_unit_s0(), path, index_in_file)
                data[k] = photons(imageset, i, detector, adu_per_photon, shape, border_px)
            except InputFileError:
                raise
            except Exception as exc:
                raise InputFileError(path, f"frame {index_in_file}: {type(exc).__name__}: {exc}") from None


def run(args=None):
    """dxtbx_import.py's command line (``args``, default sys.argv[1:]): read the input files, write the HDF5
    file. Errors exit with a message naming the input file (or the output where the input is not to blame)."""
    options = parse_args(args)
    with sigterm_exits(PROG):
        try:
            frames = list_frames(options.inputs)
            table, shape, format_class = panel_layout(frames)
            write_frames(options.out_path, frames, table, shape, format_class, options.adu_per_photon,
                         options.untrusted_border_px)
        except InputFileError as exc:
            sys.exit(f"{PROG}: {exc}")
        except Exception as exc:
            sys.exit(f"{PROG}: {options.out_path}: {type(exc).__name__}: {exc}")
    print(f"{PROG}: {len(frames)} frames x {len(table['name'])} panels of {shape[0]} x {shape[1]} "
          f"({format_class}) -> {options.out_path}")


if __name__ == "__main__":
    run()
