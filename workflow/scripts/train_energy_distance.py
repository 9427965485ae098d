from braggflow.logs import logged
from braggflow.settings import TrainingRun, TrainingSettings
from braggflow.ml.pipeline import run_energy_distance

with logged(snakemake.log[0]) as log:
    cfg = TrainingSettings.from_params(snakemake.params.training)
    run = TrainingRun.from_job(snakemake.config, snakemake.threads, log)
    o = snakemake.output
    metrics = run_energy_distance(snakemake.input[0], weights=o.weights, onnx=o.onnx, card=o.card, history=o.history,
                                  cfg=cfg, run=run, seed=snakemake.params.seed, log=log)
    log.info("test frames: energy %.3f, camera length %.3f", metrics["energy_accuracy"], metrics["distance_accuracy"])
