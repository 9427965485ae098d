"""CPU seconds to refine one full Eiger 4M still (refine.stills.refine_still) on one core.

The still: the default config's physics (round transform, N = 40, 3 spectrum samples over 0.2 %, 3 mosaic domains of
0.05 deg, Kahn 0.99), 7 keV, 250 mm, the 1IC6-like cell of benchmarks/simulate.py (P 43 21 2) with random Wilson
amplitudes; counts with gain 1, 0.5 ADU readout noise and 0.5 photons of background per pixel. The start is
DIALS-like: 0.08 deg off, the cell 0.2 % long in a and 0.1 % short in c, N 30, fluence x 0.6, the photon energy
4e-4 off, and the mosaic domains not known: the start has the workflow's prior (one fixed draw of the spread, in
antipodal pairs) and the domains are refined (refinement.refine_mosaic, the default; --no-mosaic: the start has the
true domains and they stay). Shoeboxes of 9 x 9 px around the reflections with more than --min-photons expected
photons (the first --spots of them by brightness). Each repeat is a different orientation. Misorientation: the
domains' mean orientation against the crystal's.

Run:  PYTHONPATH=src python benchmarks/refine_still.py [--repeats 3] [--spots 150] [--no-mosaic] [--json F]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one CPU core, set before NumPy loads BLAS

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from simulate import CELL_A, random_sf_table  # noqa: E402

from braggflow.dials import _rotation_angle_deg  # noqa: E402
from braggflow.draws import random_rotation  # noqa: E402
from braggflow.refine.cell import rotation  # noqa: E402
from braggflow.refine.shard import mean_orientation, model_mosaic  # noqa: E402
from braggflow.refine.stills import NoiseModel, RefineSettings, Shoeboxes, refine_still  # noqa: E402
from braggflow.shards import b_matrix  # noqa: E402
from braggflow.simulator import Crystal, Numerics, Panel, Pulse, Still, simulate_still, truth_reflections  # noqa: E402

CELL = (*CELL_A, 90.0, 90.0, 90.0)
WAVELENGTH_A = 12.398419843320026 / 7.0


def small_rotation(axis, deg: float) -> np.ndarray:
    axis = np.asarray(axis, float)
    return rotation(torch.as_tensor(axis / np.linalg.norm(axis) * math.radians(deg))).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spots", type=int, default=150)
    parser.add_argument("--min-photons", type=float, default=20.0)
    parser.add_argument("--fluence", type=float, default=2e25, help="photons / m^2 of the simulated still")
    parser.add_argument("--no-mosaic", action="store_true", help="start from the true domains and keep them")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sf = random_sf_table(2.0)
    b = b_matrix(CELL)
    det = Panel.from_beam_center(250.0, (2070 / 2, 2167 / 2), 0.075, 2070, 2167)
    lam = WAVELENGTH_A * np.array([0.999, 1.0, 1.001])
    rows = []
    for rep in range(args.repeats):
        rng = np.random.default_rng(rep)
        u = random_rotation(rng)
        mosaic = np.array([np.eye(3)] + [small_rotation(rng.standard_normal(3), 0.05) for _ in range(2)])
        truth_still = Still(Crystal(u @ b, ncells=(40, 40, 40), shape="round", mosaic_umats=mosaic),
                            Pulse(lam, fluence_photons_per_m2=args.fluence, kahn_factor=0.99), Numerics())
        image = simulate_still(truth_still, det, sf)
        truth = truth_reflections(truth_still, det, sf, image=image)
        counts = rng.poisson(image + 0.5) + rng.normal(0.0, 0.5, image.shape)
        order = np.argsort(-truth.photons)
        strong = order[truth.photons[order] > args.min_photons][:args.spots]
        boxes = Shoeboxes.around(counts, None, np.column_stack([truth.x_px, truth.y_px])[strong], 4)
        start_b = b_matrix((CELL[0] * 1.002, CELL[1] * 1.002, CELL[2] * 0.999, 90, 90, 90))
        start_mosaic = mosaic if args.no_mosaic else model_mosaic(0.05, 3, "nanobragg")
        start = Still(Crystal(small_rotation([0.3, -0.5, 0.8], 0.08) @ u @ start_b, ncells=(30, 30, 30),
                              shape="round", mosaic_umats=start_mosaic),
                      Pulse(lam * (1 + 4e-4), fluence_photons_per_m2=0.6 * args.fluence, kahn_factor=0.99), Numerics())
        t0, c0 = time.perf_counter(), time.process_time()
        res = refine_still(start, det, sf, boxes, NoiseModel(1.0, 0.5), "P 43 21 2",
                           RefineSettings(refine_mosaic=not args.no_mosaic), reference_cell=CELL)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        row = {"spots": boxes.n_boxes, "pixels": res.pixels, "cpu_s": cpu, "wall_s": wall,
               "iterations": res.iterations, "converged": res.converged,
               "misorientation_deg": _rotation_angle_deg(
                   mean_orientation(res.still(start).crystal.mosaic_umats) @ res.A_matrix
                   @ np.linalg.inv(mean_orientation(mosaic) @ u @ b)),
               "cell_error_rel": max(abs(x / y - 1) for x, y in zip(res.cell[:3], CELL[:3])),
               "ncells": res.ncells[0], "energy_error_rel": res.energy_factor - (1 + 4e-4)}
        rows.append(row)
        print(f"still {rep}: {row['spots']} spots, {row['pixels']} px: {cpu:.2f} CPU-s ({wall:.2f} s wall), "
              f"{row['iterations']} iterations, converged {row['converged']}; misorientation "
              f"{row['misorientation_deg']:.4f} deg, cell {row['cell_error_rel']:.2e}, N {row['ncells']:.2f}, "
              f"energy {row['energy_error_rel']:+.2e}" + ("" if res.converged else f" ({res.message})"), flush=True)
    figures = {"cpu_s_median": float(np.median([r["cpu_s"] for r in rows])), "stills": rows}
    print(f"median {figures['cpu_s_median']:.2f} CPU-s per Eiger 4M still on one core")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
