from braggflow.calibration import calibrate, write_calibration
from braggflow.figures.calibration import plot_calibration
from braggflow.gpu import claim_gpu
from braggflow.logs import logged

with logged(snakemake.log[0]) as log:
    p, i = snakemake.params, snakemake.input
    backend = snakemake.config["simulation"]["backend"]  # where it runs, not what it computes: no param
    if backend != "numpy":
        log.info("GPU claimed for this job: %s", claim_gpu())
    report = calibrate(frames_path=i.frames, export_npz=i.dials, mtz_path=i.mtz, water_table=i.water,
                       outliers_json=i.outliers[0] if i.outliers else None, beam_cfg=p.beam, simulation=p.simulation,
                       overlay=p.overlay, fixed=dict(p.hand_set), min_i_over_sigma=p.min_i_over_sigma,
                       trial_frames=p.trial_frames, seed=p.seed, dataset_index=p.dataset_index, backend=backend,
                       log=log)
    plot_calibration(snakemake.output.plot, report, title=snakemake.wildcards.experiment)
    write_calibration(snakemake.output.calibration, report)
    log.info("calibrated settings: %s", report["settings"])
    for line in report["summary"]:
        log.info("%s", line)
