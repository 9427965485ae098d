"""CuPy against NumPy on the same stills: the two nanoBragg reference cases (tests/data/nanobragg) and a full
random Eiger 4M frame (5 sources, 5 domains, oversample 2), image, PSF and truth table; max |difference| / max
and the total's ratio per case, against float32's tolerance (the kernels' lattice sums are float32: 1e-5 of
the maximum, 1e-6 of the total), and the seconds each backend took.

--backend stand-in runs the device path on the CPU through tests/helpers/fake_cupy.py (CuPy's boundary rules
over NumPy), so gpu_check.sh --dry-run exercises this script without a GPU.

Run:  PYTHONPATH=src python benchmarks/gpu_parity.py [--backend cupy|stand-in] [--json F] [--no-full-frame]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from braggflow.draws import draw_frame  # noqa: E402
from braggflow.simulator import (Crystal, Numerics, Pulse, Still, apply_psf, load_hkl_text,  # noqa: E402
                                 resolve_backend, simulate_still, to_numpy, truth_reflections)

DATA = ROOT / "tests/data/nanobragg"
TOL_MAX = 1e-5
TOL_TOTAL = 1e-6


def nanobragg_cases():
    from helpers.nanobragg_cases import MOSFLM_TO_DIALS, _nanobragg_case, _still, nanobragg_reciprocal_mosflm

    sf = load_hkl_text(DATA / "F_random_1ic6cell.hkl")
    a = MOSFLM_TO_DIALS @ nanobragg_reciprocal_mosflm()
    for name in ("case1_mono", "case2_poly_mosaic"):
        det, kwargs, _ = _nanobragg_case(name)
        yield name, _still(a, **kwargs), det, sf


def full_frame():
    import simulate as bench

    _, _, eiger, sf, b, config, oversample = next(c for c in bench.cases() if c[0] == "b")
    d = draw_frame(config, seed=3, dataset_index=0, frame_index=0)
    still = Still(Crystal(d.orientation @ b, ncells=d.ncells, mosaic_umats=d.mosaic_umats),
                  Pulse(d.wavelengths_A, weights=d.weights, fluence_photons_per_m2=d.fluence_photons_per_m2),
                  Numerics(oversample=oversample))
    yield "eiger4m_5x5_os2", still, eiger.panels[0], sf


def run(xp, still, det, sf):
    t0 = time.perf_counter()
    image = simulate_still(still, det, sf, xp=xp)
    blurred = apply_psf(image, 1.5, xp)
    if hasattr(xp, "cuda"):
        xp.cuda.Stream.null.synchronize()
    seconds = time.perf_counter() - t0
    truth = truth_reflections(still, det, sf, image=image, xp=xp)
    return to_numpy(image), to_numpy(blurred), truth, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="cupy", choices=("cupy", "stand-in"))
    ap.add_argument("--json")
    ap.add_argument("--no-full-frame", action="store_true")
    args = ap.parse_args()
    if args.backend == "stand-in":
        from helpers.fake_cupy import make_module

        xp, line = make_module(), "backend CuPy stand-in on the CPU (tests/helpers/fake_cupy.py)"
    else:
        xp, line = resolve_backend("cupy")
    print(line)
    results, ok = {}, True
    cases = list(nanobragg_cases()) + ([] if args.no_full_frame else list(full_frame()))
    for name, still, det, sf in cases:
        ref, ref_psf, ref_truth, t_np = run(np, still, det, sf)
        run(xp, still, det, sf)  # warm-up: kernels compile, tables go to the device
        dev, dev_psf, dev_truth, t_dev = run(xp, still, det, sf)
        r = {"max_rel_diff": float(np.abs(dev - ref).max() / ref.max()),
             "psf_max_rel_diff": float(np.abs(dev_psf - ref_psf).max() / ref_psf.max()),
             "total_ratio": float(dev.sum() / ref.sum()),
             "truth_rows": [len(ref_truth), len(dev_truth)],
             "truth_max_px_diff": float(np.abs(dev_truth.x_px - ref_truth.x_px).max()
                                        if len(dev_truth) == len(ref_truth) else np.inf),
             "seconds": {"numpy": t_np, "device": t_dev}, "speedup": t_np / t_dev}
        r["pass"] = bool(r["max_rel_diff"] <= TOL_MAX and r["psf_max_rel_diff"] <= TOL_MAX
                         and abs(r["total_ratio"] - 1) <= TOL_TOTAL and r["truth_max_px_diff"] <= 1e-3)
        ok &= r["pass"]
        results[name] = r
        print(f"{name}: max|diff|/max {r['max_rel_diff']:.2e} (PSF {r['psf_max_rel_diff']:.2e}), total ratio "
              f"{r['total_ratio']:.9f}, truth rows {r['truth_rows']}, image+PSF {t_np:.3f} s NumPy / {t_dev:.3f} s "
              f"device (x{r['speedup']:.1f}): {'ok' if r['pass'] else 'FAIL'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"backend": line, "cases": results, "pass": ok}, indent=1) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
