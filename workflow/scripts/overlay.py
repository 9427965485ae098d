from braggflow.logs import logged
from braggflow.overlay import OverlaySettings, write_overlay

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    stats = write_overlay(snakemake.output[0], peaks_path=snakemake.input.peaks, water_path=snakemake.input.water,
                          settings=OverlaySettings.from_config(p.overlay), seed=p.seed,
                          dataset_index=p.dataset_index, nominal_fluence_per_m2=p.nominal_fluence_per_m2, log=log)
    log.info("wrote %s: %s", snakemake.output[0], stats)
