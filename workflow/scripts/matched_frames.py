import dataclasses

from braggflow.beam import Beam
from braggflow.gpu import claim_gpu
from braggflow.logs import logged
from braggflow.matched import experiment_wavelength_angstrom, write_matched_shard
from braggflow.outliers import read_outlier_pixels
from braggflow.overlay import OverlaySettings
from braggflow.formats.frames import read_frames_info
from braggflow.shards import SimulationSettings

with logged(snakemake.log[0]) as log:
    p, i = snakemake.params, snakemake.input
    info = read_frames_info(i.frames)
    beam = Beam.from_config(p.beam)
    settings = SimulationSettings.at_wavelength(p.simulation, experiment_wavelength_angstrom(info), beam)
    overlay, amplitudes = OverlaySettings.from_config(p.overlay), None
    if i.outliers:  # matched.outliers_from_frames: the experiment's own lone-pixel rate and amplitudes
        rate, amplitudes = read_outlier_pixels(i.outliers[0])
        overlay = dataclasses.replace(overlay, outlier_pixels_per_mpx=rate)
        log.info("lone-pixel outliers from %s: %.1f per Mpx, %d amplitudes", i.outliers[0], rate, len(amplitudes))
    backend = snakemake.config["simulation"]["backend"]  # where it runs, not what it computes: no param
    if backend != "numpy":
        log.info("GPU claimed for this job: %s", claim_gpu())
    stats = write_matched_shard(snakemake.output[0], info=info, mtz_path=i.mtz, water_table=i.water, beam=beam,
                                simulation=settings, overlay=overlay, outlier_amplitudes=amplitudes, backend=backend,
                                jet_thickness_m=p.jet_thickness_m, seed=p.seed, dataset=f"matched-{snakemake.wildcards.experiment}",
                                dataset_index=p.dataset_index, frames=range(*p.frames), structure=p.structure, log=log)
    log.info("wrote %s: %s", snakemake.output[0], stats)
