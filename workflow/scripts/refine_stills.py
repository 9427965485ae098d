from braggflow.beam import Beam
from braggflow.formats.expt import write_expt
from braggflow.logs import logged
from braggflow.refine.shard import (RefinementSettings, StillPrior, refine_overlay_shard, torch_device,
                                    write_stills_table)
from braggflow.refine.stills import NoiseModel

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    # where it runs, not what it computes: read from the config, not params
    device = torch_device(snakemake.config["refinement"]["device"], snakemake.threads, log)
    rows, stills = refine_overlay_shard(
        snakemake.input.export, snakemake.input.frames, snakemake.input.mtz,
        StillPrior.from_config(p.prior, Beam.from_config(p.beam)), RefinementSettings.from_config(p.refinement),
        NoiseModel(p.noise["adu_per_photon"], p.noise["readout_noise_adu"]), p.spacegroup, tuple(p.cell),
        p.noise["saturation_adu"], device, log)
    write_stills_table(snakemake.output.table, rows)
    write_expt(snakemake.output.expt, stills)
    log.info("%d stills, %d refined models written", len(rows), len(stills))
