from braggflow.logs import logged
from braggflow.matched import experiment_energy_and_d_min
from braggflow.formats.frames import read_frames_info
from braggflow.formats.mtz import write_mtz
from braggflow.sf import compute_sf_table, sf_summary
from braggflow.structures import read_structure

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    energy_kev, d_min = experiment_energy_and_d_min(read_frames_info(snakemake.input.frames), p.d_min_margin)
    d_min = p.d_min_angstrom or d_min  # the structure's own limit, where the config sets one
    model = read_structure(snakemake.input.structure)
    log.info("%s: %s, %s, %d atoms; the experiment's %.4f keV, d_min %.3f A", model.source, model.spacegroup_hm,
             model.cell, len(model.fract), energy_kev, d_min)
    table = compute_sf_table(model, energy_kev, d_min, anomalous=p.anomalous)
    write_mtz(snakemake.output.mtz, model, table, energy_kev)
    log.info("wrote %s: %s", snakemake.output.mtz, sf_summary(model.source, energy_kev, table))
