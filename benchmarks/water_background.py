"""Seconds per full Eiger 4M water background (pyFAI geometry arrays + |F(q)|^2 + scaling), and with file I/O.

usage: python benchmarks/water_background.py [repeats]
"""

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from braggflow.beam import Beam  # noqa: E402
from braggflow.geometry import dataset_geometry  # noqa: E402
from braggflow.matrix import Dataset  # noqa: E402
from braggflow.formats.background import write_background  # noqa: E402
from braggflow.water import water_image  # noqa: E402

TABLE = Path(__file__).resolve().parents[1] / "resources/water/water_scattering_25C.csv"


def main(repeats: int = 3) -> None:
    det = {"detector": {"pyfai_name": "Eiger4M", "beam_center_px": None, "sensor_material": "Si",
                        "sensor_thickness_mm": 0.45}}
    g = dataset_geometry(det, Dataset("7keV_250mm", 7.0, 0.25, 0))
    beam = Beam(1e12, (1e-6, 1e-6), 0.99, 0.0)
    water_image(g, beam, 5e-6, TABLE)  # warm-up: pyFAI detector and imports
    compute, total = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            t0 = time.perf_counter()
            bg = water_image(g, beam, 5e-6, TABLE)
            t1 = time.perf_counter()
            write_background(Path(tmp) / "w.h5", bg)
            t2 = time.perf_counter()
            compute.append(t1 - t0)
            total.append(t2 - t0)
    print(f"water background, Eiger 4M {g.n_fast}x{g.n_slow}, 7 keV, 250 mm: "
          f"{min(compute):.2f} s compute, {min(total):.2f} s with HDF5 write (best of {repeats})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
