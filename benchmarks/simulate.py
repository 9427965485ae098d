"""Seconds per full Eiger 4M still (2070 x 2167 px, 75 um, 250 mm, 7 keV) on one CPU core.

  (a) 1 source, 1 mosaic domain, oversample 1, N = 10
  (b) oversample 2, 5 sources (0.3 % top-hat), 5 mosaic domains (0.05 deg), N = 10

Cell: 1IC6-like P1 67.288 67.288 106.582 90 90 90, a random orientation (braggflow.draws), structure
factors: random (Wilson/Rayleigh) amplitudes with a B = 20 A^2 fall-off to d >= 2 A.

Each repeat is a different frame (orientation, mosaic draw); the first also builds the F^2 lookup
tables, which later frames reuse. CPU time is printed too: on a shared machine it varies less.

Run:  PYTHONPATH=src python benchmarks/simulate.py [--repeats 3] [--backend numpy|cupy]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one CPU core, set before NumPy loads BLAS

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from braggflow.draws import DrawConfig, draw_frame  # noqa: E402
from braggflow.simulator import (Crystal, Numerics, Panel, Pulse, Still, StructureFactorTable,  # noqa: E402
                                 get_array_module, simulate_still, to_numpy)

CELL_A = (67.288, 67.288, 106.582)
WAVELENGTH_A = 12.398419843320026 / 7.0  # 7 keV


def random_sf_table(d_min_A: float, seed: int = 0) -> StructureFactorTable:
    """Acentric Wilson amplitudes (Rayleigh) with exp(-B s^2/4) fall-off, dense table to d_min."""
    rng = np.random.default_rng(seed)
    lim = [int(math.floor(c / d_min_A)) for c in CELL_A]
    h, k, l = np.meshgrid(*(np.arange(-n, n + 1) for n in lim), indexing="ij")
    s2 = (h / CELL_A[0]) ** 2 + (k / CELL_A[1]) ** 2 + (l / CELL_A[2]) ** 2  # 1/d^2
    amps = rng.rayleigh(150.0, size=h.shape) * np.exp(-20.0 * s2 / 4.0)
    amps[s2 > 1 / d_min_A ** 2] = 0.0
    return StructureFactorTable(amps, (-lim[0], -lim[1], -lim[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="numpy", choices=("numpy", "cupy", "auto"))
    args = parser.parse_args()
    xp = get_array_module(args.backend)

    detector = Panel.from_beam_center(250.0, (2070 / 2, 2167 / 2), 0.075, 2070, 2167)
    sf = random_sf_table(2.0)
    b_matrix = np.diag([1 / c for c in CELL_A])
    cases = {
        "(a) 1 source, 1 domain, oversample 1, N=10": (
            DrawConfig(wavelength_A=WAVELENGTH_A, ncells={"dist": "fixed", "value": 10}), 1),
        "(b) 5 sources, 5 domains, oversample 2, N=10": (
            DrawConfig(wavelength_A=WAVELENGTH_A, ncells={"dist": "fixed", "value": 10}, mosaic_spread_deg=0.05,
                       mosaic_domains=5, spectrum_shape="tophat", bandwidth_frac=0.003, spectrum_samples=5), 2),
    }
    print(f"Eiger 4M {detector.n_fast}x{detector.n_slow} px, 75 um, 250 mm, 7 keV; backend {xp.__name__}; "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    for label, (config, oversample) in cases.items():
        times, cpu = [], []
        for rep in range(args.repeats):
            draws = draw_frame(config, seed=1, dataset_index=0, frame_index=rep)
            t0, c0 = time.perf_counter(), time.process_time()
            still = Still(Crystal(draws.orientation @ b_matrix, ncells=draws.ncells, mosaic_umats=draws.mosaic_umats),
                          Pulse(draws.wavelengths_A, weights=draws.weights,
                                fluence_photons_per_m2=draws.fluence_photons_per_m2),
                          Numerics(oversample=oversample))
            image = simulate_still(still, detector, sf, xp=xp)
            if xp is not np:
                xp.cuda.Stream.null.synchronize()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            image = to_numpy(image)
        print(f"{label}: median {np.median(times):.3f} s/frame wall, {np.median(cpu):.3f} s CPU "
              f"(wall runs: {', '.join(f'{t:.3f}' for t in times)}); "
              f"last frame max {image.max():.4g}, total {image.sum():.4g} photons")


if __name__ == "__main__":
    main()
