"""Predictions and the evaluator in the tiny workflow: one prediction file per (model x input) with the input's
shape, the model card's uuid and the classes; the evaluator's tables; targeted reruns of one model or one input."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from braggflow.formats.frames import read_frames_info
from conftest import TINY, run_snakemake

EXP = "shifted"
MODELS = ["peak_finder-7keV_100mm", "peak_finder-8keV_100mm", "hit_classifier-7keV_100mm",
          "hit_classifier-8keV_100mm", "energy_distance"]


def pred_path(work, model):
    return work / f"results/predictions/{EXP}/{model}/{EXP}_probability_pred.h5"


def test_the_shifted_set_is_labelled_and_differs_from_its_dataset(tiny_run):
    from braggflow.formats.nxmx import read_geometry

    shifted = read_geometry(tiny_run / f"results/experiments/{EXP}/{EXP}.h5")
    like = json.loads((tiny_run / "results/geometry/7keV_100mm/geometry.json").read_text())
    assert shifted.camera_length_m == pytest.approx(like["camera_length_m"] + 0.006)
    assert shifted.beam_center_px == pytest.approx((like["beam_center_px"][0] + 14, like["beam_center_px"][1] - 9))
    info = read_frames_info(tiny_run / f"results/experiments/{EXP}/frames.h5")
    assert (info.n_frames, info.n_panels, info.shape) == (2, 1, (1065, 1030)) and info.adu_per_photon == 2.0
    summary = pd.read_csv(tiny_run / "results/evaluation/summary.tsv", sep="\t")
    assert set(summary[summary.experiment == EXP].input) == {"shifted simulation"}


def test_one_prediction_file_per_model_with_the_inputs_shape_and_the_card(tiny_run):
    info = read_frames_info(tiny_run / f"results/experiments/{EXP}/frames.h5")
    for model in MODELS:
        with h5py.File(pred_path(tiny_run, model), "r") as f:
            pred, classes = f["pred"][()], [c.decode() for c in f["classes"][()]]
            model_id = f["model_id"][()].decode()
            assert [c.decode() for c in f["panel_names"][()]] == list(info.panels.name)
        kind, _, dataset = model.partition("-")
        card = (tiny_run / f"results/models/1ic6/{dataset}/{kind}.json" if dataset
                else tiny_run / "results/models/1ic6/energy_distance.json")
        assert model_id == json.loads(card.read_text())["model_id"]
        assert np.all((pred >= 0) & (pred <= 1))
        if kind == "peak_finder":
            assert pred.shape == (2, *info.shape) and pred.dtype == np.float16 and classes == ["peak"]
        elif kind == "hit_classifier":
            assert pred.shape == (2,) and classes == ["hit"]
        else:
            assert classes == ["7keV_100mm", "8keV_100mm"] and pred.shape == (2, 2)
            np.testing.assert_allclose(pred.sum(axis=1), 1.0, rtol=1e-5)


def test_the_evaluator_ranks_every_model_and_finder_against_truth_and_dials(tiny_run):
    s = pd.read_csv(tiny_run / "results/evaluation/summary.tsv", sep="\t")
    peak_models = [m for m in MODELS if m.startswith("peak_finder")]
    truth = s[s.reference == "truth"]
    # A row per model x file, CNN and conventional finder side by side, recall and median offset reported.
    assert sorted(truth[truth.finder == "cnn"].model) == peak_models
    assert sorted(truth[truth.finder == "dispersion"].model) == peak_models
    assert truth["rank"].tolist() == list(range(1, len(truth) + 1))
    for col in ("recall", "precision", "median_offset_px", "median_radial_px", "median_transverse_px", "rmsd_px",
                "spurious_per_frame"):
        assert col in s.columns
    assert (truth.n_reference > 0).all() and truth.recall.between(0, 1).all()
    dials = s[s.reference == "dials"]
    # DIALS indexes the shifted hits; its own spots, found again at its predictions, are found within a pixel.
    assert len(dials) and dials[dials.finder == "dials"].recall.min() > 0.5
    assert (dials[dials.finder == "dials"].median_offset_px < 1.0).all()
    bins = pd.read_csv(tiny_run / "results/evaluation/offsets_by_resolution.tsv", sep="\t")
    assert set(bins.reference) <= {"truth", "dials", "dials_predicted_geometry"} and (bins.n >= 0).all()
    clf = pd.read_csv(tiny_run / "results/evaluation/classifiers.tsv", sep="\t")
    assert set(clf.model) == {"hit_classifier-7keV_100mm", "hit_classifier-8keV_100mm", "energy_distance"}
    real = clf[clf.experiment == "cspad"]  # hit_frames: dials_indexed scores the classifier on the real stills
    assert list(real.reference) == ["frames DIALS indexed"] and real.accuracy.between(0, 1).all()
    assert (tiny_run / "results/evaluation/summary.png").stat().st_size > 10_000
    assert (tiny_run / f"results/evaluation/{EXP}/offsets.png").stat().st_size > 10_000


def job_counts(out: str) -> dict[str, int]:
    """The dry run's job table: rule name -> jobs."""
    import re

    rows = [re.fullmatch(r"(\w+)\s+(\d+)", ln.strip()) for ln in out.splitlines()]
    return {m.group(1): int(m.group(2)) for m in rows if m}


