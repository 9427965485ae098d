"""Run with DIALS' Python (libtbx.python): stills_process outputs of one shard -> one .npz of plain arrays.

usage: libtbx.python dials_export.py <stills_process output dir> <n frames> <out.npz>
Frames are identified by their 0-based index in the input file (imageset.single_file_indices[0]).
"""

import glob
import os
import sys

import numpy as np
from dials.array_family import flex
from dxtbx.model.experiment_list import ExperimentListFactory

out_dir, n_frames, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]


def frame_of(expt):
    return int(expt.imageset.indices()[0]) if hasattr(expt.imageset, "indices") else 0


n_strong = np.zeros(n_frames, np.int64)
for expt_path in sorted(glob.glob(os.path.join(out_dir, "*_imported.expt"))):
    experiments = ExperimentListFactory.from_json_file(expt_path, check_format=False)
    strong_path = expt_path.replace("_imported.expt", "_strong.refl")
    if not os.path.exists(strong_path):
        continue
    strong = flex.reflection_table.from_file(strong_path)
    ids = np.array(strong["id"])
    for i, expt in enumerate(experiments):
        n_strong[frame_of(expt)] += int((ids == i).sum())

indexed = np.zeros(n_frames, bool)
a_matrix = np.full((n_frames, 9), np.nan)
cell = np.full((n_frames, 6), np.nan)
n_indexed = np.zeros(n_frames, np.int64)
n_integrated = np.zeros(n_frames, np.int64)
rmsd_px = np.full(n_frames, np.nan)
cols = {k: [] for k in ("frame", "h", "k", "l", "x_obs", "y_obs", "x_cal", "y_cal", "intensity", "variance",
                        "partiality", "d")}
for expt_path in sorted(glob.glob(os.path.join(out_dir, "*_integrated.expt"))):
    experiments = ExperimentListFactory.from_json_file(expt_path, check_format=False)
    table = flex.reflection_table.from_file(expt_path.replace("_integrated.expt", "_integrated.refl"))
    idx_path = expt_path.replace("_integrated.expt", "_indexed.refl")
    indexed_table = flex.reflection_table.from_file(idx_path) if os.path.exists(idx_path) else None
    ids = np.array(table["id"])
    for i, expt in enumerate(experiments):
        f = frame_of(expt)
        indexed[f] = True
        a_matrix[f] = np.array(expt.crystal.get_A())
        cell[f] = np.array(expt.crystal.get_unit_cell().parameters())
        sel = ids == i
        n_integrated[f] = int(sel.sum())
        if indexed_table is not None:
            n_indexed[f] = int((np.array(indexed_table["id"]) == i).sum())
        if sel.any():
            sub = table.select(flex.bool(sel.tolist()))
            obs = np.array(sub["xyzobs.px.value"]).reshape(-1, 3)[:, :2]
            cal = np.array(sub["xyzcal.px"]).reshape(-1, 3)[:, :2]
            hkl = np.array(sub["miller_index"]).reshape(-1, 3)
            cols["frame"].append(np.full(len(hkl), f))
            for j, c in enumerate("hkl"):
                cols[c].append(hkl[:, j])
            cols["x_obs"].append(obs[:, 0])
            cols["y_obs"].append(obs[:, 1])
            cols["x_cal"].append(cal[:, 0])
            cols["y_cal"].append(cal[:, 1])
            cols["intensity"].append(np.array(sub["intensity.sum.value"]))
            cols["variance"].append(np.array(sub["intensity.sum.variance"]))
            cols["partiality"].append(np.array(sub["partiality"]) if "partiality" in sub else np.full(len(hkl), np.nan))
            cols["d"].append(np.array(sub["d"]))
            good = np.isfinite(obs).all(axis=1) & (obs[:, 0] > 0)
            if good.any():
                rmsd_px[f] = float(np.sqrt(np.mean(np.sum((obs[good] - cal[good]) ** 2, axis=1))))

arrays = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.items()}
np.savez(out_path, n_strong=n_strong, indexed=indexed, a_matrix=a_matrix, cell=cell, n_indexed=n_indexed,
         n_integrated=n_integrated, rmsd_px=rmsd_px, **{"refl_" + k: v for k, v in arrays.items()})
