"""Run with DIALS' Python (libtbx.python): any image files dxtbx reads -> one normalized HDF5 file of photons.

usage: libtbx.python dxtbx_import.py [--untrusted-border-px=N] <out.h5> <adu_per_photon> <input file> [...]

Reads every format dxtbx reads (CBF, multi-frame NXmx HDF5, Eiger master files, ...) and writes, atomically:
  /data                      float32 (frames, panels, slow, fast), one frame per chunk, gzip 4: photons =
                             raw counts / adu_per_photon clipped to >= 0; untrusted pixels (outside the panel's
                             trusted range, in the imageset's static/dynamic mask, or within N px of a panel's
                             border with --untrusted-border-px) are exactly -1.0
  /panels/name               (P,) UTF-8 strings (dxtbx panel names; "panel{i}" where empty)
  /panels/origin_mm          (P, 3) float64 \
  /panels/fast_axis          (P, 3) unit     |  dxtbx lab frame, detector of the first frame
  /panels/slow_axis          (P, 3) unit     |
  /panels/pixel_size_mm      (P, 2) (fast, slow)
  /panels/image_size         (P, 2) int64 (fast, slow)
  /frames/wavelength_angstrom (n,) float64
  /frames/beam_direction      (n, 3) unit vector along s0 (beam.get_unit_s0())
  /frames/source_file         (n,) UTF-8 strings, the input paths as given
  /frames/source_index        (n,) int64, frame index within its source file
  attrs: adu_per_photon, format_class (of the first image), n_panels, layout = "frames, panels, slow, fast"
Frames: input files in the given order, frames within a file in order. Pixel coordinates follow DIALS
(x = fast, y = slow, pixel i spans [i, i+1)).
"""

import os
import sys

import h5py
import numpy as np
from dxtbx.model.experiment_list import ExperimentListFactory

LAYOUT = "frames, panels, slow, fast"


class InputFileError(Exception):
    """A problem with one input file (its path leads the message)."""

    def __init__(self, path, message):
        super().__init__(f"{path}: {message}")


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


def frame_model(get, i):
    """A frame's model (imageset.get_beam / get_detector): its own where the imageset keeps one per frame,
    else the imageset's single model."""
    try:
        model = get(i)
    except Exception:
        model = None
    return model if model is not None else get()


def frame_beam(imageset, i):
    beam = frame_model(imageset.get_beam, i)
    if beam is None:
        raise ValueError(f"no beam model for frame {i}")
    return beam


def frame_detector(imageset, i):
    return frame_model(imageset.get_detector, i)


def panel_table(detector):
    panels = list(detector)
    return {
        "name": [p.get_name() or f"panel{i}" for i, p in enumerate(panels)],
        "origin_mm": np.array([p.get_origin() for p in panels], np.float64),
        "fast_axis": np.array([p.get_fast_axis() for p in panels], np.float64),
        "slow_axis": np.array([p.get_slow_axis() for p in panels], np.float64),
        "pixel_size_mm": np.array([p.get_pixel_size() for p in panels], np.float64),
        "image_size": np.array([p.get_image_size() for p in panels], np.int64),
    }


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


