from braggflow.logs import logged
from braggflow.figures.structure_factors import plot_resolution_shells
from braggflow.sf import summarise_mtz_files, write_summary

with logged(snakemake.log[0]):
    rows, shells = summarise_mtz_files(snakemake.input.mtz, snakemake.params.labels)
    write_summary(snakemake.output.table, rows)
    plot_resolution_shells(snakemake.output.shells, shells)
