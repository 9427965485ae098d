# Per-dataset geometry files (for DIALS and CrystFEL users) and physical water backgrounds.


rule geometry:
    output:
        json="results/geometry/{dataset}/geometry.json",
        geom="results/geometry/{dataset}/{dataset}.geom",
    params:
        geometry=lambda wc: geometry_of(wc.dataset).as_dict(),
        adu_per_photon=float(config["overlay"]["adu_per_photon"]),
        bandwidth_rel_sigma=spectrum_rel_sigma(SIM["spectrum_shape"], SIM["bandwidth_frac"], SIM["spectrum_samples"]),
    log:
        "logs/geometry/{dataset}.log",
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/geometry.py"


rule water_background:
    input:
        table=config["water"]["table"],
    output:
        h5="results/backgrounds/{dataset}/water.h5",
        png=report(
            "results/backgrounds/{dataset}/water.png",
            caption="../workflow/report/water.rst",
            category="Water backgrounds",
            labels={"dataset": "{dataset}"},
        ),
    params:
        geometry=lambda wc: geometry_of(wc.dataset).as_dict(),
        beam=BEAM,
        jet_thickness_m=config["water"]["jet_thickness_um"] * 1e-6,
        name=lambda wc: wc.dataset,
    log:
        "logs/backgrounds/{dataset}.log",
    benchmark:
        "results/benchmarks/water_background/{dataset}.tsv"
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/water_background.py"
