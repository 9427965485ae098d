from braggflow.figures.phases import plot_density_sections, plot_learning_curves, plot_shells
from braggflow.logs import logged

with logged(snakemake.log[0]) as log:
    i, o = snakemake.input, snakemake.output
    plot_learning_curves(o.curves, list(i.histories))
    plot_shells(o.shells, i.shells)
    plot_density_sections(o.density, i.sections, i.table)
    log.info("figures: %s, %s, %s", o.curves, o.shells, o.density)
