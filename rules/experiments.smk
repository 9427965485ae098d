# Experimental inputs: the shifted simulation (a forward model the models were not trained on), frames read from
# files (dxtbx for any format DIALS reads, h5py for HDF5 + .geom), DIALS on them, one prediction file per
# (model x input; the matrix models, the experiment-matched one of rules/matched.smk, or both), and the
# peak-position evaluator. GPU rules: simulate_shifted, predict.


rule shifted_water_background:
    input:
        table=config["water"]["table"],
    output:
        h5="results/experiments/{experiment}/water.h5",
        png="results/experiments/{experiment}/water.png",
    params:
        geometry=lambda wc: shifted_geometry_of(wc.experiment).as_dict(),
        beam=BEAM,
        jet_thickness_m=lambda wc: EXPERIMENTS[wc.experiment].shift["jet_thickness_um"] * 1e-6,
        name=lambda wc: wc.experiment,
    log:
        "logs/experiments/{experiment}/water.log",
    wildcard_constraints:
        experiment=experiments_pattern(kinds=("shifted_simulation",)),
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/water_background.py"


rule simulate_shifted:
    input:
        mtz=lambda wc: sf_mtz(EXPERIMENTS[wc.experiment].structure, DATASETS[EXPERIMENTS[wc.experiment].like].energy),
    output:
        "results/experiments/{experiment}/bragg.h5",
    params:
        geometry=lambda wc: shifted_geometry_of(wc.experiment).as_dict(),
        beam=BEAM,
        simulation=lambda wc: SimulationSettings.params(shifted_section(wc.experiment, "simulation")),
        seed=config["seed"],
        dataset_index=lambda wc: EXPERIMENTS[wc.experiment].seed_index,
        frames=lambda wc: (0, EXPERIMENTS[wc.experiment].frames),
        dataset=lambda wc: wc.experiment,
        structure=lambda wc: EXPERIMENTS[wc.experiment].structure,
    resources:
        gpu=simulation_gpus(),
    log:
        "logs/experiments/{experiment}/simulate.log",
    benchmark:
        "results/benchmarks/simulate_shifted/{experiment}.tsv"
    wildcard_constraints:
        experiment=experiments_pattern(kinds=("shifted_simulation",)),
    conda:
        simulation_conda_env()
    script:
        "../workflow/scripts/simulate.py"


rule overlay_shifted:
    input:
        peaks="results/experiments/{experiment}/bragg.h5",
        water="results/experiments/{experiment}/water.h5",
    output:
        "results/experiments/{experiment}/{experiment}.h5",
    params:
        overlay=lambda wc: overlay_params(shifted_section(wc.experiment, "overlay")),
        seed=config["seed"],
        dataset_index=lambda wc: EXPERIMENTS[wc.experiment].seed_index,
        nominal_fluence_per_m2=nominal_fluence_per_m2(),
    log:
        "logs/experiments/{experiment}/overlay.log",
    wildcard_constraints:
        experiment=experiments_pattern(kinds=("shifted_simulation",)),
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/overlay.py"


rule import_frames_dxtbx:
    input:
        lambda wc: dials_inputs(wc.experiment),
    output:
        "results/experiments/{experiment}/frames.h5",
    params:
        gain=lambda wc: experiment_gain(wc.experiment),
        border=lambda wc: EXPERIMENTS[wc.experiment].untrusted_border_px,
    log:
        "logs/experiments/{experiment}/import.log",
    wildcard_constraints:
        experiment=experiments_pattern(kinds=("shifted_simulation", "file"), readers=("dxtbx",)),
    conda:
        "../envs/dials.yaml"
    container:
        config["dials"]["container"]
    shell:
        "libtbx.python $BRAGGFLOW_WORKFLOW/workflow/scripts/dxtbx_import.py --untrusted-border-px={params.border} {output} {params.gain} {input} > {log} 2>&1"


rule import_frames_hdf5:
    input:
        lambda wc: EXPERIMENTS[wc.experiment].files,
    output:
        frames="results/experiments/{experiment}/frames.h5",
        nxmx="results/experiments/{experiment}/dials_input.h5",
    params:
        dataset_path=lambda wc: EXPERIMENTS[wc.experiment].dataset_path,
        geometry=lambda wc: EXPERIMENTS[wc.experiment].geometry,
        adu_per_photon=lambda wc: EXPERIMENTS[wc.experiment].adu_per_photon,
        border=lambda wc: EXPERIMENTS[wc.experiment].untrusted_border_px,
    log:
        "logs/experiments/{experiment}/import.log",
    wildcard_constraints:
        experiment=experiments_pattern(kinds=("file",), readers=("hdf5",)),
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/import_hdf5.py"


