from braggflow.logs import logged
from braggflow.figures.training import plot_learning_curves_of
from braggflow.ml.pipeline import peak_finding_table, write_tsv

with logged(snakemake.log[0]) as log:
    i, datasets = snakemake.input, snakemake.params.datasets
    table = peak_finding_table(datasets, i.cards, i.baselines, i.hit_cards)
    write_tsv(snakemake.output.table, table)
    histories = {f"{d} peak finder": h for d, h in zip(datasets, i.histories)}
    histories |= {f"{d} hit classifier": h for d, h in zip(datasets, i.hit_histories)}
    plot_learning_curves_of(snakemake.output.curves, histories, f"{snakemake.wildcards.structure}: learning curves")
    log.info("\n%s", table.to_string())
