"""Every trained model as ONNX: the export reproduces the torch network, its bytes are reproducible, the card names
and hashes it, and the predict rule's two engines (torch, ONNX Runtime) give the same probabilities to 1e-5."""

import json

import h5py
import numpy as np
import pytest
import torch

from braggflow.ml import onnx_models as O
from braggflow.ml.models import EnergyDistanceNet, HitClassifier, PeakCellUNet, PeakUNet
from conftest import ROOT, TINY

pytest.importorskip("onnxruntime", reason="onnxruntime is a dependency (pyproject.toml): pip install -e .")


def _models():
    torch.manual_seed(3)
    return [("peak_finder", PeakUNet(4), {"base_channels": 4}, torch.rand(1, 3, 44, 52) * 3),
            ("peak_finder", PeakCellUNet(4, 4), {"architecture": "cell_unet", "base_channels": 4, "cell_px": 4},
             torch.rand(3, 3, 48, 40) * 3),
            ("hit_classifier", HitClassifier(4), {"channels": 4}, torch.rand(3, 2, 21, 17) * 3),
            ("energy_distance", EnergyDistanceNet(2, 32, 3, 2, 4),
             {"sectors": 2, "radial_bins": 32, "n_energies": 3, "n_distances": 2, "channels": 4},
             torch.rand(5, 2, 32) * 4)]


@pytest.mark.parametrize("index", range(4))
def test_onnx_export_gives_the_torch_networks_probabilities_on_other_shapes_and_the_same_bytes(tmp_path, index):
    kind, model, arguments, x = _models()[index]
    model.eval()
    entry = O.export_onnx(model, kind, arguments, tmp_path / "a.onnx")
    again = O.export_onnx(model, kind, arguments, tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert entry["sha256"] == again["sha256"] and entry["opset"] == O.OPSET and entry["path"] == "a.onnx"
    assert list(entry["inputs"]) == list(O.SIGNATURES[kind].inputs)
    with torch.no_grad():
        want = model(x)
    want = [t.numpy() for t in (want if isinstance(want, tuple) else (want,))]
    # Shapes and batch sizes unlike the export's check input: the axes are free.
    got = O.OnnxModel.from_bytes(tmp_path / "a.onnx", threads=2).run(x.numpy())
    assert [g.shape for g in got] == [w.shape for w in want]
    for w, g in zip(want, got):
        if kind == "energy_distance":
            w, g = torch.softmax(torch.from_numpy(w), 1).numpy(), torch.softmax(torch.from_numpy(g), 1).numpy()
        else:
            w, g = 1 / (1 + np.exp(-w)), 1 / (1 + np.exp(-g))
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)


def test_an_export_that_does_not_match_torch_writes_nothing(tmp_path, monkeypatch):
    kind, model, arguments, _ = _models()[2]
    monkeypatch.setattr(O, "EXPORT_TOLERANCE", -1.0)
    with pytest.raises(RuntimeError, match="bad.onnx: ONNX Runtime gives logits"):
        O.export_onnx(model.eval(), kind, arguments, tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("index", range(2))
def test_a_whole_frame_through_onnx_runtime_in_blocks_matches_torch(tmp_path, index):
    from braggflow.io import file_sha256
    from braggflow.ml.peak_finder import predict_probability

    _, model, arguments, _ = _models()[index]
    model.eval()
    entry = O.export_onnx(model, "peak_finder", arguments, tmp_path / "p.onnx")
    assert entry["sha256"] == file_sha256(tmp_path / "p.onnx")
    onnx = O.load_onnx({"model_id": "m", "model": "peak_finder", "arguments": arguments, "onnx": entry},
                       tmp_path / "p.onnx", threads=1)
    assert (onnx.multiple_px, onnx.margin_px, onnx.block_px) == (model.multiple_px, model.margin_px, model.block_px)
    rng = np.random.default_rng(0)
    counts = rng.poisson(1.0, (203, 310)).astype(np.float32)
    counts[50:53, 60:63] += 40
    counts[:, 100] = -1  # an untrusted column
    a = predict_probability(model, counts, torch.device("cpu"), block_px=96)
    b = predict_probability(onnx, counts, torch.device("cpu"), block_px=96)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)


def test_load_onnx_checks_the_cards_hash_and_names_the_file(tmp_path):
    kind, model, arguments, _ = _models()[2]
    entry = O.export_onnx(model.eval(), kind, arguments, tmp_path / "h.onnx")
    card = {"model_id": "m", "onnx": dict(entry, sha256="0" * 64)}
    with pytest.raises(ValueError, match="h.onnx: sha256 .* is not the model card's 000000000000"):
        O.load_onnx(card, tmp_path / "h.onnx", 1)
    with pytest.raises(ValueError, match="lists no ONNX file"):
        O.load_onnx({"model_id": "m"}, tmp_path / "h.onnx", 1)


@pytest.mark.slow
def test_the_workflows_models_carry_their_onnx_and_both_engines_predict_alike(tiny_run, tmp_path):
    from braggflow.config import load_config
    from braggflow.io import file_sha256
    from braggflow.ml.predict import predict_file
    from braggflow.settings import TrainingRun, TrainingSettings

    training = TrainingSettings.from_config(load_config(TINY, ROOT / "config/config.schema.yaml")["training"])
    frames = tiny_run / "results/experiments/shifted/frames.h5"
    models = tiny_run / "results/models/1ic6"
    for stem in (models / "7keV_100mm/peak_finder", models / "8keV_100mm/hit_classifier",
                 models / "energy_distance", tiny_run / "results/matched/cspad/peak_finder"):
        card = json.loads(stem.with_suffix(".json").read_text())
        onnx = stem.with_suffix(".onnx")
        assert card["onnx"]["path"] == onnx.name and card["onnx"]["sha256"] == file_sha256(onnx)
        assert card["onnx"]["opset"] == O.OPSET and card["software"]["onnxruntime"] != "not installed"
        out = {}
        for engine in O.ENGINES:
            out[engine] = tmp_path / f"{stem.name}_{engine}.h5"
            predict_file(frames, stem.with_suffix(".json"), stem.with_suffix(".pt"), out[engine], training=training,
                         run=TrainingRun("cpu", 1, engine), onnx_path=onnx)
        with h5py.File(out["torch"]) as a, h5py.File(out["onnxruntime"]) as b:
            assert a.attrs["inference_engine"] == "torch"
            assert b.attrs["inference_engine"] == "onnxruntime (CPUExecutionProvider)"
            # float16 peak probabilities: a value within 1e-5 of torch's may round to the neighbouring float16.
            tolerance = 1e-5 + (float(np.spacing(np.float16(1.0))) if a["pred"].dtype == np.float16 else 0.0)
            np.testing.assert_allclose(b["pred"][()].astype(float), a["pred"][()].astype(float), rtol=0,
                                       atol=tolerance)
