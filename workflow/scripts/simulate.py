from braggflow.beam import Beam
from braggflow.gpu import claim_gpu
from braggflow.geometry import Geometry
from braggflow.logs import logged
from braggflow.shards import SimulationSettings, write_shard

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    geometry = Geometry.from_dict(p.geometry)
    beam = Beam.from_config(p.beam)
    settings = SimulationSettings.from_config(p.simulation, geometry, beam)
    backend = snakemake.config["simulation"]["backend"]  # where it runs, not what it computes: no param
    if backend != "numpy":
        log.info("GPU claimed for this job: %s", claim_gpu())
    stats = write_shard(snakemake.output[0], mtz_path=snakemake.input.mtz, geometry=geometry, beam=beam,
                        settings=settings, seed=p.seed, dataset=p.dataset,
                        dataset_index=p.dataset_index, frames=range(*p.frames),
                        structure=p.structure, backend=backend, log=log)
    log.info("wrote %s: %s", snakemake.output[0], stats)
