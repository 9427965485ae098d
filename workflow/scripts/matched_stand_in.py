from braggflow.logs import logged
from braggflow.stand_in import dials_mean_cell
from braggflow.structures import write_pseudo_protein

with logged(snakemake.log[0]) as log:
    p = snakemake.params.stand_in
    cell = tuple(p["unit_cell"]) if p["unit_cell"] else dials_mean_cell(snakemake.input.dials[0])
    write_pseudo_protein(snakemake.output[0], space_group=p["space_group"], cell=cell, residues=p["residues"],
                         ions=dict(p["ions"]), b_iso_angstrom2=p["b_iso_angstrom2"], seed=p["seed"])
    log.info("%s: %d residues, ions %s, %s, cell %s (%s), B %g A^2, seed %d", snakemake.output[0], p["residues"],
             dict(p["ions"]), p["space_group"], cell, "given" if p["unit_cell"] else "mean of DIALS' indexed frames",
             p["b_iso_angstrom2"], p["seed"])
