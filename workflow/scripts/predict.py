from braggflow.ml.determinism import pin_cpu_kernels

pin_cpu_kernels()  # before anything imports torch: the kernels training ran on (braggflow.ml.determinism)

from braggflow.gpu import claim_gpu  # noqa: E402
from braggflow.logs import logged  # noqa: E402
from braggflow.ml.predict import predict_file  # noqa: E402
from braggflow.settings import TrainingRun, TrainingSettings

with logged(snakemake.log[0]) as log:
    run = TrainingRun.from_job(snakemake.config, snakemake.threads)
    if run.device != "cpu":
        log.info("GPU claimed for this job: %s", claim_gpu())
    predict_file(snakemake.input.frames, snakemake.input.card, snakemake.input.weights, snakemake.output[0],
                 training=TrainingSettings.from_params(snakemake.params.training), run=run, log=log)
