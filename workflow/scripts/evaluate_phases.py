from braggflow.ml.determinism import pin_cpu_kernels

pin_cpu_kernels()

from braggflow.logs import logged
from braggflow.phases.evaluate import run_evaluation
from braggflow.settings import PhaseEvaluationSettings

with logged(snakemake.log[0]) as log:
    i, o = snakemake.input, snakemake.output
    table = run_evaluation(i.dataset, list(zip(i.cards, i.weights)),
                           PhaseEvaluationSettings.from_params(snakemake.params.evaluation), snakemake.params.seed,
                           table=o.table, shells=o.shells, samples=o.samples, sections=o.sections, log=log)
