import dataclasses

from braggflow.beam import Beam
from braggflow.calibration import calibrated, read_calibration
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
    beam_cfg, sim_cfg, overlay_cfg, jet_m = p.beam, p.simulation, p.overlay, p.jet_thickness_m
    from_frames = bool(i.outliers)
    if i.calibration:  # matched.calibrate: the settings fitted to the experiment's frames (hand-set ones kept)
        fitted = read_calibration(i.calibration[0])
        beam_cfg, sim_cfg, overlay_cfg, jet_m = calibrated(fitted, beam=beam_cfg, simulation=sim_cfg,
                                                           overlay=overlay_cfg)
        from_frames = fitted["outliers_from_frames"]
        log.info("calibrated settings from %s: %s", i.calibration[0], fitted)
    beam = Beam.from_config(beam_cfg)
    settings = SimulationSettings.at_wavelength(sim_cfg, experiment_wavelength_angstrom(info), beam)
    overlay, amplitudes = OverlaySettings.from_config(overlay_cfg), None
    if from_frames:  # the experiment's own lone-pixel amplitudes, at its rate (calibrated: the excess over noise)
        rate, amplitudes = read_outlier_pixels(i.outliers[0])
        if not i.calibration:
            overlay = dataclasses.replace(overlay, outlier_pixels_per_mpx=rate)
        log.info("lone-pixel outliers from %s: %.1f per Mpx, %d amplitudes", i.outliers[0],
                 overlay.outlier_pixels_per_mpx, len(amplitudes))
    backend = snakemake.config["simulation"]["backend"]  # where it runs, not what it computes: no param
    if backend != "numpy":
        log.info("GPU claimed for this job: %s", claim_gpu())
    stats = write_matched_shard(snakemake.output[0], info=info, mtz_path=i.mtz, water_table=i.water, beam=beam,
                                simulation=settings, overlay=overlay, outlier_amplitudes=amplitudes, backend=backend,
                                jet_thickness_m=jet_m, seed=p.seed, dataset=f"matched-{snakemake.wildcards.experiment}",
                                dataset_index=p.dataset_index, frames=range(*p.frames), structure=p.structure, log=log)
    log.info("wrote %s: %s", snakemake.output[0], stats)
