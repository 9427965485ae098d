from braggflow.dials import score_shard
from braggflow.logs import logged
from braggflow.formats.tables import write_tables

with logged(snakemake.log[0]) as log:
    frames, reflections = score_shard(snakemake.input.export, snakemake.input.frames, snakemake.params.spacegroup,
                                      tuple(snakemake.params.cell))
    write_tables(snakemake.output[0], {"frames": frames, "reflections": reflections})
    log.info("%d frames, %d indexed, %d reflections", len(frames), int(frames.indexed.sum()), len(reflections))
