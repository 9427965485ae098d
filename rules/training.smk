# CNN training per energy x camera length (peak finder, hit classifier), one energy / camera-length model across
# the matrix, the conventional baselines on the same split, and the tables and figures that compare them.
# GPU rules (train_peak_finder, train_hit_classifier, train_energy_distance) ask for gpu=1 where torch has CUDA.


rule train_peak_finder:
    input:
        shards=lambda wc: overlay_shards(wc.structure, wc.dataset),
    output:
        weights="results/models/{structure}/{dataset}/peak_finder.pt",
        onnx="results/models/{structure}/{dataset}/peak_finder.onnx",
        card="results/models/{structure}/{dataset}/peak_finder.json",
        history="results/models/{structure}/{dataset}/peak_finder_history.tsv",
        spots="results/models/{structure}/{dataset}/peak_finder_test_spots.json",
    params:
        training=TRAINING.params(*TrainingSettings.PEAK_FINDER),
        seed=config["seed"],
    threads: config["training"]["threads"]
    resources:
        gpu=training_gpus(),
    log:
        "logs/training/{structure}/{dataset}/peak_finder.log",
    benchmark:
        "results/benchmarks/train_peak_finder/{structure}/{dataset}.tsv"
    conda:
        training_conda_env()
    script:
        "../workflow/scripts/train_peak_finder.py"


rule train_hit_classifier:
    input:
        lambda wc: overlay_shards(wc.structure, wc.dataset),
    output:
        weights="results/models/{structure}/{dataset}/hit_classifier.pt",
        onnx="results/models/{structure}/{dataset}/hit_classifier.onnx",
        card="results/models/{structure}/{dataset}/hit_classifier.json",
        history="results/models/{structure}/{dataset}/hit_classifier_history.tsv",
    params:
        training=TRAINING.params(*TrainingSettings.HIT_CLASSIFIER),
        seed=config["seed"],
    threads: config["training"]["threads"]
    resources:
        gpu=training_gpus(),
    log:
        "logs/training/{structure}/{dataset}/hit_classifier.log",
    benchmark:
        "results/benchmarks/train_hit_classifier/{structure}/{dataset}.tsv"
    conda:
        training_conda_env()
    script:
        "../workflow/scripts/train_hit_classifier.py"


rule baseline_peak_finder:
    input:
        shards=lambda wc: overlay_shards(wc.structure, wc.dataset),
    output:
        "results/models/{structure}/{dataset}/baseline_peaks.json",
    params:
        training=TRAINING.params(*TrainingSettings.BASELINE),
        seed=config["seed"],
    log:
        "logs/training/{structure}/{dataset}/baseline_peaks.log",
    benchmark:
        "results/benchmarks/baseline_peak_finder/{structure}/{dataset}.tsv"
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/baseline_peak_finder.py"


rule energy_distance_profiles:
    input:
        lambda wc: [f for d in DATASETS for f in overlay_shards(wc.structure, d)],
    output:
        "results/features/{structure}/energy_distance_profiles.h5",
    params:
        training=TRAINING.params(*TrainingSettings.PROFILES),
        seed=config["seed"],
        energies_kev=sorted(ENERGIES.values()),
        camera_lengths_m=sorted({d.camera_length_m for d in DATASETS.values()}),
    log:
        "logs/training/{structure}/energy_distance_profiles.log",
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/energy_distance_profiles.py"


rule train_energy_distance:
    input:
        "results/features/{structure}/energy_distance_profiles.h5",
    output:
        weights="results/models/{structure}/energy_distance.pt",
        onnx="results/models/{structure}/energy_distance.onnx",
        card="results/models/{structure}/energy_distance.json",
        history="results/models/{structure}/energy_distance_history.tsv",
    params:
        training=TRAINING.params(*TrainingSettings.ENERGY_DISTANCE),
        seed=config["seed"],
    threads: config["training"]["threads"]
    resources:
        gpu=training_gpus(),
    log:
        "logs/training/{structure}/energy_distance.log",
    benchmark:
        "results/benchmarks/train_energy_distance/{structure}.tsv"
    conda:
        training_conda_env()
    script:
        "../workflow/scripts/train_energy_distance.py"


rule baseline_energy_distance:
    input:
        "results/features/{structure}/energy_distance_profiles.h5",
    output:
        "results/models/{structure}/energy_distance_baseline.json",
    params:
        seed=config["seed"],
    log:
        "logs/training/{structure}/energy_distance_baseline.log",
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/baseline_energy_distance.py"


rule peak_finding_summary:
    input:
        cards=lambda wc: per_dataset_models(wc.structure, "peak_finder.json"),
        histories=lambda wc: per_dataset_models(wc.structure, "peak_finder_history.tsv"),
        baselines=lambda wc: per_dataset_models(wc.structure, "baseline_peaks.json"),
        hit_cards=lambda wc: per_dataset_models(wc.structure, "hit_classifier.json"),
        hit_histories=lambda wc: per_dataset_models(wc.structure, "hit_classifier_history.tsv"),
    output:
        table=report(
            "results/metrics/{structure}/peak_finding.tsv",
            caption="../workflow/report/peak_finding.rst",
            category="Training",
            subcategory="Peak finding and hits",
            labels={"structure": "{structure}", "figure": "CNN vs baseline"},
        ),
        curves=report(
            "results/metrics/{structure}/learning_curves.png",
            caption="../workflow/report/learning_curves.rst",
            category="Training",
            subcategory="Peak finding and hits",
            labels={"structure": "{structure}", "figure": "learning curves"},
        ),
    params:
        datasets=list(DATASETS),
    log:
        "logs/training/{structure}/peak_finding_summary.log",
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/peak_finding_summary.py"


rule peak_examples:
    input:
        shards=lambda wc: overlay_shards(wc.structure, wc.dataset),
        spots="results/models/{structure}/{dataset}/peak_finder_test_spots.json",
        baseline="results/models/{structure}/{dataset}/baseline_peaks.json",
    output:
        report(
            "results/metrics/{structure}/{dataset}/examples.png",
            caption="../workflow/report/peak_examples.rst",
            category="Training",
            subcategory="Example frames",
            labels={"structure": "{structure}", "dataset": "{dataset}"},
        ),
    params:
        training=TRAINING.params(*TrainingSettings.EXAMPLES),
        seed=config["seed"],
    log:
        "logs/training/{structure}/{dataset}/examples.log",
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/peak_examples.py"


rule energy_distance_summary:
    input:
        card="results/models/{structure}/energy_distance.json",
        history="results/models/{structure}/energy_distance_history.tsv",
        baseline="results/models/{structure}/energy_distance_baseline.json",
    output:
        table=report(
            "results/metrics/{structure}/energy_distance.tsv",
            caption="../workflow/report/energy_distance.rst",
            category="Training",
            subcategory="Energy and camera length",
            labels={"structure": "{structure}", "figure": "accuracy"},
        ),
        confusion=report(
            "results/metrics/{structure}/energy_distance_confusion.png",
            caption="../workflow/report/energy_distance_confusion.rst",
            category="Training",
            subcategory="Energy and camera length",
            labels={"structure": "{structure}", "figure": "confusion matrices"},
        ),
        curves=report(
            "results/metrics/{structure}/energy_distance_learning_curve.png",
            caption="../workflow/report/learning_curves.rst",
            category="Training",
            subcategory="Energy and camera length",
            labels={"structure": "{structure}", "figure": "learning curve"},
        ),
    log:
        "logs/training/{structure}/energy_distance_summary.log",
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/energy_distance_summary.py"
