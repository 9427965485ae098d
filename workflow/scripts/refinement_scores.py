import json

import pandas as pd

from braggflow.beam import Beam
from braggflow.figures.refinement import plot_offsets_by_resolution, plot_refinement_scores
from braggflow.formats import shards as S
from braggflow.formats.dials_export import read_dials_export
from braggflow.formats.tables import read_table
from braggflow.io import atomic_path
from braggflow.logs import logged
from braggflow.refine.scores import dataset_summary, offsets_by_resolution, score_refined_shard
from braggflow.refine.shard import StillPrior

with logged(snakemake.log[0]) as log:
    p, i = snakemake.params, snakemake.input
    prior = StillPrior.from_config(p.prior, Beam.from_config(p.beam))
    frames, offsets = [], []
    for stills, dials, export, overlay, simulated, dataset in zip(i.stills, i.dials, i.exports, i.overlays,
                                                                   i.simulated, p.datasets, strict=True):
        f, o = score_refined_shard(pd.read_csv(stills, sep="\t"), read_table(dials, "frames"),
                                   read_table(dials, "reflections"), read_dials_export(export),
                                   S.read_frame_arrays(overlay), S.read_frame_arrays(simulated)["mosaic_umats"],
                                   p.spacegroup, tuple(p.cell), prior)
        f.insert(0, "dataset", dataset)
        o.insert(0, "dataset", dataset)
        frames.append(f)
        offsets.append(o)
    frames, offsets = pd.concat(frames, ignore_index=True), pd.concat(offsets, ignore_index=True)
    detectors = {}
    for path, dataset in zip(i.detectors, p.detector_datasets, strict=True):
        with open(path) as fh:
            detectors[dataset] = json.load(fh)
    structure = snakemake.wildcards.structure
    summary = pd.DataFrame([dataset_summary(frames[frames.dataset == d], offsets[offsets.dataset == d], structure,
                                            d, detectors[d]) for d in p.detector_datasets])
    by_bin = offsets_by_resolution(offsets, p.resolution_bins)
    for table, out in ((summary, snakemake.output.summary), (frames, snakemake.output.frames),
                       (by_bin, snakemake.output.offsets)):
        with atomic_path(out) as tmp:
            table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    plot_refinement_scores(snakemake.output.plot, summary)
    plot_offsets_by_resolution(snakemake.output.offsets_plot, by_bin)
    log.info("\n%s", summary.T.to_string())
