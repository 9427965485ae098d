"""The formats layer on its own: files written and read back, readers that give every input the same axes, and
errors that name the file."""

import numpy as np
import pytest

from braggflow.config import workflow_config
from braggflow.errors import InputError
from braggflow.formats import dials_export, predictions, profiles
from conftest import ROOT, TINY


@pytest.mark.parametrize("panels", [1, 3])
def test_peak_probabilities_read_every_input_with_a_panel_axis(tmp_path, panels):
    shape = (2, 5, 4) if panels == 1 else (2, panels, 5, 4)
    pred = np.random.default_rng(0).random(shape).astype(np.float16)
    layout = "frames, slow, fast" if panels == 1 else "frames, panels, slow, fast"
    path = tmp_path / "p.h5"
    predictions.write_prediction(path, pred, classes=["peak"], model_id="m", panel_names=[f"p{i}" for i in
                                                                                          range(panels)],
                                 attrs={"layout": layout, "threshold": 0.5, "min_spot_px": 2, "model": "peak_finder"})
    with predictions.peak_probabilities(path) as (probability, threshold, min_spot_px):
        assert (threshold, min_spot_px) == (0.5, 2)
        assert probability(1).shape == (panels, 5, 4)
        np.testing.assert_array_equal(probability(1).reshape(-1), pred[1].reshape(-1))
    back = predictions.read_prediction(path)
    assert back["classes"] == ["peak"] and back["model_id"] == "m" and back["layout"] == layout
    with pytest.raises(InputError, match="nope.h5: not a braggflow prediction file"):
        predictions.read_prediction(tmp_path / "nope.h5")


def test_a_dials_export_needs_every_array_and_one_length_per_frame(tmp_path):
    n = 2
    arrays = {k: np.zeros(n) for k in dials_export.FRAME_KEYS}
    arrays.update({k: np.zeros(0) for k in dials_export.KEYS if k not in dials_export.FRAME_KEYS})
    path = tmp_path / "export.npz"
    dials_export.write_dials_export(path, arrays)
    assert sorted(dials_export.read_dials_export(path, n)) == sorted(dials_export.KEYS)
    with pytest.raises(InputError, match=r"export.npz: 2 frames exported; 3 expected"):
        dials_export.read_dials_export(path, 3)
    del arrays["refl_h"]
    with pytest.raises(InputError, match=r"bad.npz: DIALS export lacks \['refl_h'\]"):
        dials_export.write_dials_export(tmp_path / "bad.npz", arrays)
    assert not (tmp_path / "bad.npz").exists()


def test_profiles_round_trip(tmp_path):
    path = tmp_path / "profiles.h5"
    arrays = {"polar": np.ones((2, 3, 4)), "profile": np.ones((2, 4)), "energy": np.array([0, 1]),
              "distance": np.array([1, 0])}
    with profiles.profiles_writer(path, energies_kev=[6.0, 7.0], camera_lengths_m=[0.1, 0.2],
                                  sources=["a.h5"]) as write:
        for split in ("train", "test"):
            write(split, arrays, ["d/0", "d/1"])
    back, frames, classes = profiles.read_profiles(path, ("train", "test"))
    np.testing.assert_array_equal(back["test"]["polar"], arrays["polar"])
    assert frames["train"] == ["d/0", "d/1"] and classes == {"energies_kev": [6.0, 7.0],
                                                             "camera_lengths_m": [0.1, 0.2]}


def test_workflow_config_extends_or_replaces_the_default_as_snakemake_does():
    default = workflow_config([], ROOT)
    extended = workflow_config([TINY], ROOT)
    replaced = workflow_config([TINY], ROOT, replace=True)
    assert set(default["experiments"]) < set(extended["experiments"])  # the default's stay, the tiny's join
    assert sorted(replaced["experiments"]) == ["cspad", "shifted"]
    assert replaced["matrix"]["photon_energies_kev"] == extended["matrix"]["photon_energies_kev"] == [7.0, 8.0]
    assert replaced["evaluation"] == default["evaluation"]  # left out: the schema's defaults