rule dials_experiment:
    input:
        frames=lambda wc: dials_inputs(wc.experiment),
        info="results/experiments/{experiment}/frames.h5",
    output:
        export="results/experiments/{experiment}/dials/export.npz",
    params:
        phil=lambda wc: experiment_dials_phil(wc.experiment),
    threads: config["dials"]["nproc"]
    log:
        "logs/experiments/{experiment}/dials.log",
    benchmark:
        "results/benchmarks/dials_experiment/{experiment}.tsv"
    conda:
        "../envs/dials.yaml"
    container:
        config["dials"]["container"]
    script:
        "../workflow/scripts/dials_stills_process.sh"


rule predict:
    input:
        unpack(lambda wc: model_paths(wc.experiment, wc.model)),
        unpack(lambda wc: hit_gate_input(wc.experiment, wc.model)),
        frames="results/experiments/{experiment}/frames.h5",
    output:
        "results/predictions/{experiment}/{model}/{experiment}_probability_pred.h5",
    params:
        training=TRAINING.params(*TrainingSettings.PREDICT),
        hit_gate=lambda wc: hit_gate_of(wc.experiment, wc.model),
    threads: config["training"]["threads"]
    resources:
        gpu=training_gpus(),
    log:
        "logs/predictions/{experiment}/{model}.log",
    benchmark:
        "results/benchmarks/predict/{experiment}/{model}.tsv"
    wildcard_constraints:
        model=rf"(peak_finder|hit_classifier)-{DATASET_RE}|peak_finder-matched|energy_distance",
    conda:
        training_conda_env()
    script:
        "../workflow/scripts/predict.py"


rule evaluate_predictions:
    input:
        frames="results/experiments/{experiment}/frames.h5",
        pred="results/predictions/{experiment}/peak_finder-{dataset}/{experiment}_probability_pred.h5",
        baseline=lambda wc: baseline_of(wc.experiment, wc.dataset),
        dials="results/experiments/{experiment}/dials/export.npz",
        energy_distance=lambda wc: energy_distance_prediction(wc.experiment),
        truth=lambda wc: truth_source(wc.experiment),
    output:
        frames="results/evaluation/{experiment}/peak_finder-{dataset}/frames.tsv",
        offsets="results/evaluation/{experiment}/peak_finder-{dataset}/offsets.tsv",
    params:
        evaluation=EVALUATION.params("match_radius_px", "min_i_over_sigma"),
    log:
        "logs/evaluation/{experiment}/peak_finder-{dataset}.log",
    wildcard_constraints:
        dataset=rf"{DATASET_RE}|matched",
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/evaluate_predictions.py"


rule evaluation_offsets_plot:
    input:
        lambda wc: [f for f in evaluation_tables(wc.experiment) if f.endswith("offsets.tsv")],
    output:
        report(
            "results/evaluation/{experiment}/offsets.png",
            caption="../workflow/report/evaluation_offsets.rst",
            category="Predictions and evaluation",
            labels={"experiment": "{experiment}", "figure": "offsets by resolution"},
        ),
    params:
        evaluation=EVALUATION.params("resolution_bins"),
    log:
        "logs/evaluation/{experiment}/offsets_plot.log",
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/evaluation_offsets_plot.py"


rule evaluation_summary:
    input:
        frames=[f for x in EXPERIMENTS for f in evaluation_tables(x) if f.endswith("frames.tsv")],
        offsets=[f for x in EXPERIMENTS for f in evaluation_tables(x) if f.endswith("offsets.tsv")],
        hits=[prediction_file(x, m) for x in EXPERIMENTS for m in experiment_models(x, ("hit_classifier",))],
        energy_distance=[f for x in EXPERIMENTS for f in energy_distance_prediction(x)],
        frames_files=[experiment_frames(x) for x in EXPERIMENTS],
        truth=[f for x in EXPERIMENTS for f in truth_source(x)],
        hit_labels=[f for x in EXPERIMENTS for f in dials_hit_labels(x)],
    output:
        summary=report(
            "results/evaluation/summary.tsv",
            caption="../workflow/report/evaluation_summary.rst",
            category="Predictions and evaluation",
            labels={"figure": "summary table"},
        ),
        plot=report(
            "results/evaluation/summary.png",
            caption="../workflow/report/evaluation_summary.rst",
            category="Predictions and evaluation",
            labels={"figure": "recall, precision, spurious peaks"},
        ),
        bins="results/evaluation/offsets_by_resolution.tsv",
        classifiers=report(
            "results/evaluation/classifiers.tsv",
            caption="../workflow/report/evaluation_classifiers.rst",
            category="Predictions and evaluation",
            labels={"figure": "hit and energy / camera-length predictions"},
        ),
    params:
        evaluation=EVALUATION.params("resolution_bins", "min_i_over_sigma"),
        experiments=list(EXPERIMENTS),
        hit_models={x: experiment_models(x, ("hit_classifier",)) for x in EXPERIMENTS},
        energy_distance={x: EXPERIMENTS[x].energy_distance for x in EXPERIMENTS},
        shifted={x: EXPERIMENTS[x].kind == "shifted_simulation" for x in EXPERIMENTS},
        hit_frames={x: hit_frames_param(x) for x in EXPERIMENTS},
    log:
        "logs/evaluation/summary.log",
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/evaluation_summary.py"