def main(argv):
    border_px = 0
    if len(argv) > 1 and argv[1].startswith("--untrusted-border-px="):
        try:
            border_px = int(argv[1].split("=", 1)[1])
        except ValueError:
            border_px = -1
        if border_px < 0:
            sys.exit(f"dxtbx_import.py: --untrusted-border-px must be an integer >= 0, got {argv[1]!r}")
        argv = argv[:1] + argv[2:]
    if len(argv) < 4:
        sys.exit("usage: libtbx.python dxtbx_import.py <out.h5> <adu_per_photon> <input file> [<input file> ...]")
    out_path, inputs = argv[1], argv[3:]
    try:
        adu_per_photon = float(argv[2])
    except ValueError:
        sys.exit(f"dxtbx_import.py: adu_per_photon must be a number, got {argv[2]!r}")
    if not np.isfinite(adu_per_photon) or adu_per_photon <= 0:
        sys.exit(f"dxtbx_import.py: adu_per_photon must be > 0, got {argv[2]!r}")

    tmp = f"{out_path}.tmp-{os.getpid()}"
    current = inputs[0]
    try:
        # Pass 1: models only (cheap) -> frame list, panel layout, beams.
        frames = []  # (path, imageset, index in imageset, index in file)
        for current in inputs:
            n_in_file = 0
            for imageset in load_imagesets(current):
                indices = list(imageset.indices()) if hasattr(imageset, "indices") else range(len(imageset))
                for i in range(len(imageset)):
                    frames.append((current, imageset, i, int(indices[i]) if i < len(indices) else n_in_file))
                    n_in_file += 1
            if n_in_file == 0:
                raise InputFileError(current, "holds no images")
        current = inputs[0]
        first_path, first_set = frames[0][0], frames[0][1]
        detector0 = frame_detector(first_set, 0)
        table = panel_table(detector0)
        n_panels = len(table["name"])
        sizes = {tuple(s) for s in table["image_size"]}
        if len(sizes) != 1:
            raise InputFileError(first_path, f"panels of different sizes (fast, slow) {sorted(sizes)}: "
                                           "the layout (frames, panels, slow, fast) needs one panel shape")
        n_fast, n_slow = sizes.pop()
        shape = (int(n_slow), int(n_fast))
        format_class = first_set.get_format_class().__name__

        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        text = h5py.string_dtype("utf-8")
        n = len(frames)
        with h5py.File(tmp, "w") as f:
            f.attrs["adu_per_photon"] = adu_per_photon
            f.attrs["format_class"] = format_class
            f.attrs["n_panels"] = n_panels
            f.attrs["layout"] = LAYOUT
            f.attrs["untrusted_border_px"] = border_px
            data = f.create_dataset("data", shape=(n, n_panels) + shape, dtype=np.float32,
                                    chunks=(1, n_panels) + shape, compression="gzip", compression_opts=4)
            g = f.create_group("panels")
            g.create_dataset("name", data=np.array(table["name"], dtype=object), dtype=text)
            for key in ("origin_mm", "fast_axis", "slow_axis", "pixel_size_mm", "image_size"):
                g.create_dataset(key, data=table[key])
            wavelength = np.zeros(n, np.float64)
            direction = np.zeros((n, 3), np.float64)
            source_index = np.zeros(n, np.int64)
            for k, (current, imageset, i, index_in_file) in enumerate(frames):
                detector = frame_detector(imageset, i)
                if len(detector) != n_panels:
                    raise InputFileError(current, f"frame {index_in_file}: {len(detector)} panels, "
                                                f"the first frame ({first_path}) has {n_panels}")
                beam = frame_beam(imageset, i)
                wavelength[k] = beam.get_wavelength()
                direction[k] = beam.get_unit_s0()
                source_index[k] = index_in_file
                try:
                    data[k] = photons(imageset, i, detector, adu_per_photon, shape, border_px)
                except InputFileError:
                    raise
                except Exception as exc:
                    raise InputFileError(current, f"frame {index_in_file}: {type(exc).__name__}: {exc}") from None
            fr = f.create_group("frames")
            fr.create_dataset("wavelength_angstrom", data=wavelength)
            fr.create_dataset("beam_direction", data=direction)
            fr.create_dataset("source_file", data=np.array([fr_[0] for fr_ in frames], dtype=object), dtype=text)
            fr.create_dataset("source_index", data=source_index)
        os.replace(tmp, out_path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, InputFileError):
            sys.exit(f"dxtbx_import.py: {exc}")
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        sys.exit(f"dxtbx_import.py: {current}: {type(exc).__name__}: {exc}")
    print(f"dxtbx_import.py: {len(frames)} frames x {n_panels} panels of {shape[0]} x {shape[1]} ({format_class}) "
          f"-> {out_path}")


if __name__ == "__main__":
    main(sys.argv)
