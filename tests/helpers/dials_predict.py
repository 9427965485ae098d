"""Run with Debian's /usr/bin/python3: DIALS' stills predictor for given A matrices on an NXmx file.

usage: dials_predict.py frames.h5 A.json out.json   (A.json: one row-major DIALS A matrix per frame)
writes, per frame, [[h, k, l], [x_px, y_px]] for every reflection DIALS predicts on the detector.
"""
import json, sys
from dxtbx.model.experiment_list import ExperimentListFactory
from dxtbx.model import Crystal
from scitbx import matrix
from cctbx import sgtbx
from dials.algorithms.spot_prediction import StillsReflectionPredictor
from dials.array_family import flex
nxs, a_json, out = sys.argv[1:4]
A = json.load(open(a_json))  # list of 9 (row-major) per frame
el = ExperimentListFactory.from_filenames([nxs])
res = []
for i, a in enumerate(A):
    expt = el[i]
    Am = matrix.sqr(a)
    real = Am.inverse()  # rows a, b, c
    cr = Crystal(real[0:3], real[3:6], real[6:9], space_group=sgtbx.space_group("P 1"))
    expt.crystal = cr
    refl = StillsReflectionPredictor(expt, dmin=1.5).for_ub(matrix.sqr(a))
    hkl = refl["miller_index"]; xyz = refl["xyzcal.px"]
    res.append([[list(h), list(x)[:2]] for h, x in zip(hkl, xyz)])
json.dump(res, open(out, "w"))