def test_one_model_or_one_input_reruns_alone(tiny_run):
    target = pred_path(tiny_run, "hit_classifier-8keV_100mm").relative_to(tiny_run)
    res = run_snakemake(tiny_run, str(target), "-n", "--forcerun", "predict", configfile=TINY)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert job_counts(out) == {"predict": 1, "total": 1}, out[-3000:]
    res = run_snakemake(tiny_run, "results/evaluation/summary.tsv", "-n", "--forcerun", "import_frames_dxtbx",
                        configfile=TINY)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    counts = job_counts(out)
    # Both inputs' frames again (shifted set and CSPAD shots): their DIALS runs, all 5 + 3 predictions, the 2 + 2
    # evaluations, the plots and the summary; the CSPAD's matched model again (calibrated from the frames and
    # simulated in their geometry);
    # no matrix training and no shifted simulation.
    assert counts["import_frames_dxtbx"] == 2 and counts["predict"] == 8 and counts["evaluate_predictions"] == 4
    assert counts["matched_frames"] == 1 and counts["train_matched_peak_finder"] == 1
    assert counts["calibrate_matched"] == 1 and counts["matched_outlier_pixels"] == 1
    assert counts["dials_experiment"] == 2 and "train_peak_finder" not in counts and "simulate_shifted" not in counts


def test_real_cspad_stills_predict_per_panel_and_are_scored_against_dials(tiny_run):
    info = read_frames_info(tiny_run / "results/experiments/cspad/frames.h5")
    assert (info.n_frames, info.n_panels, info.shape) == (2, 64, (185, 194)) and info.adu_per_photon == 28.0
    assert info.wavelength_angstrom == pytest.approx([1.2726, 1.2726], abs=5e-4)  # per shot
    with h5py.File(tiny_run / "results/predictions/cspad/peak_finder-8keV_100mm/cspad_probability_pred.h5") as f:
        assert f["pred"].shape == (2, 64, 185, 194) and f.attrs["layout"] == "frames, panels, slow, fast"
        assert [c.decode() for c in f["panel_names"][()]] == list(info.panels.name)
    s = pd.read_csv(tiny_run / "results/evaluation/summary.tsv", sep="\t")
    cspad = s[s.experiment == "cspad"]
    assert set(cspad.reference) == {"dials"} and set(cspad.finder) == {"cnn", "dispersion", "dials"}
    assert set(cspad.input) == {"file"}
    own = cspad[cspad.finder == "dials"].iloc[0]
    # DIALS indexed both shots; its own strong spots sit on its predictions of the I/sigma >= 5 reflections.
    assert own.frames == 2 and own.recall > 0.9 and own.median_offset_px < 1.0


