import json

from braggflow.formats.crystfel import write_crystfel_geometry
from braggflow.geometry import Geometry
from braggflow.io import write_text_atomic
from braggflow.logs import logged

with logged(snakemake.log[0]) as log:
    geometry = Geometry.from_dict(snakemake.params.geometry)
    write_text_atomic(snakemake.output.json, json.dumps(geometry.as_dict(), indent=2, sort_keys=True) + "\n")
    p = snakemake.params
    write_crystfel_geometry(snakemake.output.geom, geometry, adu_per_photon=p.adu_per_photon,
                            bandwidth_rel_sigma=p.bandwidth_rel_sigma, dataset=snakemake.wildcards.dataset)
    log.info("%s: %s; d_min at the corner %.3f A", snakemake.wildcards.dataset, geometry, geometry.d_min_angstrom())
