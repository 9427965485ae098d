from braggflow.logs import logged
from braggflow.formats.mtz import write_mtz
from braggflow.sf import compute_sf_table, sf_summary
from braggflow.structures import read_structure

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    model = read_structure(snakemake.input.structure)
    log.info("%s: %s, %s, %d atoms (%s)", model.source, model.spacegroup_hm, model.cell, len(model.fract),
             ", ".join(model.elements))
    table = compute_sf_table(model, p.energy_kev, p.d_min_angstrom, anomalous=p.anomalous)
    write_mtz(snakemake.output.mtz, model, table, p.energy_kev)
    log.info("wrote %s: %s", snakemake.output.mtz, sf_summary(snakemake.wildcards.structure, p.energy_kev, table))
