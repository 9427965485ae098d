from braggflow.evaluate import evaluate_predictions
from braggflow.io import atomic_path
from braggflow.logs import logged
from braggflow.settings import EvaluationSettings

with logged(snakemake.log[0]) as log:
    i, w = snakemake.input, snakemake.wildcards
    frames, offsets = evaluate_predictions(
        experiment=w.experiment, model=f"peak_finder-{w.dataset}", frames_path=i.frames, peak_pred=i.pred,
        baseline_json=i.baseline, dials_export=i.dials, energy_distance_pred=(i.energy_distance or [None])[0],
        truth_source=(i.truth or [None])[0], cfg=EvaluationSettings.from_params(snakemake.params.evaluation), log=log)
    for table, out in ((frames, snakemake.output.frames), (offsets, snakemake.output.offsets)):
        with atomic_path(out) as tmp:
            table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
