import pandas as pd

from braggflow.dials import dataset_scores
from braggflow.figures.dials import plot_scores
from braggflow.io import atomic_path
from braggflow.logs import logged
from braggflow.formats.tables import read_table

with logged(snakemake.log[0]) as log:
    per_frame, per_refl = [], []
    for path, dataset in zip(snakemake.input.tables, snakemake.params.datasets, strict=True):
        f, r = read_table(path, "frames"), read_table(path, "reflections")
        f.insert(0, "dataset", dataset)
        r.insert(0, "dataset", dataset)
        per_frame.append(f)
        per_refl.append(r)
    frames, refl = pd.concat(per_frame, ignore_index=True), pd.concat(per_refl, ignore_index=True)
    structure = snakemake.wildcards.structure
    summary = pd.DataFrame([dataset_scores(frames[frames.dataset == d], refl[refl.dataset == d], structure, d)
                            for d in dict.fromkeys(snakemake.params.datasets)])
    with atomic_path(snakemake.output.summary) as tmp:
        summary.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    with atomic_path(snakemake.output.frames) as tmp:
        frames.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    plot_scores(snakemake.output.plot, summary, frames)
    log.info("\n%s", summary.to_string())
