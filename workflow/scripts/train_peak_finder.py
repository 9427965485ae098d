from braggflow.calibration import training_params
from braggflow.logs import logged
from braggflow.settings import TrainingRun, TrainingSettings
from braggflow.ml.pipeline import run_peak_finder

with logged(snakemake.log[0]) as log:
    cfg = TrainingSettings.from_params(training_params(snakemake.params.training, snakemake.input))
    run = TrainingRun.from_job(snakemake.config, snakemake.threads, log)
    o = snakemake.output
    scores = run_peak_finder(list(snakemake.input.shards), weights=o.weights, onnx=o.onnx, card=o.card,
                             history=o.history, spots=o.spots, cfg=cfg, run=run, seed=snakemake.params.seed, log=log)
    log.info("test frames: %s", scores)
