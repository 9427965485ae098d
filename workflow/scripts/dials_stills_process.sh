#!/usr/bin/env bash
# dials.stills_process on one overlay shard or one experiment's input files, then the export of its results to
# plain arrays (DIALS' Python). Runs in DIALS' environment (Debian's /usr/bin programs, envs/dials.yaml or the
# DIALS container). Frames are numbered over the inputs in order (files, then frames within a file).
# BRAGGFLOW_WORKFLOW (the checkout, set by rules/common.smk) locates the DIALS-side programs: environment, not
# params, so that the same run in another directory reruns nothing.
set -euo pipefail
: "${BRAGGFLOW_WORKFLOW:?is set by rules/common.smk}"
read -ra inputs <<< "${snakemake_input[frames]}"
export_npz=$(realpath -m "${snakemake_output[export]}")
log=$(realpath -m "${snakemake_log[0]}")
out=$(dirname "$export_npz")
rm -rf "$out/dials" && mkdir -p "$out/dials"
printf '%s' "${snakemake_params[phil]}" > "$out/params.phil"
frames=()
for f in "${inputs[@]}"; do frames+=("$(realpath "$f")"); done
printf '%s\n' "${frames[@]}" > "$out/inputs.txt"
# Frame count: given for a shard; for an experiment, that of its imported frames file.
n_frames="${snakemake_params[n_frames]:-}"
if [ -z "$n_frames" ]; then
    n_frames=$(libtbx.python -c 'import sys; sys.path.insert(0, sys.argv[1])
from braggflow.formats.frames import frame_count
print(frame_count(sys.argv[2]))' "$BRAGGFLOW_WORKFLOW/src" "${snakemake_input[info]}")
fi
# Debian's DIALS 3.12 lacks the compiled xfel_mono_sim_ext that stills indexing imports (see
# workflow/dials/xfel_mono_sim_ext.py); only where it is missing does the empty stand-in go on the path.
if ! libtbx.python -c 'import xfel_mono_sim_ext' 2>/dev/null; then
    export PYTHONPATH="$BRAGGFLOW_WORKFLOW/workflow/dials${PYTHONPATH:+:$PYTHONPATH}"
fi
(cd "$out" && dials.stills_process "${frames[@]}" params.phil "mp.nproc=${snakemake[threads]}" \
    output.output_dir=dials) > "$log" 2>&1
libtbx.python "$BRAGGFLOW_WORKFLOW/workflow/scripts/dials_export.py" "$out/dials" "$n_frames" "$export_npz" "$out/inputs.txt" \
    >> "$log" 2>&1
