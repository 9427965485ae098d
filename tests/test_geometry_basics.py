import math

import numpy as np
import pytest

from braggflow.geometry import dataset_geometry
from braggflow.matrix import Dataset

CONFIG = {"detector": {"pyfai_name": "Eiger4M", "beam_center_px": None, "sensor_material": "Si",
                       "sensor_thickness_mm": 0.45}}


def test_eiger4m_from_pyfai_centred_beam_and_corner_resolution():
    g = dataset_geometry(CONFIG, Dataset("8keV_150mm", 8.0, 0.15, 0))
    assert (g.n_fast, g.n_slow, g.pixel_size_m) == (2070, 2167, 75e-6)
    assert g.beam_center_px == (1035.0, 1083.5)
    corner_m = math.hypot(1035 * 75e-6, 1083.5 * 75e-6)
    two_theta = math.atan(corner_m / 0.15)
    assert g.d_min_angstrom() == pytest.approx(12.398419843320026 / 8.0 / (2 * math.sin(two_theta / 2)))
    mask = g.gap_mask()
    assert mask.shape == (2167, 2070) and 0.02 < mask.mean() < 0.1  # module gaps


def test_off_centre_beam_reaches_further():
    cfg = {"detector": dict(CONFIG["detector"], beam_center_px=[1531.0, 300.0])}
    off = dataset_geometry(cfg, Dataset("8keV_150mm", 8.0, 0.15, 0))
    centred = dataset_geometry(CONFIG, Dataset("8keV_150mm", 8.0, 0.15, 0))
    assert off.d_min_angstrom() < centred.d_min_angstrom()


def test_unknown_detector_is_named():
    cfg = {"detector": dict(CONFIG["detector"], pyfai_name="NoSuchDetector9M")}
    with pytest.raises(ValueError, match="detector.pyfai_name.*NoSuchDetector9M"):
        dataset_geometry(cfg, Dataset("8keV_150mm", 8.0, 0.15, 0))


def test_module_gaps_are_pyfai_mask_rows_and_columns_and_survive_json():
    import json

    from braggflow.geometry import Geometry, _pyfai_detector

    g = dataset_geometry(CONFIG, Dataset("8keV_150mm", 8.0, 0.15, 0))
    slow, fast = g.module_gaps_px
    assert slow[0] == (514, 551) and len(slow) == 3 and len(fast) == 1
    pyfai_mask = np.asarray(_pyfai_detector("Eiger4M").mask, dtype=bool)
    assert np.array_equal(g.gap_mask(), pyfai_mask)
    back = Geometry.from_dict(json.loads(json.dumps(g.as_dict())))
    assert back == g and np.array_equal(back.gap_mask(), pyfai_mask)
    old = g.as_dict()
    del old["module_gaps_px"]  # a geometry written before the intervals existed asks pyFAI
    assert np.array_equal(Geometry.from_dict(old).gap_mask(), pyfai_mask)


def test_separable_gaps_refuses_masks_that_are_not_whole_rows_and_columns():
    from braggflow.geometry import separable_gaps

    mask = np.zeros((6, 5), bool)
    mask[2] = True
    mask[:, 4] = True
    assert separable_gaps(mask, (6, 5)) == (((2, 3),), ((4, 5),))
    assert separable_gaps(None, (6, 5)) == ((), ())
    mask[0, 0] = True  # a lone dead pixel: not a module gap
    assert separable_gaps(mask, (6, 5)) is None


def test_bad_module_gaps_name_the_key():
    from braggflow.geometry import Geometry

    g = dataset_geometry(CONFIG, Dataset("8keV_150mm", 8.0, 0.15, 0))
    with pytest.raises(ValueError, match="module_gaps_px.*outside"):
        Geometry.from_dict({**g.as_dict(), "module_gaps_px": [[[2160, 2200]], []]})
    with pytest.raises(ValueError, match="module_gaps_px.*intervals"):
        Geometry.from_dict({**g.as_dict(), "module_gaps_px": [1, 2, 3]})


def test_per_shard_jobs_import_neither_pyfai_nor_pandas():
    """pyFAI takes ~1.9 CPU-s to import and pandas ~0.5: the simulate and overlay jobs (3 frames a shard by default)
    build the mask from the geometry's intervals and keep their tables as arrays."""
    import json
    import subprocess
    import sys

    g = dataset_geometry(CONFIG, Dataset("8keV_150mm", 8.0, 0.15, 0))
    code = ("import json, sys; from braggflow.geometry import Geometry; import braggflow.shards, braggflow.overlay, braggflow.beam, braggflow.gpu, braggflow.logs; "
            f"g = Geometry.from_dict(json.loads({json.dumps(json.dumps(g.as_dict()))})); m = g.gap_mask(); "
            "print(int(m.sum()), 'pyFAI' in sys.modules, 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(int(g.gap_mask().sum())), "False", "False"]
