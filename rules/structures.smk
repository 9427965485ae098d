# Structures -> complex structure factors (with f', f'') per structure x photon energy, as MTZ.


rule structure_factors:
    input:
        structure=structure_file,
    output:
        mtz="results/structure_factors/{structure}/{energy}keV.mtz",
    params:
        energy_kev=lambda wc: ENERGIES[wc.energy],
        d_min_angstrom=lambda wc: sf_d_min_angstrom(wc.structure, wc.energy),
        anomalous=config["structure_factors"]["anomalous"],
    log:
        "logs/structure_factors/{structure}/{energy}keV.log",
    benchmark:
        "results/benchmarks/structure_factors/{structure}/{energy}keV.tsv"
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/structure_factors.py"


rule structure_factor_summary:
    input:
        mtz=all_sf_mtz(),
    output:
        table=report(
            "results/structure_factors/summary.tsv",
            caption="../workflow/report/sf_summary.rst",
            category="Structure factors",
        ),
        shells=report(
            "results/structure_factors/resolution_shells.png",
            caption="../workflow/report/sf_shells.rst",
            category="Structure factors",
        ),
    params:
        labels=[(s, ENERGIES[e]) for s in matrix_sf_structures() for e in ENERGIES],
    log:
        "logs/structure_factors/summary.log",
    conda:
        "../envs/braggflow.yaml"
    script:
        "../workflow/scripts/structure_factor_summary.py"
