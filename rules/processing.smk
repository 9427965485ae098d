# DIALS stills indexing and integration per overlay shard, tidy tables, and scores against the truth.


rule dials_stills_process:
    input:
        frames="results/overlays/{structure}/{dataset}/shard_{shard}.h5",
    output:
        export="results/dials/{structure}/{dataset}/shard_{shard}/export.npz",
    params:
        phil=lambda wc: dials_phil(wc.structure),
        n_frames=lambda wc: len(range(*shard_frames(wc.shard))),
    threads: config["dials"]["nproc"]
    log:
        "logs/dials/{structure}/{dataset}/shard_{shard}.log",
    benchmark:
        "results/benchmarks/dials/{structure}/{dataset}/shard_{shard}.tsv"
    conda:
        "../envs/dials.yaml"
    container:
        config["dials"]["container"]
    script:
        "../workflow/scripts/dials_stills_process.sh"


rule dials_tables:
    input:
        export="results/dials/{structure}/{dataset}/shard_{shard}/export.npz",
        frames="results/overlays/{structure}/{dataset}/shard_{shard}.h5",
    output:
        "results/dials/{structure}/{dataset}/shard_{shard}/tables.h5",
    params:
        spacegroup=lambda wc: structure_symmetry(wc.structure)[0],
        cell=lambda wc: structure_symmetry(wc.structure)[1],
    log:
        "logs/dials/{structure}/{dataset}/shard_{shard}_tables.log",
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/dials_tables.py"


rule dials_scores:
    input:
        tables=lambda wc: dials_tables_of(wc.structure),
    output:
        summary=report(
            "results/dials/{structure}/scores.tsv",
            caption="../workflow/report/dials_scores.rst",
            category="DIALS processing",
        ),
        frames="results/dials/{structure}/frames.tsv",
        plot=report(
            "results/dials/{structure}/scores.png",
            caption="../workflow/report/dials_plot.rst",
            category="DIALS processing",
        ),
    params:
        datasets=lambda wc: [d for d in DATASETS for _ in shard_names()],
    log:
        "logs/dials/{structure}/scores.log",
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/dials_scores.py"


rule benchmark_summary:
    input:
        benchmark_files(),
    output:
        table=report(
            "results/benchmarks/summary.tsv",
            caption="../workflow/report/benchmarks.rst",
            category="Benchmarks",
        ),
        plot=report(
            "results/benchmarks/summary.png",
            caption="../workflow/report/benchmarks.rst",
            category="Benchmarks",
        ),
    log:
        "logs/benchmarks/summary.log",
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/benchmark_summary.py"
