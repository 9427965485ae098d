from braggflow.beam import Beam
from braggflow.gpu import claim_gpu
from braggflow.logs import logged
from braggflow.matched import experiment_wavelength_angstrom, write_matched_shard
from braggflow.overlay import OverlaySettings
from braggflow.panels import read_frames_info
from braggflow.shards import SimulationSettings

with logged(snakemake.log[0]) as log:
    p, i = snakemake.params, snakemake.input
    info = read_frames_info(i.frames)
    beam = Beam.from_config(p.beam)
    settings = SimulationSettings.at_wavelength(p.simulation, experiment_wavelength_angstrom(info), beam)
    if settings.backend != "numpy":
        log.info("GPU claimed for this job: %s", claim_gpu())
    stats = write_matched_shard(snakemake.output[0], info=info, mtz_path=i.mtz, water_table=i.water, beam=beam,
                                simulation=settings, overlay=OverlaySettings.from_config(p.overlay),
                                jet_thickness_m=p.jet_thickness_m, seed=p.seed, dataset=f"matched-{snakemake.wildcards.experiment}",
                                dataset_index=p.dataset_index, frames=range(*p.frames), structure=p.structure, log=log)
    log.info("wrote %s: %s", snakemake.output[0], stats)
