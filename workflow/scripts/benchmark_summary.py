from braggflow.benchmarks import collect, write_summary
from braggflow.logs import logged

with logged(snakemake.log[0]):
    write_summary(snakemake.output.table, snakemake.output.plot, collect(snakemake.input))
