import pandas as pd

from braggflow.figures.refinement import plot_observed_offsets
from braggflow.formats.dials_export import read_dials_export
from braggflow.io import atomic_path
from braggflow.logs import logged
from braggflow.refine.scores import observed_by_resolution, observed_offsets
from braggflow.refine.shard import experiment_prior

with logged(snakemake.log[0]) as log:
    p, i = snakemake.params, snakemake.input
    prior, _, _ = experiment_prior(p.prior, i.calibration[0] if i.calibration else None)
    offsets = observed_offsets(read_dials_export(i.export), pd.read_csv(i.stills, sep="\t"), prior)
    by_bin = observed_by_resolution(offsets, p.resolution_bins)
    for table, out in ((offsets, snakemake.output.offsets), (by_bin, snakemake.output.by_resolution)):
        with atomic_path(out) as tmp:
            table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    plot_observed_offsets(snakemake.output.plot, by_bin[by_bin.bin != "all"], snakemake.wildcards.experiment)
    log.info("%d spots paired with DIALS' predictions\n%s", len(offsets), by_bin.to_string())
