# Phase retrieval from structure-factor amplitudes: a dataset per CIF set (phases.sets), four models trained on
# each (linear, mlp, cnn, unet), their evaluation on every split and the figures (src/braggflow/phases/).
# train_phase_model is a GPU rule where torch has CUDA (phases.training.device).


rule phase_dataset:
    input:
        unpack(phase_cifs),
    output:
        "results/phases/{phase_set}/dataset.h5",
    params:
        dataset=phase_dataset_params,
    log:
        "logs/phases/{phase_set}/dataset.log",
    benchmark:
        "results/benchmarks/phase_dataset/{phase_set}.tsv"
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/phase_dataset.py"


rule train_phase_model:
    input:
        "results/phases/{phase_set}/dataset.h5",
    output:
        weights="results/phases/{phase_set}/models/{phase_model}.pt",
        card="results/phases/{phase_set}/models/{phase_model}.json",
        history="results/phases/{phase_set}/models/{phase_model}.history.tsv",
    params:
        training=phase_training_params,
        seed=config["seed"],
    threads: config["phases"]["training"]["threads"]
    resources:
        gpu=phase_gpus(),
    log:
        "logs/phases/{phase_set}/train_{phase_model}.log",
    benchmark:
        "results/benchmarks/train_phase_model/{phase_set}/{phase_model}.tsv"
    conda:
        phase_conda_env()
    script:
        "../workflow/scripts/train_phase_model.py"


rule evaluate_phases:
    input:
        dataset="results/phases/{phase_set}/dataset.h5",
        weights=lambda wc: phase_models(wc.phase_set, "weights"),
        cards=lambda wc: phase_models(wc.phase_set, "card"),
    output:
        table="results/phases/{phase_set}/evaluation/loss_table.tsv",
        shells="results/phases/{phase_set}/evaluation/shells.tsv",
        samples="results/phases/{phase_set}/evaluation/samples.tsv",
        sections="results/phases/{phase_set}/evaluation/sections.h5",
    params:
        evaluation=PhaseEvaluationSettings.from_config(config["phases"]["evaluation"]).params(),
        seed=config["seed"],
    log:
        "logs/phases/{phase_set}/evaluate.log",
    benchmark:
        "results/benchmarks/evaluate_phases/{phase_set}.tsv"
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/evaluate_phases.py"


rule phase_figures:
    input:
        table="results/phases/{phase_set}/evaluation/loss_table.tsv",
        shells="results/phases/{phase_set}/evaluation/shells.tsv",
        sections="results/phases/{phase_set}/evaluation/sections.h5",
        histories=lambda wc: phase_models(wc.phase_set, "history"),
    output:
        curves=report(
            "results/phases/{phase_set}/evaluation/learning_curves.png",
            category="Phase retrieval",
            caption="../workflow/report/phase_learning_curves.rst",
        ),
        shells=report(
            "results/phases/{phase_set}/evaluation/shells.png",
            category="Phase retrieval",
            caption="../workflow/report/phase_shells.rst",
        ),
        density=report(
            "results/phases/{phase_set}/evaluation/density.png",
            category="Phase retrieval",
            caption="../workflow/report/phase_density.rst",
        ),
    log:
        "logs/phases/{phase_set}/figures.log",
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/phase_figures.py"
