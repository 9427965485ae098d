#!/usr/bin/env bash
# The GPU check: one script a GPU machine (H100/H200) runs in under 8 minutes from a copy of the repository,
# writing one JSON of figures (gpu_check.json in --out):
#   1. the machine: nvidia-smi, CUDA, versions of Python, NumPy, CuPy, PyTorch
#   2. CuPy against NumPy (benchmarks/gpu_parity.py): the nanoBragg reference cases and a full random Eiger 4M
#      frame, image, PSF and truth table within float32's tolerance
#   3. simulation frames/s (benchmarks/simulate.py --backend cupy): (a) 1 source x 1 domain, (b) 5 x 5 at
#      oversample 2 on an Eiger 4M, (c) 100 channels x 25 domains on the 64-panel LCLS CSPAD
#   4. the overlay (noise, water, detector response): it runs on the CPU in the workflow; timed there
#   5. inference (benchmarks/infer_throughput.py --device cuda): the U-Net and the cell U-Net peak finders, the
#      hit classifier, the energy / camera-length model, and the dispersion finder for the ratio
#   6. training throughput of the peak finder (benchmarks/train_throughput.py --device cuda)
# Each step has its own time limit; one that fails or runs out is recorded as such and the others go on.
#
# The machine is expected to have CUDA, PyTorch, CuPy, h5py, pandas and scikit-learn. What it lacks of the
# project's pure-Python and binary dependencies travels as wheels, downloaded beforehand on a machine with
# internet access for the target's Python version, and installed from that folder without an index:
#   pip download --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
#       -d wheels gemmi pyFAI hdf5plugin snakemake onnx onnxscript onnxruntime
#   bash benchmarks/gpu_check.sh --wheels wheels --out gpu_figures
# The project itself is not installed: the steps run with PYTHONPATH=src.
#
#   --dry-run   the same steps on the CPU at the smallest sizes (the CuPy stand-in of tests/helpers for the
#               device path, torch on the CPU): tests/test_gpu_check.py runs it, so the script cannot rot
#   --out DIR   where gpu_check.json and each step's log go (default: $OUT, else ./gpu_check)
#   --wheels D  pip-install the wheels in D first (--no-index)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=0
OUT_DIR="${OUT:-$PWD/gpu_check}"
WHEELS=""
PYTHON="${PYTHON:-python3}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --out) OUT_DIR="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    -h|--help) sed -n '2,28p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT_DIR/steps"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
cd "$ROOT"

if [[ -n "$WHEELS" ]]; then
  "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" "$WHEELS"/*.whl \
    > "$OUT_DIR/steps/wheels.log" 2>&1 || echo "gpu_check.sh: installing wheels from $WHEELS failed (see steps/wheels.log)" >&2
fi

if [[ $DRY == 1 ]]; then
  PARITY_ARGS=(--backend stand-in --no-full-frame)
  SIM_ARGS=(--backend numpy --cases a --repeats 1)
  INFER_ARGS=(--device cpu --threads 1 --frames 1 --engines torch --architectures cell_unet --workers 1)
  TRAIN_ARGS=(--device cpu --frames 1)
  OVERLAY_FRAMES=1
  LIMIT=(300 300 300 300 300)
else
  PARITY_ARGS=(--backend cupy)
  SIM_ARGS=(--backend cupy --cases abc --repeats 2 --panels 8)  # (c): 8 of 64 panels, scaled
  INFER_ARGS=(--device cuda --threads 1 --frames 20 --engines torch --workers 1)
  TRAIN_ARGS=(--device cuda --frames 20)
  OVERLAY_FRAMES=3
  LIMIT=(110 140 50 90 60)  # seconds per step: parity, simulate, overlay, inference, training (< 8 min in all)
fi

# step NAME LIMIT_S COMMAND...: its stdout and stderr to steps/NAME.log, its exit status and seconds to steps/NAME.rc
step() {
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit} s): $*"
  timeout -k 10 "$limit" "$@" > "$OUT_DIR/steps/$name.log" 2>&1
  local rc=$?
  echo "$rc $((SECONDS - t0))" > "$OUT_DIR/steps/$name.rc"
  tail -n 12 "$OUT_DIR/steps/$name.log"
  [[ $rc == 0 ]] || echo "   -> $name exited $rc (124: ran out of time)"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "no nvidia-smi"; } \
  > "$OUT_DIR/steps/machine.log"
"$PYTHON" - >> "$OUT_DIR/steps/machine.log" 2>&1 <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("numpy", "cupy", "torch", "h5py", "gemmi", "pyFAI", "onnxruntime"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"))
    except Exception as exc:  # noqa: BLE001 - a report
        print(name, "missing:", type(exc).__name__, exc)
try:
    import torch
    print("torch.cuda", torch.cuda.is_available(), torch.version.cuda,
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as exc:  # noqa: BLE001
    print("torch.cuda error", exc)
EOF

step parity "${LIMIT[0]}" "$PYTHON" benchmarks/gpu_parity.py "${PARITY_ARGS[@]}" --json "$OUT_DIR/steps/parity.json"
step simulate "${LIMIT[1]}" "$PYTHON" benchmarks/simulate.py "${SIM_ARGS[@]}" --json "$OUT_DIR/steps/simulate.json"
step overlay "${LIMIT[2]}" "$PYTHON" benchmarks/overlay_frame.py --frames "$OVERLAY_FRAMES" --json "$OUT_DIR/steps/overlay.json"
step inference "${LIMIT[3]}" "$PYTHON" benchmarks/infer_throughput.py "${INFER_ARGS[@]}"
step training "${LIMIT[4]}" "$PYTHON" benchmarks/train_throughput.py "${TRAIN_ARGS[@]}"

"$PYTHON" - "$OUT_DIR" "$DRY" <<'EOF'
import json, sys, time
from pathlib import Path

out, dry = Path(sys.argv[1]), sys.argv[2] == "1"
steps = {}
for rc_file in sorted((out / "steps").glob("*.rc")):
    name = rc_file.stem
    rc, seconds = (int(v) for v in rc_file.read_text().split())
    entry = {"exit": rc, "seconds": seconds, "timed_out": rc in (124, 137)}
    figures = out / "steps" / f"{name}.json"
    if figures.exists():
        entry["figures"] = json.loads(figures.read_text())
    entry["output"] = (out / "steps" / f"{name}.log").read_text().splitlines()[-40:]
    steps[name] = entry
report = {"dry_run": dry, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "machine": (out / "steps" / "machine.log").read_text().splitlines(), "steps": steps,
          "ok": all(s["exit"] == 0 for s in steps.values())}
(out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
print(f"wrote {out / 'gpu_check.json'}: " + ", ".join(f"{k} {'ok' if v['exit'] == 0 else 'exit ' + str(v['exit'])}"
                                                     f" ({v['seconds']} s)" for k, v in steps.items()))
sys.exit(0 if report["ok"] else 1)
EOF
