from braggflow.logs import logged
from braggflow.settings import TrainingRun, TrainingSettings
from braggflow.ml.pipeline import run_hit_classifier

with logged(snakemake.log[0]) as log:
    cfg = TrainingSettings.from_params(snakemake.params.training)
    run = TrainingRun.from_job(snakemake.config, snakemake.threads, log)
    o = snakemake.output
    metrics = run_hit_classifier(list(snakemake.input), weights=o.weights, onnx=o.onnx, card=o.card, history=o.history,
                                 cfg=cfg, run=run, seed=snakemake.params.seed, log=log)
    log.info("test frames: hit accuracy %.3f over %d frames", metrics["hit_accuracy"], metrics["n_test_frames"])
