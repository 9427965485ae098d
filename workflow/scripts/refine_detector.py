from braggflow.beam import Beam
from braggflow.logs import logged
from braggflow.refine.shard import (RefinementSettings, StillPrior, refine_overlay_detector, torch_device,
                                    write_detector_record)
from braggflow.refine.stills import NoiseModel

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    device = torch_device(snakemake.config["refinement"]["device"], snakemake.threads, log)  # where, not what
    record = refine_overlay_detector(
        list(snakemake.input.exports), list(snakemake.input.frames), snakemake.input.mtz,
        StillPrior.from_config(p.prior, Beam.from_config(p.beam)), RefinementSettings.from_config(p.refinement),
        NoiseModel(p.noise["adu_per_photon"], p.noise["readout_noise_adu"]), p.spacegroup, tuple(p.cell),
        p.noise["saturation_adu"], device)
    write_detector_record(snakemake.output[0], record)
    log.info("detector: %s", record)
