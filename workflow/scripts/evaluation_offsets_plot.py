from braggflow.evaluate import offsets_by_resolution, read_tables
from braggflow.figures.evaluation import plot_offsets
from braggflow.logs import logged

with logged(snakemake.log[0]) as log:
    offsets = read_tables(list(snakemake.input))
    bins = offsets_by_resolution(offsets, snakemake.params.evaluation["resolution_bins"]) if len(offsets) else offsets
    plot_offsets(snakemake.output[0], bins, f"Peak offsets by resolution: {snakemake.wildcards.experiment}")
    log.info("%d matched peaks", len(offsets))
