import pandas as pd

from braggflow.evaluate import classifier_table, offsets_by_resolution, rank_models, read_tables
from braggflow.evaluate import summarize
from braggflow.figures.evaluation import plot_summary
from braggflow.io import atomic_path
from braggflow.logs import logged


def write(table, path):
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")


with logged(snakemake.log[0]) as log:
    i, p = snakemake.input, snakemake.params
    frames, offsets = read_tables(i.frames), read_tables(i.offsets)
    summary = rank_models(summarize(frames, offsets))
    summary.insert(1, "input", summary.experiment.map(lambda x: "shifted simulation" if p.shifted[x] else "file"))
    write(summary, snakemake.output.summary)
    write(offsets_by_resolution(offsets, p.evaluation["resolution_bins"]), snakemake.output.bins)
    plot_summary(snakemake.output.plot, summary, p.evaluation["min_i_over_sigma"])
    hits, ed = iter(i.hits), iter(i.energy_distance)
    truth, dials_labels = iter(i.truth), iter(i.hit_labels)
    tables = []
    for x, frames_file in zip(p.experiments, i.frames_files, strict=True):
        hit_preds = {m: next(hits) for m in p.hit_models[x]}
        labels = p.hit_frames[x]
        tables.append(classifier_table(x, hit_preds, next(ed) if p.energy_distance[x] else None,
                                       next(truth) if p.shifted[x] else None, frames_file, labels,
                                       next(dials_labels) if labels == "dials_indexed" else None))
    classifiers = pd.concat(tables, ignore_index=True)
    write(classifiers, snakemake.output.classifiers)
    log.info("\n%s", summary.to_string())
    for row in summary[summary.out_of_distribution_frames > 0].drop_duplicates(["experiment", "model"]).itertuples():
        log.warning("%s: the %s peak finder extrapolates on %d of %d frames (their background is unlike its "
                    "training frames'): its rows there describe no trained regime", row.experiment, row.model,
                    row.out_of_distribution_frames, row.frames)
    for row in classifiers[classifiers.out_of_distribution_frames > 0].itertuples():
        log.warning("%s: %s extrapolates on %d of %d frames (unlike its training frames)", row.experiment,
                    row.model, row.out_of_distribution_frames, row.frames)
