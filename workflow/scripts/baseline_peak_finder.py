from braggflow.calibration import training_params
from braggflow.logs import logged
from braggflow.ml.pipeline import run_baseline_peaks
from braggflow.settings import TrainingSettings

with logged(snakemake.log[0]) as log:
    scores = run_baseline_peaks(list(snakemake.input.shards), out=snakemake.output[0],
                                cfg=TrainingSettings.from_params(training_params(snakemake.params.training, snakemake.input)),
                                seed=snakemake.params.seed, log=log)
    log.info("test frames: %s", scores)
