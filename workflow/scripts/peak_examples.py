from braggflow.logs import logged
from braggflow.figures.training import plot_peak_examples
from braggflow.settings import TrainingSettings

with logged(snakemake.log[0]) as log:
    i, p, w = snakemake.input, snakemake.params, snakemake.wildcards
    cfg = TrainingSettings.from_params(p.training)
    plot_peak_examples(snakemake.output[0], list(i.shards), i.spots, i.baseline, cfg, p.seed, cfg.example_frames, f"{w.structure} {w.dataset}: test frames, truth and found peaks")
    log.info("wrote %s", snakemake.output[0])
