from braggflow.gpu import claim_gpu
from braggflow.logs import logged
from braggflow.ml.predict import predict_file

with logged(snakemake.log[0]) as log:
    if snakemake.params.training["device"] != "cpu":
        log.info("GPU claimed for this job: %s", claim_gpu())
    predict_file(snakemake.input.frames, snakemake.input.card, snakemake.input.weights, snakemake.output[0],
                 training=snakemake.params.training, log=log)
