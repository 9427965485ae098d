from braggflow.formats.expt import write_expt
from braggflow.logs import logged
from braggflow.refine.shard import (RefinementSettings, experiment_prior, refine_experiment_frames, torch_device,
                                    write_stills_table)
from braggflow.refine.stills import NoiseModel

with logged(snakemake.log[0]) as log:
    p, i = snakemake.params, snakemake.input
    # where it runs, not what it computes: read from the config, not params
    device = torch_device(snakemake.config["refinement"]["device"], snakemake.threads, log)
    prior, psf_fwhm_um, readout_photons = experiment_prior(p.prior, i.calibration[0] if i.calibration else None)
    log.info("model: %s; PSF %.4g um FWHM; readout noise %.3g photons", prior, psf_fwhm_um, readout_photons)
    rows, stills, _, _ = refine_experiment_frames(
        i.export, i.frames, prior, RefinementSettings.from_config(p.refinement), NoiseModel(1.0, readout_photons),
        p.spacegroup, tuple(p.cell), None, psf_fwhm_um, device=device, log=log)
    write_stills_table(snakemake.output.table, rows)
    write_expt(snakemake.output.expt, stills)
    log.info("%d stills, %d refined models written", len(rows), len(stills))
