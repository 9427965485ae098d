# Per-still refinement against the pixels (per DIALS shard), each dataset's detector, and scores against the truth.


rule refine_stills:
    input:
        export="results/dials/{structure}/{dataset}/shard_{shard}/export.npz",
        frames="results/overlays/{structure}/{dataset}/shard_{shard}.h5",
        mtz=lambda wc: sf_mtz(wc.structure, DATASETS[wc.dataset].energy),
    output:
        table="results/refined/{structure}/{dataset}/shard_{shard}/stills.tsv",
        expt="results/refined/{structure}/{dataset}/shard_{shard}/refined.expt",
    params:
        **refinement_params(),
    threads: config["refinement"]["threads"]
    resources:
        gpu=refinement_gpus(),
    log:
        "logs/refined/{structure}/{dataset}/shard_{shard}.log",
    benchmark:
        "results/benchmarks/refine_stills/{structure}/{dataset}/shard_{shard}.tsv"
    conda:
        refinement_conda_env()
    script:
        "../workflow/scripts/refine_stills.py"


rule refine_detector:
    input:
        exports=lambda wc: dials_exports(wc.structure, wc.dataset),
        frames=lambda wc: overlay_shards(wc.structure, wc.dataset),
        mtz=lambda wc: sf_mtz(wc.structure, DATASETS[wc.dataset].energy),
    output:
        "results/refined/{structure}/{dataset}/detector.json",
    params:
        **refinement_params(),
    threads: config["refinement"]["threads"]
    resources:
        gpu=refinement_gpus(),
    log:
        "logs/refined/{structure}/{dataset}/detector.log",
    benchmark:
        "results/benchmarks/refine_detector/{structure}/{dataset}.tsv"
    conda:
        refinement_conda_env()
    script:
        "../workflow/scripts/refine_detector.py"


rule refinement_scores:
    input:
        stills=lambda wc: refined_tables(wc.structure),
        dials=lambda wc: dials_tables_of(wc.structure),
        exports=lambda wc: [f for d in DATASETS for f in dials_exports(wc.structure, d)],
        overlays=lambda wc: [f for d in DATASETS for f in overlay_shards(wc.structure, d)],
        simulated=lambda wc: [f for d in DATASETS for f in simulated_shards(wc.structure, d)],
        detectors=lambda wc: expand("results/refined/{s}/{d}/detector.json", s=wc.structure, d=DATASETS),
    output:
        summary=report(
            "results/refined/{structure}/scores.tsv",
            caption="../workflow/report/refinement_scores.rst",
            category="Refinement",
        ),
        frames="results/refined/{structure}/frames.tsv",
        offsets=report(
            "results/refined/{structure}/offsets_by_resolution.tsv",
            caption="../workflow/report/refinement_offsets.rst",
            category="Refinement",
        ),
        plot=report(
            "results/refined/{structure}/scores.png",
            caption="../workflow/report/refinement_scores.rst",
            category="Refinement",
        ),
        offsets_plot=report(
            "results/refined/{structure}/offsets_by_resolution.png",
            caption="../workflow/report/refinement_offsets.rst",
            category="Refinement",
        ),
    params:
        datasets=lambda wc: [d for d in DATASETS for _ in shard_names()],
        detector_datasets=list(DATASETS),
        spacegroup=lambda wc: structure_symmetry(wc.structure)[0],
        cell=lambda wc: structure_symmetry(wc.structure)[1],
        prior=refinement_params()["prior"],
        beam=BEAM,
        resolution_bins=config["refinement"]["resolution_bins"],
    log:
        "logs/refined/{structure}/scores.log",
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/refinement_scores.py"


# Real stills (file experiments): every still refined from its DIALS model on all its panels, each shoebox its
# own intensity (their F is not known), with the model of the experiment's matched simulation (its calibration:
# PSF, crystal size); scored against DIALS' observed centroids.
rule refine_experiment:
    input:
        export="results/experiments/{experiment}/dials/export.npz",
        frames="results/experiments/{experiment}/frames.h5",
        calibration=lambda wc: experiment_refinement_calibration(wc.experiment),
    output:
        table="results/refined/experiments/{experiment}/stills.tsv",
        expt="results/refined/experiments/{experiment}/refined.expt",
    params:
        **experiment_refinement_params(),
    threads: config["refinement"]["threads"]
    resources:
        gpu=refinement_gpus(),
    log:
        "logs/refined/experiments/{experiment}/refine.log",
    benchmark:
        "results/benchmarks/refine_experiment/{experiment}.tsv"
    wildcard_constraints:
        experiment=experiments_pattern(kinds=("file",)),
    conda:
        refinement_conda_env()
    script:
        "../workflow/scripts/refine_experiment.py"


rule experiment_refinement_scores:
    input:
        export="results/experiments/{experiment}/dials/export.npz",
        stills="results/refined/experiments/{experiment}/stills.tsv",
        calibration=lambda wc: experiment_refinement_calibration(wc.experiment),
    output:
        offsets="results/refined/experiments/{experiment}/offsets.tsv",
        by_resolution=report(
            "results/refined/experiments/{experiment}/offsets_by_resolution.tsv",
            caption="../workflow/report/refinement_observed.rst",
            category="Refinement",
            labels={"experiment": "{experiment}", "figure": "offsets by resolution (table)"},
        ),
        plot=report(
            "results/refined/experiments/{experiment}/offsets_by_resolution.png",
            caption="../workflow/report/refinement_observed.rst",
            category="Refinement",
            labels={"experiment": "{experiment}", "figure": "offsets by resolution"},
        ),
    params:
        prior=lambda wc: experiment_refinement_params()["prior"](wc),
        resolution_bins=config["refinement"]["resolution_bins"],
    log:
        "logs/refined/experiments/{experiment}/scores.log",
    wildcard_constraints:
        experiment=experiments_pattern(kinds=("file",)),
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/experiment_refinement_scores.py"
