from braggflow.logs import logged
from braggflow.figures.training import plot_energy_distance_confusions, plot_learning_curves_of
from braggflow.ml.pipeline import energy_distance_table, write_tsv

with logged(snakemake.log[0]) as log:
    i, o = snakemake.input, snakemake.output
    table = energy_distance_table(i.card, i.baseline)
    write_tsv(o.table, table)
    plot_energy_distance_confusions(o.confusion, i.card, i.baseline)
    plot_learning_curves_of(o.curves, {"energy / camera length": i.history},
                            f"{snakemake.wildcards.structure}: energy and camera-length model")
    log.info("\n%s", table.to_string())
