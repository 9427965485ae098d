# Sim-to-real: training frames simulated in an experiment's own detector and beam models (every panel, distance and
# wavelength from its frames file), a peak finder and the dispersion baseline trained on them (the "matched"
# model, peak_finder-matched). With matched.outliers_from_frames, the lone bright pixels of the training frames
# follow those measured in the experiment's frames (matched_outlier_pixels). With matched.calibrate (the default),
# calibrate_matched sets the beam, jet, PSF, crystal size, noise, outliers and photon cut from the experiment's
# frames and DIALS result; hand-set values are kept. GPU rules: calibrate_matched, matched_frames,
# train_matched_peak_finder. With matched.stand_in, matched_stand_in builds the crystal simulated: random atoms of
# the stated composition in the experiment's space group and DIALS' mean cell.


rule matched_stand_in:
    input:
        dials=lambda wc: stand_in_dials_input(wc.experiment),
    output:
        "results/matched/{experiment}/stand_in.pdb",
    params:
        stand_in=lambda wc: stand_in_params(wc.experiment),
    log:
        "logs/matched/{experiment}/stand_in.log",
    wildcard_constraints:
        experiment=stand_in_pattern(),
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/matched_stand_in.py"


rule matched_structure_factors:
    input:
        structure=lambda wc: matched_structure_file(wc.experiment),
        frames="results/experiments/{experiment}/frames.h5",
    output:
        mtz="results/matched/{experiment}/structure_factors.mtz",
    params:
        anomalous=config["structure_factors"]["anomalous"],
        d_min_margin=D_MIN_MARGIN,
        d_min_angstrom=lambda wc: matched_d_min_angstrom(wc.experiment),
    log:
        "logs/matched/{experiment}/structure_factors.log",
    benchmark:
        "results/benchmarks/matched_structure_factors/{experiment}.tsv"
    wildcard_constraints:
        experiment=matched_pattern(),
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/matched_structure_factors.py"


rule matched_outlier_pixels:
    input:
        frames="results/experiments/{experiment}/frames.h5",
    output:
        "results/matched/{experiment}/outlier_pixels.json",
    params:
        min_photons=lambda wc: matched_section_of(wc.experiment, "overlay")["outlier_photons"][0],
    log:
        "logs/matched/{experiment}/outlier_pixels.log",
    benchmark:
        "results/benchmarks/matched_outlier_pixels/{experiment}.tsv"
    wildcard_constraints:
        experiment=matched_pattern(),
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/matched_outlier_pixels.py"


rule calibrate_matched:
    input:
        frames="results/experiments/{experiment}/frames.h5",
        dials="results/experiments/{experiment}/dials/export.npz",
        mtz="results/matched/{experiment}/structure_factors.mtz",
        water=config["water"]["table"],
        outliers=lambda wc: matched_outlier_input(wc.experiment),
    output:
        calibration="results/matched/{experiment}/calibration.json",
        plot=report(
            "results/matched/{experiment}/calibration.png",
            caption="../workflow/report/calibration.rst",
            category="Predictions and evaluation",
            labels={"experiment": "{experiment}", "figure": "matched simulation calibration"},
        ),
    params:
        beam=lambda wc: Beam.params(matched_section_of(wc.experiment, "beam")),
        simulation=lambda wc: SimulationSettings.params(matched_section_of(wc.experiment, "simulation")),
        overlay=lambda wc: overlay_params(matched_section_of(wc.experiment, "overlay")),
        hand_set=lambda wc: matched_hand_set(wc.experiment),
        min_i_over_sigma=config["evaluation"]["min_i_over_sigma"],
        trial_frames=lambda wc: EXPERIMENTS[wc.experiment].matched["calibration_frames"],
        seed=config["seed"],
        dataset_index=lambda wc: EXPERIMENTS[wc.experiment].matched_seed_index,
    resources:
        gpu=simulation_gpus(),
    log:
        "logs/matched/{experiment}/calibration.log",
    benchmark:
        "results/benchmarks/calibrate_matched/{experiment}.tsv"
    wildcard_constraints:
        experiment=matched_pattern(),
    conda:
        simulation_conda_env()
    script:
        "../workflow/scripts/calibrate_matched.py"


rule matched_frames:
    input:
        frames="results/experiments/{experiment}/frames.h5",
        mtz="results/matched/{experiment}/structure_factors.mtz",
        water=config["water"]["table"],
        outliers=lambda wc: matched_outlier_input(wc.experiment),
        calibration=lambda wc: matched_calibration_input(wc.experiment),
    output:
        "results/matched/{experiment}/shard_{shard}.h5",
    params:
        beam=lambda wc: Beam.params(matched_section_of(wc.experiment, "beam")),
        simulation=lambda wc: SimulationSettings.params(matched_section_of(wc.experiment, "simulation")),
        overlay=lambda wc: overlay_params(matched_section_of(wc.experiment, "overlay")),
        jet_thickness_m=lambda wc: matched_jet_thickness_m(wc.experiment),
        seed=config["seed"],
        dataset_index=lambda wc: EXPERIMENTS[wc.experiment].matched_seed_index,
        frames=lambda wc: matched_shard_frames(wc.experiment, wc.shard),
        structure=lambda wc: EXPERIMENTS[wc.experiment].matched["structure"],
    resources:
        gpu=simulation_gpus(),
    log:
        "logs/matched/{experiment}/shard_{shard}.log",
    benchmark:
        "results/benchmarks/matched_frames/{experiment}/shard_{shard}.tsv"
    wildcard_constraints:
        experiment=matched_pattern(),
    conda:
        simulation_conda_env()
    script:
        "../workflow/scripts/matched_frames.py"


rule train_matched_peak_finder:
    input:
        shards=lambda wc: matched_shards(wc.experiment),
        calibration=lambda wc: matched_calibration_input(wc.experiment),
    output:
        weights="results/matched/{experiment}/peak_finder.pt",
        onnx="results/matched/{experiment}/peak_finder.onnx",
        card="results/matched/{experiment}/peak_finder.json",
        history="results/matched/{experiment}/peak_finder_history.tsv",
        spots="results/matched/{experiment}/peak_finder_test_spots.json",
    params:
        training=lambda wc: matched_training(wc.experiment).params(*TrainingSettings.PEAK_FINDER),
        seed=config["seed"],
    threads: config["training"]["threads"]
    resources:
        gpu=training_gpus(),
    log:
        "logs/matched/{experiment}/peak_finder.log",
    benchmark:
        "results/benchmarks/train_matched_peak_finder/{experiment}.tsv"
    wildcard_constraints:
        experiment=matched_pattern(),
    conda:
        training_conda_env()
    script:
        "../workflow/scripts/train_peak_finder.py"


rule matched_baseline_peak_finder:
    input:
        shards=lambda wc: matched_shards(wc.experiment),
        calibration=lambda wc: matched_calibration_input(wc.experiment),
    output:
        "results/matched/{experiment}/baseline_peaks.json",
    params:
        training=lambda wc: matched_training(wc.experiment).params(*TrainingSettings.BASELINE),
        seed=config["seed"],
    log:
        "logs/matched/{experiment}/baseline_peaks.log",
    benchmark:
        "results/benchmarks/matched_baseline_peak_finder/{experiment}.tsv"
    wildcard_constraints:
        experiment=matched_pattern(),
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/baseline_peak_finder.py"
