# Detector frames (Bragg + water + noise), hit flags, peak labels and truth per shard; a gallery per dataset.


rule overlay:
    input:
        peaks="results/simulated/{structure}/{dataset}/shard_{shard}.h5",
        water="results/backgrounds/{dataset}/water.h5",
    output:
        "results/overlays/{structure}/{dataset}/shard_{shard}.h5",
    params:
        overlay=overlay_params(config["overlay"]),
        seed=config["seed"],
        dataset_index=lambda wc: DATASETS[wc.dataset].index,
        nominal_fluence_per_m2=nominal_fluence_per_m2(),
    log:
        "logs/overlays/{structure}/{dataset}/shard_{shard}.log",
    benchmark:
        "results/benchmarks/overlay/{structure}/{dataset}/shard_{shard}.tsv"
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/overlay.py"


rule overlay_gallery:
    input:
        lambda wc: overlay_shards(wc.structure, wc.dataset),
    output:
        report(
            "results/overlays/{structure}/{dataset}/gallery.png",
            caption="../workflow/report/gallery.rst",
            category="Overlays and labels",
            labels={"structure": "{structure}", "dataset": "{dataset}"},
        ),
    params:
        frames=config["overlay"]["gallery_frames"],
    log:
        "logs/overlays/{structure}/{dataset}/gallery.log",
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/overlay_gallery.py"
