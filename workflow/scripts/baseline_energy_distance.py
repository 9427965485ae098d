from braggflow.logs import logged
from braggflow.ml.pipeline import run_baseline_energy_distance

with logged(snakemake.log[0]) as log:
    metrics = run_baseline_energy_distance(snakemake.input[0], out=snakemake.output[0], seed=snakemake.params.seed)
    log.info("test frames: energy %.3f, camera length %.3f", metrics["energy_accuracy"], metrics["distance_accuracy"])
