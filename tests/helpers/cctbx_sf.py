"""Run with Debian's /usr/bin/python3: structure factors of a PDB file by cctbx, for comparison.

usage: cctbx_sf.py model.pdb d_min fdash.json out.npz   (fdash.json: {"element": [f', f''], ...})
"""
import json
import sys

import iotbx.pdb
import numpy as np

pdb, d_min, fdash_path, out = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
fdash = json.load(open(fdash_path))
xs = iotbx.pdb.input(file_name=pdb).xray_structure_simple()
xs.scattering_type_registry(table="it1992")
for sc in xs.scatterers():
    fp, fdp = fdash[sc.scattering_type.strip().capitalize()]
    sc.fp, sc.fdp = fp, fdp
f = xs.structure_factors(d_min=d_min, anomalous_flag=True, algorithm="direct").f_calc()
np.savez(out, hkl=np.array(f.indices()), f=f.data().as_numpy_array())
