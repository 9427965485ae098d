"""Seconds per full Eiger 4M still (2070 x 2167 px, 75 um, 250 mm, 7 keV) on one CPU core.

  (a) 1 source, 1 mosaic domain, oversample 1, N = 10
  (b) oversample 2, 5 sources (0.3 % top-hat), 5 mosaic domains (0.05 deg), N = 10
  (c) the 64-panel LCLS CSPAD of the shipped thermolysin stills (benchmarks/data/cspad_lcls_panels.json, read
      from idx-20130301060858401.cbf by dxtbx), 9.743 keV, 100 spectrum channels of 1 eV (top-hat), 25 mosaic
      domains (0.05 deg), N = 20, thermolysin's cell (P 61 2 2, 93.42 93.42 131.08 90 90 120): the size of the
      nanoBragg GPU simulations of thermolysin on Perlmutter (~7 s per image on one A100)

Cells (a), (b): 1IC6-like P1 67.288 67.288 106.582 90 90 90; a random orientation (braggflow.draws); structure
factors: random (Wilson/Rayleigh) amplitudes with a B = 20 A^2 fall-off to d >= 2 A (c: to the CSPAD's corner).
Each case is timed as the workflow's simulate job spends a frame: the image (simulate_still) and the truth
table (truth_reflections from the image pass's nearest nodes; on the CSPAD with its panel-independent geometry
once per frame, panel_candidates, as the matched simulation runs it), printed apart.

Each repeat is a different frame (orientation, mosaic draw); the first also builds the F^2 lookup
tables, which later frames reuse. CPU time is printed too: on a shared machine it varies less.

Run:  PYTHONPATH=src python benchmarks/simulate.py [--repeats 3] [--backend numpy|cupy] [--cases abc] [--json F]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one CPU core, set before NumPy loads BLAS

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from braggflow.detector import Detector  # noqa: E402
from braggflow.draws import DrawConfig, draw_frame  # noqa: E402
from braggflow.matched import panel_detectors  # noqa: E402
from braggflow.shards import b_matrix  # noqa: E402
from braggflow.simulator import (Crystal, Numerics, Panel, Pulse, Still, StructureFactorTable,  # noqa: E402
                                 panel_candidates, resolve_backend, simulate_still, to_numpy,
                                 truth_reflections)

CELL_A = (67.288, 67.288, 106.582)
WAVELENGTH_A = 12.398419843320026 / 7.0  # 7 keV
THERMOLYSIN_CELL = (93.42, 93.42, 131.08, 90.0, 90.0, 120.0)
CSPAD = Path(__file__).with_name("data") / "cspad_lcls_panels.json"
CSPAD_ENERGY_KEV = 9.743


def random_sf_table(d_min_A: float, cell=(*CELL_A, 90.0, 90.0, 90.0), seed: int = 0) -> StructureFactorTable:
    """Acentric Wilson amplitudes (Rayleigh) with exp(-B s^2/4) fall-off, dense table to d_min."""
    rng = np.random.default_rng(seed)
    b = b_matrix(cell)
    lim = [int(math.floor(np.linalg.norm(np.linalg.inv(b)[i]) / d_min_A)) + 1 for i in range(3)]
    h, k, l = np.meshgrid(*(np.arange(-n, n + 1) for n in lim), indexing="ij")
    hkl = np.stack([h, k, l], axis=-1).astype(float)
    s2 = np.sum((hkl @ b.T) ** 2, axis=-1)  # 1/d^2
    amps = rng.rayleigh(150.0, size=h.shape) * np.exp(-20.0 * s2 / 4.0)
    amps[s2 > 1 / d_min_A ** 2] = 0.0
    return StructureFactorTable(amps, (-lim[0], -lim[1], -lim[2]))


def cspad() -> Detector:
    g = json.loads(CSPAD.read_text())
    p = g["panels"]
    det = Detector.from_arrays([q["name"] for q in p], [q["origin_mm"] for q in p], [q["fast_axis"] for q in p],
                               [q["slow_axis"] for q in p], [q["pixel_size_mm"] for q in p],
                               [q["image_size"] for q in p])
    return panel_detectors(det, np.asarray(g["beam_direction"]))


def cases():
    eiger = Detector((Panel.from_beam_center(250.0, (2070 / 2, 2167 / 2), 0.075, 2070, 2167),))
    sf = random_sf_table(2.0)
    b = np.diag([1 / c for c in CELL_A])
    n10 = {"dist": "fixed", "value": 10}
    yield "a", "(a) Eiger 4M, 1 source, 1 domain, oversample 1, N=10", eiger, sf, b, DrawConfig(
        wavelength_A=WAVELENGTH_A, ncells=n10), 1
    yield "b", "(b) Eiger 4M, 5 sources, 5 domains, oversample 2, N=10", eiger, sf, b, DrawConfig(
        wavelength_A=WAVELENGTH_A, ncells=n10, mosaic_spread_deg=0.05, mosaic_domains=5, spectrum_shape="tophat",
        bandwidth_frac=0.003, spectrum_samples=5), 2
    det = cspad()
    wavelength = 12.398419843320026 / CSPAD_ENERGY_KEV
    d_min = det.d_min_angstrom(wavelength)
    channels = 100  # 1 eV apart: the top-hat's full width is 99 eV between the outer channels
    yield "c", f"(c) CSPAD 64 panels, {channels} channels of 1 eV, 25 domains, oversample 1, N=20", det, \
        random_sf_table(d_min, THERMOLYSIN_CELL), b_matrix(THERMOLYSIN_CELL), DrawConfig(
            wavelength_A=wavelength, ncells={"dist": "fixed", "value": 20}, mosaic_spread_deg=0.05,
            mosaic_domains=25, spectrum_shape="tophat", bandwidth_frac=(channels - 1) * 1e-3 / CSPAD_ENERGY_KEV,
            spectrum_samples=channels), 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="numpy", choices=("numpy", "cupy", "auto"))
    parser.add_argument("--cases", default="abc", help="which of the cases a, b, c to run (default: all)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--panels", type=int, default=None,
                        help="time only the first N panels of a multi-panel case and scale to the whole detector")
    args = parser.parse_args()
    xp, backend_line = resolve_backend(args.backend)
    print(f"{backend_line}; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    figures = {"backend": xp.__name__, "cases": {}}
    for key, label, detector, sf, b, config, oversample in cases():
        if key not in args.cases:
            continue
        image_s, truth_s, cpu_image, cpu_truth = [], [], [], []
        for rep in range(args.repeats):
            draws = draw_frame(config, seed=1, dataset_index=0, frame_index=rep)
            still = Still(Crystal(draws.orientation @ b, ncells=draws.ncells, mosaic_umats=draws.mosaic_umats),
                          Pulse(draws.wavelengths_A, weights=draws.weights,
                                fluence_photons_per_m2=draws.fluence_photons_per_m2),
                          Numerics(oversample=oversample))
            wall, cpu, total, n_refl = [0.0, 0.0], [0.0, 0.0], 0.0, 0
            panels = detector.panels[:args.panels] if args.panels else detector.panels
            scale = len(detector.panels) / len(panels)  # per whole frame
            # as the matched simulation does it: the truth's panel-independent geometry once per frame
            t0, c0 = time.perf_counter(), time.process_time()
            cands = panel_candidates(still, detector, sf) if len(detector) > 1 else [None]
            once = [time.perf_counter() - t0, time.process_time() - c0]
            for panel, cand in zip(panels, cands):
                t0, c0 = time.perf_counter(), time.process_time()
                image, nodes = simulate_still(still, panel, sf, xp=xp, return_nodes=True)
                if xp is not np:
                    xp.cuda.Stream.null.synchronize()
                t1, c1 = time.perf_counter(), time.process_time()
                truth = truth_reflections(still, panel, sf, image=image, xp=xp, candidates=cand, nodes=nodes)
                wall[0] += t1 - t0
                cpu[0] += c1 - c0
                wall[1] += time.perf_counter() - t1
                cpu[1] += time.process_time() - c1
                total += float(to_numpy(image).sum())
                n_refl += len(truth)
            image_s.append(wall[0] * scale)
            truth_s.append(once[0] + wall[1] * scale)
            cpu_image.append(cpu[0] * scale)
            cpu_truth.append(once[1] + cpu[1] * scale)
        fig = {"image_wall_s": float(np.median(image_s)), "image_cpu_s": float(np.median(cpu_image)),
               "truth_wall_s": float(np.median(truth_s)), "truth_cpu_s": float(np.median(cpu_truth)),
               "repeats": args.repeats, "panels_timed": len(panels), "panels": len(detector.panels)}
        figures["cases"][key] = fig
        print(f"{label}: image {fig['image_wall_s']:.3f} s wall / {fig['image_cpu_s']:.3f} s CPU, truth "
              f"{fig['truth_wall_s']:.3f} s / {fig['truth_cpu_s']:.3f} s CPU per frame (median of {args.repeats}; "
              f"image runs {', '.join(f'{t:.3f}' for t in image_s)} s); last frame {total:.4g} photons, "
              f"{n_refl} reflections" + (f" (timed {len(panels)} of {len(detector.panels)} panels, scaled to the frame)"
                                        if len(panels) < len(detector.panels) else ""), flush=True)
        if args.json:  # after every case: a run cut short by a time limit keeps what it measured
            Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
