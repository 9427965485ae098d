"""The simulator's CuPy path, guarded on the CPU: every xp call runs on device arrays of a CuPy stand-in
(tests/helpers/fake_cupy.py: CuPy 13/14's boundary rules and only the names both export), so a NumPy-only call on
a device array fails here as it would on a GPU. Frames are bit-identical to NumPy's and to any block size."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from braggflow.simulator import apply_psf, resolve_backend, simulate_still, to_numpy, truth_reflections
from helpers.fake_cupy import DeviceArray, make_module
from test_matched import matched_shard, small_experiment  # noqa: F401 - a fixture
from helpers.nanobragg_cases import _nanobragg_case, _still
from test_simulator import constructed_case, nb_A, sf_table  # noqa: F401 - fixtures

cp = make_module()


def test_the_stand_in_refuses_what_cupy_refuses():
    a = cp.arange(4, dtype=cp.float64)
    host = np.ones(4)
    for implicit in (lambda: np.asarray(a), lambda: np.array(a), lambda: a + host, lambda: host * a,
                     lambda: np.where(a > 1, host, a), lambda: cp.maximum(a, host)):
        with pytest.raises(TypeError):
            implicit()
    with pytest.raises(AttributeError):
        cp.trapezoid  # CuPy 14 only
    with pytest.raises(AttributeError):
        a.mT  # CuPy 14 only
    # what CuPy allows: scalars, host index arrays, explicit copies, NumPy functions CuPy also has
    b = a * np.float32(2) + 1.0
    assert isinstance(b, DeviceArray) and isinstance(b[1], DeviceArray) and float(b[1]) == 3.0
    assert isinstance(np.sin(a), DeviceArray) and isinstance(np.sum(a), DeviceArray)
    np.testing.assert_array_equal(a[np.array([0, 2])].get(), [0.0, 2.0])
    np.testing.assert_array_equal(cp.asnumpy(cp.asarray(host)), host)


@pytest.mark.parametrize("name", ["case1_mono", "case2_poly_mosaic"])
def test_nanobragg_cases_on_device_arrays_are_numpys_bits(name, sf_table, nb_A):  # noqa: F811
    det, kwargs, _ = _nanobragg_case(name)
    still = _still(nb_A, **kwargs)
    ref = simulate_still(still, det, sf_table)
    dev = simulate_still(still, det, sf_table, xp=cp)
    assert isinstance(dev, DeviceArray)
    np.testing.assert_array_equal(to_numpy(dev), ref)
    t_ref = truth_reflections(still, det, sf_table, image=ref)
    t_dev = truth_reflections(still, det, sf_table, image=dev, xp=cp)
    assert len(t_ref) > 100
    for field in ("hkl", "x_px", "y_px", "photons", "peak_fraction"):
        np.testing.assert_array_equal(getattr(t_dev, field), getattr(t_ref, field))
    np.testing.assert_array_equal(to_numpy(apply_psf(dev, 1.7, cp)), apply_psf(ref, 1.7))


@pytest.mark.parametrize("shape", ["square", "round", "gauss", "tophat"])
def test_every_shape_and_path_is_the_same_bits_on_device_and_for_any_block_size(shape, constructed_case, sf_table):  # noqa: F811
    A, det, kwargs = constructed_case  # 3 weighted sources, 4 domains, oversample 2, Kahn polarization, tilted
    still = _still(A, **dict(kwargs, shape=shape))
    ref = simulate_still(still, det, sf_table)
    assert ref.max() > 0
    for block in (1 << 10, 1 << 22):
        np.testing.assert_array_equal(simulate_still(still, det, sf_table, block_pixels=block), ref)
    np.testing.assert_array_equal(to_numpy(simulate_still(still, det, sf_table, xp=cp)), ref)
    full = simulate_still(still, det, sf_table, exhaustive=True)
    np.testing.assert_array_equal(simulate_still(still, det, sf_table, exhaustive=True, block_pixels=1 << 11), full)
    np.testing.assert_array_equal(to_numpy(simulate_still(still, det, sf_table, exhaustive=True, xp=cp)), full)


@pytest.fixture
def cupy_is_the_stand_in(monkeypatch):
    """`import cupy` gives the stand-in: the workflow's own backend strings take the device path."""
    monkeypatch.setitem(sys.modules, "cupy", cp)
    return cp


def test_backend_choice_is_logged_and_auto_never_falls_back_silently(cupy_is_the_stand_in, monkeypatch):
    xp, line = resolve_backend("auto")
    assert xp is cp and line.startswith("backend cupy (auto: CuPy stand-in")
    assert resolve_backend("numpy") == (np, "backend numpy (asked for)")
    monkeypatch.setattr(cp.cuda.runtime, "getDeviceCount", lambda: 0)
    xp, line = resolve_backend("auto")
    assert xp is np and "sees no GPU" in line
    monkeypatch.setitem(sys.modules, "cupy", None)  # not installed: import raises ImportError
    xp, line = resolve_backend("auto")
    assert xp is np and "CuPy not importable" in line


def test_a_shard_simulated_on_device_arrays_is_byte_identical(cupy_is_the_stand_in, tmp_path, mtz_1ic6_7kev, caplog):
    from test_shards import SIM, shard

    sim = dict(SIM, psf_fwhm_um=40.0, oversample=2)
    stats_np = shard(tmp_path / "numpy.h5", mtz_1ic6_7kev, range(0, 2), sim=sim, backend="numpy")
    log = logging.getLogger("test_cupy_path")
    with caplog.at_level(logging.INFO, logger="test_cupy_path"):
        stats_dev = shard(tmp_path / "cupy.h5", mtz_1ic6_7kev, range(0, 2), sim=sim, backend="auto", log=log)
    assert stats_np["backend"] == "numpy" and stats_dev["backend"] == "fake_cupy"
    assert any(r.getMessage().startswith("backend cupy (auto") for r in caplog.records)
    assert (tmp_path / "cupy.h5").read_bytes() == (tmp_path / "numpy.h5").read_bytes()


def test_a_matched_shard_on_device_arrays_is_byte_identical(cupy_is_the_stand_in, tmp_path, small_experiment):  # noqa: F811
    a = matched_shard(tmp_path / "numpy.h5", small_experiment, frames=range(2))
    b = matched_shard(tmp_path / "cupy.h5", small_experiment, frames=range(2), backend="cupy")
    assert a["frames"] == b["frames"] == 2
    assert (tmp_path / "cupy.h5").read_bytes() == (tmp_path / "numpy.h5").read_bytes()