def test_the_matched_model_is_trained_in_the_cspad_geometry_and_scored_beside_the_matrix_model(tiny_run):
    from braggflow.ml import data as D

    shard = tiny_run / "results/matched/cspad/shard_0000.h5"
    refs = D.index_shards([shard])
    assert len(refs) == 3 and refs[0].energy_kev == pytest.approx(12.398 / 1.2726, rel=1e-3)
    counts, _ = D.read_frame(refs[0])
    assert counts.shape == (64 * 185 + 63 * 32, 194)  # 64 CSPAD panels stacked, 32 untrusted rows apart
    with h5py.File(shard) as f:
        np.testing.assert_allclose(f["braggflow/panels/origin_mm"][()],
                                   read_frames_info(tiny_run / "results/experiments/cspad/frames.h5").panels.origin_mm)
    # The crystal simulated is the workflow's stand-in: thermolysin's composition in the cell DIALS found on the
    # two shots and the space group it indexed in.
    from braggflow.stand_in import dials_mean_cell
    from braggflow.structures import read_structure

    stand_in = read_structure(tiny_run / "results/matched/cspad/stand_in.pdb")
    assert stand_in.spacegroup_hm == "P 61 2 2" and {"Zn", "Ca"} <= set(stand_in.elements)
    assert stand_in.cell == pytest.approx(dials_mean_cell(tiny_run / "results/experiments/cspad/dials/export.npz"),
                                          abs=1e-3)
    with h5py.File(shard) as f:
        assert f["braggflow"].attrs["structure"] == "stand_in"
    # Its beam, jet, PSF, noise, lone pixels and photon cut are calibrated from the two shots (the crystal size is
    # set by hand and kept): the integrating CSPAD holds lone pixels well beyond what noise makes, so they are
    # drawn at that excess with the amplitudes measured in the shots.
    measured = json.loads((tiny_run / "results/matched/cspad/outlier_pixels.json").read_text())
    assert measured["frames"] == 2 and measured["per_mpx"] > 10 and min(measured["photons"]) >= 5.0
    cal = json.loads((tiny_run / "results/matched/cspad/calibration.json").read_text())
    fitted = cal["settings"]
    assert cal["hand_set"] == ["simulation.ncells"] and cal["detector_kind"] == "integrating"
    assert cal["indexed_frames"] == 2 and (tiny_run / "results/matched/cspad/calibration.png").stat().st_size > 0
    assert fitted["simulation"]["ncells"] == {"dist": "fixed", "value": 30}
    assert 0 < fitted["overlay"]["outlier_pixels_per_mpx"] < measured["per_mpx"]
    assert fitted["outliers_from_frames"] is True and 20 < fitted["peak_finder"]["score_min_photons"] < 80
    with h5py.File(shard) as f:
        sim = json.loads(f["braggflow"].attrs["simulation"])
        overlay = json.loads(f["braggflow"].attrs["overlay"])
        assert sim["beam"]["photons_per_pulse"] == fitted["beam"]["photons_per_pulse"]
        assert sim["jet_thickness_m"] == pytest.approx(fitted["jet_thickness_um"] * 1e-6)
        assert sim["psf_fwhm_um"] == fitted["simulation"]["psf_fwhm_um"]
        assert {k: overlay[k] for k in fitted["overlay"]} == fitted["overlay"]
        assert f["braggflow"].attrs["outlier_source"] == (f"{len(measured['photons'])} lone-pixel amplitudes "
                                                          "measured in frames.h5")
        assert f["braggflow/frames/outlier_pixels"][()].sum() > 0
    card = json.loads((tiny_run / "results/matched/cspad/peak_finder.json").read_text())
    assert card["datasets"] == ["matched-cspad"]
    with h5py.File(tiny_run / "results/predictions/cspad/peak_finder-matched/cspad_probability_pred.h5") as f:
        assert f["pred"].shape == (2, 64, 185, 194) and f["model_id"][()].decode() == card["model_id"]
    s = pd.read_csv(tiny_run / "results/evaluation/summary.tsv", sep="\t")
    cspad = s[s.experiment == "cspad"]
    assert set(cspad.model) == {"peak_finder-8keV_100mm", "peak_finder-matched"}


def test_hit_finding_first_skips_the_frames_called_blank_and_nothing_else(tiny_run, tmp_path):
    from braggflow.config import load_config
    from braggflow.errors import InputError
    from braggflow.formats.predictions import read_prediction, write_prediction
    from braggflow.ml.predict import predict_file
    from braggflow.settings import TrainingRun, TrainingSettings

    from conftest import ROOT

    training = TrainingSettings.from_config(load_config(TINY, ROOT / "config/config.schema.yaml")["training"])
    frames = tiny_run / f"results/experiments/{EXP}/frames.h5"
    stem = tiny_run / "results/models/1ic6/7keV_100mm/peak_finder"
    ungated = read_prediction(pred_path(tiny_run, "peak_finder-7keV_100mm"))
    hits = tmp_path / "hits.h5"  # a hit classifier that calls the second of the two frames blank
    write_prediction(hits, np.array([0.9, 0.1], np.float32), classes=["hit"], model_id="m", panel_names=["p"],
                     attrs={})
    run = TrainingRun("cpu", 1)
    for gate, skipped in ((0.05, [False, False]), (0.5, [False, True]), (0.95, [True, True])):
        out = tmp_path / f"gate_{gate:g}.h5"
        stats = predict_file(frames, stem.with_suffix(".json"), stem.with_suffix(".pt"), out, training=training,
                             run=run, hits_path=hits, hit_gate=gate)
        got, skipped = read_prediction(out), np.array(skipped)
        assert stats["skipped_blank_frames"] == int(skipped.sum()) and got["hit_gate"] == gate
        assert np.array_equal(got["skipped_blank"], skipped)
        assert not got["pred"][skipped].any()  # no peak on a skipped frame
        assert np.array_equal(got["pred"][~skipped], ungated["pred"][~skipped])  # the others as without a gate
    with pytest.raises(InputError, match="not a hit classifier's prediction"):
        predict_file(frames, stem.with_suffix(".json"), stem.with_suffix(".pt"), tmp_path / "bad.h5",
                     training=training, run=run, hits_path=pred_path(tiny_run, "energy_distance"), hit_gate=0.5)
    assert not (tmp_path / "bad.h5").exists()
