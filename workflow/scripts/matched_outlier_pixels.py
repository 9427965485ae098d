from braggflow.logs import logged
from braggflow.outliers import measure_outlier_pixels, write_outlier_pixels

with logged(snakemake.log[0]) as log:
    stats = measure_outlier_pixels(snakemake.input.frames, snakemake.params.min_photons)
    write_outlier_pixels(snakemake.output[0], stats)
    log.info("%s: %.1f isolated pixels >= %g photons per Mpx per frame (per frame %s), median %.1f photons",
             snakemake.input.frames, stats["per_mpx"], stats["min_photons"], stats["per_frame"],
             stats["photons"][len(stats["photons"]) // 2] if stats["photons"] else 0.0)
    if stats["warning"]:
        log.warning("%s", stats["warning"])
