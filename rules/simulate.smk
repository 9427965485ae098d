# Bragg-only still images per (structure, dataset, shard), with the truth of every frame. GPU rule.


rule simulate:
    input:
        mtz=lambda wc: sf_mtz(wc.structure, DATASETS[wc.dataset].energy),
    output:
        "results/simulated/{structure}/{dataset}/shard_{shard}.h5",
    params:
        geometry=lambda wc: geometry_of(wc.dataset).as_dict(),
        beam=BEAM,
        simulation=SIMULATION,
        seed=config["seed"],
        dataset_index=lambda wc: DATASETS[wc.dataset].index,
        frames=lambda wc: shard_frames(wc.shard),
        dataset=lambda wc: wc.dataset,
        structure=lambda wc: wc.structure,
    resources:
        gpu=simulation_gpus(),
    log:
        "logs/simulate/{structure}/{dataset}/shard_{shard}.log",
    benchmark:
        "results/benchmarks/simulate/{structure}/{dataset}/shard_{shard}.tsv"
    conda:
        simulation_conda_env()
    script:
        "../workflow/scripts/simulate.py"
