# Sim-to-real: training frames simulated in an experiment's own detector and beam models (every panel, distance and
# wavelength from its frames file), a peak finder and the dispersion baseline trained on them (the "matched"
# model, peak_finder-matched). With matched.outliers_from_frames, the lone bright pixels of the training frames
# follow those measured in the experiment's frames (matched_outlier_pixels). GPU rules: matched_frames,
# train_matched_peak_finder.


rule matched_structure_factors:
    input:
        structure=lambda wc: config["structures"][EXPERIMENTS[wc.experiment].matched["structure"]]["file"],
        frames="results/experiments/{experiment}/frames.h5",
    output:
        mtz="results/matched/{experiment}/structure_factors.mtz",
    params:
        anomalous=config["structure_factors"]["anomalous"],
        d_min_margin=D_MIN_MARGIN,
        d_min_angstrom=lambda wc: config["structures"][EXPERIMENTS[wc.experiment].matched["structure"]].get(
            "d_min_angstrom"
        ),
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


rule matched_frames:
    input:
        frames="results/experiments/{experiment}/frames.h5",
        mtz="results/matched/{experiment}/structure_factors.mtz",
        water=config["water"]["table"],
        outliers=lambda wc: matched_outlier_input(wc.experiment),
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
        lambda wc: matched_shards(wc.experiment),
    output:
        weights="results/matched/{experiment}/peak_finder.pt",
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
        lambda wc: matched_shards(wc.experiment),
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
