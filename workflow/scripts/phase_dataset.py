from pathlib import Path

from braggflow.formats.phase_volumes import write_phase_volumes
from braggflow.logs import logged
from braggflow.phases.dataset import SPLITS, build
from braggflow.settings import PhaseSetSettings

with logged(snakemake.log[0]) as log:
    settings = PhaseSetSettings.from_params(snakemake.params.dataset)
    files = dict(zip(settings.cifs, (Path(snakemake.input[f"cif{i}"]) for i in range(len(settings.cifs)))))
    volumes = build(settings, files)
    ident = write_phase_volumes(snakemake.output[0], volumes)
    for c in volumes.crystals:
        log.info("%s (%s, %s): %d atoms in the cell, origin fixed along %s by %s, %d equivalent origins left%s",
                 c["name"], c["file"], c["space_group"], c["atoms_in_cell"], c["continuous_axes"] or "no axis",
                 c["reference_hkl"] or "-", len(c["origin_shifts"]), "; unseen" if c["unseen"] else "")
    counts = {s: int((volumes.split == k).sum()) for k, s in enumerate(SPLITS)}
    log.info("dataset %s: %d samples on a %s grid %s", ident, len(volumes.amplitude), volumes.shape, counts)
