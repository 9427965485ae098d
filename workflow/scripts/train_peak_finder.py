from braggflow.gpu import claim_gpu
from braggflow.logs import logged
from braggflow.ml.pipeline import run_peak_finder

with logged(snakemake.log[0]) as log:
    if snakemake.params.training["device"] != "cpu":
        log.info("GPU claimed for this job: %s", claim_gpu())
    o = snakemake.output
    scores = run_peak_finder(list(snakemake.input), weights=o.weights, card=o.card, history=o.history, spots=o.spots,
                             cfg=snakemake.params.training, seed=snakemake.params.seed, log=log)
    log.info("test frames: %s", scores)
