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
