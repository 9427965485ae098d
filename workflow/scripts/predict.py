from braggflow.gpu import claim_gpu
from braggflow.logs import logged
from braggflow.ml.predict import predict_file
from braggflow.settings import TrainingRun, TrainingSettings

with logged(snakemake.log[0]) as log:
    run = TrainingRun.from_job(snakemake.config, snakemake.threads)
    if run.device != "cpu":
        log.info("GPU claimed for this job: %s", claim_gpu())
    predict_file(snakemake.input.frames, snakemake.input.card, snakemake.input.weights, snakemake.output[0],
                 training=TrainingSettings.from_params(snakemake.params.training), run=run, log=log)
