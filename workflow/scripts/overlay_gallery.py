from braggflow.logs import logged
from braggflow.figures.overlays import plot_gallery

with logged(snakemake.log[0]):
    w = snakemake.wildcards
    plot_gallery(snakemake.output[0], list(snakemake.input), snakemake.params.frames, title=f"{w.structure} {w.dataset}")
