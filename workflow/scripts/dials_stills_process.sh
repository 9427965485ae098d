#!/usr/bin/env bash
# dials.stills_process on one overlay shard, then the export of its results to plain arrays (DIALS' Python).
# Runs in DIALS' environment (Debian's /usr/bin programs, envs/dials.yaml or the DIALS container).
set -euo pipefail
frames=$(realpath "${snakemake_input[frames]}")
export_npz=$(realpath -m "${snakemake_output[export]}")
log=$(realpath -m "${snakemake_log[0]}")
out=$(dirname "$export_npz")
rm -rf "$out/dials" && mkdir -p "$out/dials"
printf '%s' "${snakemake_params[phil]}" > "$out/params.phil"
# Debian's DIALS 3.12 lacks the compiled xfel_mono_sim_ext that stills indexing imports (see
# workflow/dials/xfel_mono_sim_ext.py); only where it is missing does the empty stand-in go on the path.
if ! libtbx.python -c 'import xfel_mono_sim_ext' 2>/dev/null; then
    export PYTHONPATH="$(dirname "${snakemake_params[shim]}")${PYTHONPATH:+:$PYTHONPATH}"
fi
(cd "$out" && dials.stills_process "$frames" params.phil "mp.nproc=${snakemake[threads]}" output.output_dir=dials) \
    > "$log" 2>&1
libtbx.python "${snakemake_params[export_script]}" "$out/dials" "${snakemake_params[n_frames]}" "$export_npz" \
    >> "$log" 2>&1
