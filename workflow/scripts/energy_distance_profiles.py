from braggflow.logs import logged
from braggflow.ml.pipeline import write_profiles
from braggflow.settings import TrainingSettings

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    counts = write_profiles(snakemake.output[0], list(snakemake.input), energies_kev=p.energies_kev,
                            distances_m=p.camera_lengths_m, cfg=TrainingSettings.from_params(p.training), seed=p.seed, log=log)
    log.info("wrote %s: frames per split %s", snakemake.output[0], counts)
