"""ML stage: metrics on hand-made cases, the baseline spot finder, streaming, splits, determinism, weights, cards.

Synthetic overlay shards (the layout of braggflow.overlay, 96 x 96 pixels) keep every test in seconds.
"""

import dataclasses
import hashlib
import json
import typing
import uuid
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from braggflow.config import section_defaults  # noqa: E402
from braggflow.errors import InputError  # noqa: E402
from braggflow.ml import data as D  # noqa: E402
from braggflow.ml.baselines import DispersionSettings, find_spots, tune_hit_threshold  # noqa: E402
from braggflow.ml.cards import CARD_FIELDS  # noqa: E402
from braggflow.ml.metrics import (PeakCounts, confusion_matrix, frame_peak_counts, match_peaks,  # noqa: E402
                                  peak_scores)
from braggflow.settings import TrainingRun, TrainingSettings  # noqa: E402

torch.set_num_threads(1)
SHAPE = (96, 96)


def gaussian_spots(shape, xy, photons, sigma_px=0.7):
    """Expected photons of Gaussian spots at DIALS positions (pixel i spans [i, i+1))."""
    yy, xx = np.indices(shape) + 0.5
    img = np.zeros(shape)
    for (x, y), n in zip(xy, photons):
        img += n * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma_px**2)) / (2 * np.pi * sigma_px**2)
    return img


def water_level(energy_kev, camera_length_m, shape=SHAPE, centre=(48.0, 48.0)):
    """A toy water image: the level falls with camera length, a ring moves out with energy."""
    yy, xx = np.indices(shape) + 0.5
    r = np.hypot(xx - centre[0], yy - centre[1])
    return (0.01 / camera_length_m**2) * (1 + 3 * np.exp(-((r - 5 * energy_kev) ** 2) / 30))


def write_fake_shard(path, *, dataset, energy_kev, camera_length_m, frames, seed=0, hit_every=4):
    """An overlay-shaped shard: counts with -1 in a masked column, peak labels, frame table, truth."""
    rng = np.random.default_rng(seed)
    n = len(frames)
    counts = np.zeros((n, *SHAPE), np.int32)
    labels = np.zeros((n, *SHAPE), np.uint8)
    truth = {k: [] for k in ("frame_index", "h", "k", "l", "d_angstrom", "x_px", "y_px", "photons",
                             "peak_fraction", "visible")}
    hits, n_peaks = [], []
    for i, fi in enumerate(frames):
        hit = int(fi % hit_every != 0)
        water = water_level(energy_kev, camera_length_m) * rng.uniform(0.85, 1.15)
        bragg = np.zeros(SHAPE)
        if hit:
            xy = rng.uniform(8, 88, size=(6, 2))
            ph = rng.uniform(80, 200, 6)
            bragg = gaussian_spots(SHAPE, xy, ph)
            for (x, y), p in zip(xy, ph):
                for k, v in zip(truth, (fi, 1, 2, 3, 2.0, x, y, p, 0.9, True)):
                    truth[k].append(v)
        c = rng.poisson(bragg + water).astype(np.int32)
        c[:, 40] = -1
        counts[i] = c
        labels[i] = (bragg > 2 * np.sqrt(water)) & (bragg >= 1) & (c >= 0)
        hits.append(hit)
        n_peaks.append(6 * hit)
    with h5py.File(path, "w") as f:
        geometry = {"energy_kev": energy_kev, "camera_length_m": camera_length_m, "beam_center_px": [48.0, 48.0]}
        f["entry/braggflow_geometry"] = json.dumps(geometry)
        f.create_dataset("entry/data/data", data=counts, chunks=(1, *SHAPE), compression="gzip")
        f.create_dataset("braggflow/labels/peak_mask", data=labels, chunks=(1, *SHAPE), compression="gzip")
        f["braggflow"].attrs["dataset"] = dataset
        f["braggflow/frames/frame_index"] = np.asarray(frames)
        f["braggflow/frames/hit"] = np.asarray(hits)
        f["braggflow/frames/n_peaks"] = np.asarray(n_peaks)
        for k, v in truth.items():
            f[f"braggflow/truth/{k}"] = np.asarray(v, dtype=bool if k == "visible" else float)
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ml")
    out = {}
    for j, (e, c) in enumerate([(7.0, 0.1), (8.0, 0.1), (7.0, 0.2), (8.0, 0.2)]):
        name = f"{e:g}keV_{c * 1000:g}mm"
        out[name] = [write_fake_shard(tmp / f"{name}_{s}.h5", dataset=name, energy_kev=e, camera_length_m=c,
                                      frames=range(6 * s, 6 * s + 6), seed=10 * j + s) for s in range(2)]
    return out


SCHEMA = Path(__file__).resolve().parents[1] / "config/config.schema.yaml"
RUN = TrainingRun(device="cpu", threads=1)


def tiny_cfg(**over):
    """The schema's training defaults, shrunk to seconds."""
    return TrainingSettings.from_config(section_defaults(
        SCHEMA, "training", **{"peak_finder": {"base_channels": 4, "tile_px": 32, "tiles_per_frame": 8,
                                               "batch_size": 8, "epochs": 3, "patience": 2},
                               "hit_classifier": {"bin_px": 4, "channels": 4, "epochs": 30, "patience": 30},
                               "energy_distance": {"radial_bins": 32, "sectors": 2, "channels": 8, "epochs": 150,
                                                   "patience": 150}, **over}))


# ---------------------------------------------------------------- metrics

def test_matching_radius_is_inclusive_at_3_px_and_one_to_one():
    true = np.array([[10.0, 10.0], [50.0, 50.0]])
    pi, ti = match_peaks(np.array([[12.9, 10.0], [50.0, 53.1]]), true, 3.0)
    assert list(pi) == [0] and list(ti) == [0]  # 2.9 px matches, 3.1 px does not
    c = frame_peak_counts(np.array([[10.5, 10.0], [9.0, 10.0]]), true, 3.0)
    assert (c.tp, c.fp, c.fn) == (1, 1, 1)  # two predictions on one reflection: one TP, one FP
    assert c.errors_px == [pytest.approx(0.5)]


def test_matching_maximises_matches_not_greedy_distance():
    # Greedy nearest-first would pair p0 with t1 (0.5 px) and leave t0 unmatched; optimal pairs both.
    pred = np.array([[10.0, 10.0], [13.0, 10.0]])
    true = np.array([[7.5, 10.0], [10.5, 10.0]])
    pi, _ = match_peaks(pred, true, 3.0)
    assert len(pi) == 2


def test_precision_recall_f1_and_localization_by_hand():
    total = PeakCounts()
    total.add(frame_peak_counts(np.array([[1.0, 1.0], [20.0, 20.0], [40.0, 40.0]]),
                                np.array([[1.0, 2.0], [20.0, 20.5], [70.0, 70.0], [90.0, 90.0]]), 3.0))
    s = peak_scores(total)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 2)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(0.5)
    assert s["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert s["loc_error_median_px"] == pytest.approx(0.75)
    assert s["loc_error_p95_px"] == pytest.approx(0.5 + 0.95 * 0.5)
    empty = peak_scores(PeakCounts())
    assert empty["f1"] == 0.0 and np.isnan(empty["loc_error_median_px"])


def test_predictions_on_weak_unlabelled_reflections_are_ignored():
    c = frame_peak_counts(np.array([[5.0, 5.0], [30.0, 30.0]]), np.array([[5.0, 5.0]]), 3.0,
                          ignore_xy=np.array([[31.0, 30.0]]))
    assert (c.tp, c.fp, c.fn) == (1, 0, 0)


def test_spots_on_labelled_signal_without_a_listed_reflection_are_ignored():
    from braggflow.ml.metrics import unlisted_signal_mask

    label = np.zeros((40, 40), bool)
    label[10:12, 10:12] = True  # a listed reflection at (11, 11)
    label[30:32, 5:7] = True  # Bragg signal with no row in the truth table
    unlisted = unlisted_signal_mask(label, np.array([[11.0, 11.0]]), 3.0)
    assert unlisted[30, 5] and unlisted[29, 4] and not unlisted[10, 10] and not unlisted[20, 20]
    pred = np.array([[11.2, 11.0], [6.0, 31.0], [20.5, 20.5]])
    c = frame_peak_counts(pred, np.array([[11.0, 11.0]]), 3.0, ignore_mask=unlisted)
    assert (c.tp, c.fp, c.fn) == (1, 1, 0)  # the spot on unlisted signal is not counted; the one on noise is


def test_a_photon_cut_excuses_weak_visible_reflections_for_every_finder(shards):
    """score_min_photons: reflections below the cut leave the reference and excuse a spot on them, as the evaluator
    does with real reflections below its I/sigma cut; the CNN's and the baseline's scores both use it."""
    from braggflow.ml import data as D
    from braggflow.ml.peak_finder import score_spots, truth_xy

    ref = next(r for r in D.index_shards(shards["7keV_100mm"]) if r.hit)
    t = D.read_frame_truth(ref)
    all_vis, _, _ = truth_xy(ref, 3.0)
    cut = float(np.median(t.photons))
    strong, excused, _ = truth_xy(ref, 3.0, cut)
    assert len(all_vis) == 6 and len(strong) == (t.photons >= cut).sum() and 0 < len(strong) < 6
    assert len(excused) == 6 - len(strong)
    found = t[["x_px", "y_px"]].to_numpy(float)  # every reflection found, weak ones included
    (s_all, _), (s_cut, _) = score_spots([(ref, found)], 3.0), score_spots([(ref, found)], 3.0, cut)
    assert (s_all["tp"], s_all["fp"]) == (6, 0) and (s_cut["tp"], s_cut["fp"], s_cut["fn"]) == (len(strong), 0, 0)
    (s_miss, _) = score_spots([(ref, found[t.photons.to_numpy() < cut])], 3.0, cut)
    assert (s_miss["tp"], s_miss["fp"], s_miss["fn"]) == (0, 0, len(strong))
    from braggflow.ml.peak_finder import baseline_peak_finding

    cfg = tiny_cfg()
    cfg = dataclasses.replace(cfg, peak_finder=dataclasses.replace(cfg.peak_finder, score_min_photons=1e6))
    refs = D.index_shards(shards["7keV_100mm"])
    out = baseline_peak_finding({"train": refs[:6], "validation": refs[6:9], "test": refs[9:]}, cfg)
    assert out["test"]["tp"] == out["test"]["fn"] == 0  # nothing bright enough to score: all excused


def test_tuning_takes_the_best_f1_or_the_most_precise_setting_reaching_a_recall_floor():
    from braggflow.ml.metrics import select_setting

    grid = [{"name": "loose", "precision": 0.5, "recall": 0.99, "f1": 0.66},
            {"name": "balanced", "precision": 0.85, "recall": 0.9, "f1": 0.874},
            {"name": "tight", "precision": 0.95, "recall": 0.82, "f1": 0.88},
            {"name": "strict", "precision": 1.0, "recall": 0.5, "f1": 0.667}]
    tie = lambda g: ()  # noqa: E731
    assert select_setting(grid, None, tie)["name"] == "tight"  # best F1
    assert select_setting(grid, 0.8, tie)["name"] == "tight"  # most precise with recall >= 0.8
    assert select_setting(grid, 0.85, tie)["name"] == "balanced"
    assert select_setting(grid, 0.999, tie)["name"] == "tight"  # none reaches it: best F1
    # The dispersion baseline follows the same rule: with a floor it never picks a setting below it.
    from braggflow.ml.baselines import DispersionSettings, tune_dispersion

    rng = np.random.default_rng(4)
    frames = []
    for _ in range(3):
        xy = rng.uniform(10, 86, size=(10, 2))
        counts = rng.poisson(gaussian_spots(SHAPE, xy, rng.uniform(8, 60, 10)) + 0.5).astype(np.int32)
        frames.append((counts, xy, np.zeros((0, 2))))
    base = DispersionSettings(3, 6.0, 3.0, 2, 2)
    f1_pick, grid = tune_dispersion(frames, base, [2.0, 3.0, 4.0, 5.0], [1, 2, 3], 3.0)
    at = {(g["sigma_strong"], g["min_spot_px"]): g for g in grid}
    assert at[(f1_pick.sigma_strong, f1_pick.min_spot_px)]["f1"] == max(g["f1"] for g in grid)
    floor = float(np.median([g["recall"] for g in grid]))
    floor_pick, _ = tune_dispersion(frames, base, [2.0, 3.0, 4.0, 5.0], [1, 2, 3], 3.0, min_recall=floor)
    chosen = at[(floor_pick.sigma_strong, floor_pick.min_spot_px)]
    assert chosen["recall"] >= floor
    assert chosen["precision"] == max(g["precision"] for g in grid if g["recall"] >= floor)


def test_confusion_matrix_rows_are_true_classes():
    assert confusion_matrix([0, 1, 1, 2], [0, 0, 1, 2], 3) == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


# ---------------------------------------------------------------- baseline

def test_dispersion_spot_finder_finds_isolated_gaussian_peaks_on_poisson_background():
    rng = np.random.default_rng(5)
    shape = (200, 200)
    gx, gy = np.meshgrid(np.arange(20, 200, 30), np.arange(20, 200, 30))
    xy = np.stack([gx.ravel(), gy.ravel()], 1) + rng.uniform(-0.5, 0.5, (gx.size, 2))
    counts = rng.poisson(2.0 + gaussian_spots(shape, xy, np.full(len(xy), 60.0))).astype(np.int32)
    counts[:, 100] = -1  # a masked column (module gap) must not create spots
    found = find_spots(counts, DispersionSettings())
    s = peak_scores(frame_peak_counts(found, xy[np.abs(xy[:, 0] - 100.5) > 3], 3.0))
    assert s["recall"] >= 0.95 and s["precision"] >= 0.95
    assert s["loc_error_median_px"] < 0.3
    blank = rng.poisson(2.0, shape).astype(np.int32)
    assert len(find_spots(blank, DispersionSettings())) <= 2


def test_hit_threshold_separates_counts():
    assert tune_hit_threshold([0, 1, 0, 12, 30, 9], [0, 0, 0, 1, 1, 1]) == 2


# ---------------------------------------------------------------- data

def test_index_and_split_are_deterministic_and_independent_of_shard_order(shards):
    paths = [p for v in shards.values() for p in v]
    refs = D.index_shards(paths)
    assert len(refs) == 48 and {r.dataset for r in refs} == set(shards)
    a = D.split_frames(refs, 1, 0.2, 0.2)
    b = D.split_frames(list(reversed(D.index_shards(paths[::-1]))), 1, 0.2, 0.2)
    key = {s: [(r.dataset, r.frame_index) for r in a[s]] for s in D.SPLITS}
    assert key == {s: [(r.dataset, r.frame_index) for r in b[s]] for s in D.SPLITS}
    for ds in shards:
        n = {s: sum(r.dataset == ds for r in a[s]) for s in D.SPLITS}
        assert n == {"train": 8, "validation": 2, "test": 2}
    assert key != {s: [(r.dataset, r.frame_index) for r in v] for s, v in D.split_frames(refs, 2, .2, .2).items()}
    # six frames (the demo config) still give one validation and one test frame
    six = D.split_frames([r for r in refs if r.dataset == "7keV_100mm" and r.frame_index < 6], 1, 0.2, 0.2)
    assert [len(six[s]) for s in D.SPLITS] == [4, 1, 1]


def test_tiles_stream_one_frame_at_a_time(shards, monkeypatch):
    refs = D.index_shards(shards["7keV_100mm"])
    reads = []
    real = D.read_frame

    def counting(ref):
        reads.append(ref.frame_index)
        return real(ref)

    monkeypatch.setattr(D, "read_frame", counting)
    batches = D.iter_tile_batches(refs, seed=1, epoch=0, tiles_per_frame=6, tile_px=32, batch_size=3)
    x, y = next(batches)
    assert len(reads) == 1 and x.shape == (3, D.INPUT_CHANNELS, 32, 32) and y.shape == (3, 1, 32, 32)
    rest = list(batches)
    assert len(reads) == len(refs) and len(rest) == 2 * len(refs) - 1
    assert any(b[1].any() for b in rest)  # tiles near reflections carry peak pixels
    again = list(D.iter_tile_batches(refs, seed=1, epoch=0, tiles_per_frame=6, tile_px=32, batch_size=3))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip([(x, y)] + rest, again))


def test_network_input_marks_untrusted_pixels():
    counts = np.full((16, 16), 3, np.int32)
    counts[:, 4] = -1
    x = D.network_input(counts)
    assert x.shape == (3, 16, 16) and (x[:, :, 4] == 0).all() and x[2, 0, 0] == 1
    assert x[0, 0, 0] == pytest.approx(np.log1p(3))


def test_tiles_overhang_the_frame_edges_like_inference_padding():
    # Inference zero-pads whole frames and panels; training tiles must show the net that border, or it calls
    # the noise along every frame edge a peak.
    rng = np.random.default_rng(3)
    counts = rng.poisson(10, (100, 120)).astype(np.int32)
    label = np.zeros(counts.shape, bool)
    label[50, 60] = True
    truth = pd.DataFrame({"x_px": [60.5], "y_px": [50.5], "photons": [100.0], "visible": [True]})
    x, y = D.sample_tiles(counts, label, truth, 400, 32, rng)
    mask = x[:, 2]
    overhang = (mask == 0).any(axis=(1, 2))
    assert 0.05 < overhang.mean() < 0.9
    assert np.all(x[:, :2][np.broadcast_to(mask[:, None] == 0, x[:, :2].shape)] == 0)
    # Labels move with the inputs: every labelled pixel sits where the input holds the peak's counts.
    hits = np.nonzero(y[:, 0])
    assert len(hits[0]) > 0
    assert np.allclose(x[hits[0], 0, hits[1], hits[2]], np.log1p(counts[50, 60]))


def test_polar_profile_ignores_bragg_spots_and_keeps_sub_photon_levels():
    rng = np.random.default_rng(5)
    counts = rng.poisson(0.4, (200, 220)).astype(np.int32)
    counts[:, :3] = -1
    base = D.polar_profile(counts, (110.0, 100.0), 16, 2)
    spotted = counts.copy()
    spotted[60:63, 150:153] = 500  # a Bragg spot: 9 of the bin's pixels
    after = D.polar_profile(spotted, (110.0, 100.0), 16, 2)
    assert np.abs(after - base).max() < 0.05
    # Sub-photon levels survive (a median of these counts would read 0 everywhere).
    assert np.all(np.exp(base[:, 2:12]) > 0.25) and np.all(np.exp(base[:, 2:12]) < 0.45)


def test_broken_shard_names_the_file(tmp_path):
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="broken.h5"):
        D.index_shards([bad])


# ---------------------------------------------------------------- training

def _train_peak_finder(shards, tmp_path, name):
    from braggflow.ml.models import save_weights
    from braggflow.ml.data import frame_splits
    from braggflow.ml.peak_finder import train_peak_finder

    cfg = tiny_cfg()
    model, result = train_peak_finder(frame_splits(shards["7keV_100mm"], cfg, 3), cfg, 3, torch.device("cpu"))
    save_weights(model, tmp_path / name)
    return model, result


def test_cpu_training_is_deterministic_to_the_byte(shards, tmp_path):
    state = torch.random.get_rng_state()
    _, r1 = _train_peak_finder(shards, tmp_path, "a.pt")
    _, r2 = _train_peak_finder(shards, tmp_path, "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert [h["train_loss"] for h in r1.history] == [h["train_loss"] for h in r2.history]
    assert torch.equal(torch.random.get_rng_state(), state)  # no global RNG state touched


def test_weights_round_trip_with_weights_only(shards, tmp_path):
    from braggflow.ml.models import load_weights

    model, _ = _train_peak_finder(shards, tmp_path, "w.pt")
    loaded = load_weights("peak_finder", {"base_channels": 4}, tmp_path / "w.pt")
    x = torch.from_numpy(D.network_input(np.random.default_rng(0).poisson(2, (32, 32)).astype(np.int32)))[None]
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


@pytest.mark.parametrize("arguments", [{"base_channels": 4}, {"architecture": "cell_unet", "base_channels": 4},
                                       {"architecture": "cell_unet", "base_channels": 4, "cell_px": 2}])
def test_full_frame_inference_matches_tiles(shards, arguments):
    from braggflow.ml.models import peak_finder
    from braggflow.ml.peak_finder import predict_probability

    torch.manual_seed(0)
    model = peak_finder(**arguments).eval()
    counts = D.read_counts_only(D.index_shards(shards["7keV_100mm"])[1])
    m = model.multiple_px
    whole = predict_probability(model, counts, torch.device("cpu"), block_px=m * -(-(max(counts.shape) + 1) // m))
    blocks = predict_probability(model, counts, torch.device("cpu"), block_px=32)
    assert whole.shape == counts.shape and np.allclose(whole, blocks, atol=1e-5, rtol=0)


def test_hit_classifier_learns_a_separable_toy_case(shards):
    from braggflow.ml.data import frame_splits
    from braggflow.ml.hit_classifier import train_hit_classifier

    cfg = tiny_cfg()
    paths = [p for v in shards.values() for p in v]
    splits = frame_splits(paths, cfg, 4)
    _, result, metrics = train_hit_classifier(splits, cfg, 4, torch.device("cpu"))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert metrics["hit_accuracy"] == 1.0


def test_energy_distance_model_and_baseline_on_toy_profiles(shards, tmp_path):
    from braggflow.ml.pipeline import run_baseline_energy_distance, run_energy_distance, write_profiles

    paths = [p for v in shards.values() for p in v]
    cfg = tiny_cfg()
    write_profiles(tmp_path / "p.h5", paths, energies_kev=[7.0, 8.0], distances_m=[0.1, 0.2], cfg=cfg, seed=5)
    m = run_energy_distance(tmp_path / "p.h5", weights=tmp_path / "ed.pt", onnx=tmp_path / "ed.onnx",
                            card=tmp_path / "ed.json",
                            history=tmp_path / "ed.tsv", cfg=cfg, run=RUN, seed=5)
    assert m["distance_accuracy"] == 1.0 and m["energy_accuracy"] == 1.0 and m["n_test_frames"] == 8
    b = run_baseline_energy_distance(tmp_path / "p.h5", out=tmp_path / "b.json", seed=5)
    assert b["distance_accuracy"] == 1.0 and b["energy_accuracy"] == 1.0
    assert np.asarray(m["energy_confusion"]).sum() == 8


def test_model_card_fields(shards, tmp_path):
    from braggflow.ml.pipeline import run_hit_classifier
    from braggflow.ml.fit import config_hash

    cfg = tiny_cfg()
    paths = shards["8keV_200mm"]
    run_hit_classifier(paths, weights=tmp_path / "h.pt", onnx=tmp_path / "h.onnx", card=tmp_path / "h.json",
                       history=tmp_path / "h.tsv", cfg=cfg, run=RUN, seed=6)
    card = json.loads((tmp_path / "h.json").read_text())
    assert set(CARD_FIELDS) <= set(card)
    assert uuid.UUID(card["model_id"]).version == 4
    assert card["datasets"] == ["8keV_200mm"] and card["config_hash"] == config_hash(cfg, 6)
    assert card["input_data"] == {p.as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    assert card["weights"]["sha256"] == hashlib.sha256((tmp_path / "h.pt").read_bytes()).hexdigest()
    assert card["onnx"]["sha256"] == hashlib.sha256((tmp_path / "h.onnx").read_bytes()).hexdigest()
    assert card["onnx"]["path"] == "h.onnx" and card["onnx"]["opset"] >= 18
    assert card["training"]["seconds"] > 0 and card["hardware"]["device"] == "cpu"
    assert "hit_accuracy" in card["metrics"]["test"]
    assert sum(len(v) for v in card["split"].values()) == 12


def test_training_settings_are_the_schema_keys_and_take_no_defaults_of_their_own(root):
    import yaml

    schema = yaml.safe_load((root / "config/config.schema.yaml").read_text())["properties"]["training"]

    def keys(node):
        return {k: keys(v) if v.get("type") == "object" else None for k, v in node["properties"].items()}

    def fields(cls):
        hints = typing.get_type_hints(cls)
        return {f.name: fields(hints[f.name]) if isinstance(hints[f.name], type)
                and dataclasses.is_dataclass(hints[f.name]) else None for f in dataclasses.fields(cls)}

    run = {f.name: None for f in dataclasses.fields(TrainingRun)}
    assert keys(schema) == {**fields(TrainingSettings), **run}
    assert not any(f.default is not dataclasses.MISSING for f in dataclasses.fields(TrainingSettings))
    # The default config may train at demo scale (fewer epochs); it names every key the schema has.
    cfg = yaml.safe_load((root / "config/config.yaml").read_text())["training"]

    def config_keys(d):
        return {k: config_keys(v) if isinstance(v, dict) else None for k, v in d.items()}

    assert config_keys(cfg) == keys(schema)


def test_the_evaluator_reads_predictions_without_torch():
    import subprocess
    import sys

    code = ("import sys, braggflow.evaluate, braggflow.ml.baselines, braggflow.ml.metrics, braggflow.ml.predict; "
            "from braggflow.ml.baselines import spots_from_probability; print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "False", res.stderr[-2000:]


# ---------------------------------------------------------------- out of distribution

def test_frames_unlike_the_training_frames_are_flagged_and_the_matrix_test_frames_are_not(shards):
    """The peak finders' envelope (ml.ood): the matrix's own held-out frames lie inside it; the same frames on a
    counting detector's 3 photons/pixel background (the matrix trains on sub-photon water) and the frames of
    another camera length's water lie outside."""
    from braggflow.ml.data import frame_splits
    from braggflow.ml.ood import Envelope, background_features
    from braggflow.ml.pipeline import background_envelope

    cfg = tiny_cfg()
    splits = frame_splits(shards["7keV_100mm"], cfg, 3)
    envelope = Envelope.from_dict(background_envelope(splits).as_dict())  # as a model card keeps it
    held_out = [D.read_counts_only(r) for r in splits["validation"] + splits["test"]]
    assert not envelope.outside(np.array([background_features(c) for c in held_out])).any()
    rng = np.random.default_rng(0)
    bright = [np.where(c >= 0, c + rng.poisson(3.0, c.shape), c) for c in held_out]
    assert envelope.outside(np.array([background_features(c) for c in bright])).all()
    empty = [np.where(c >= 0, 0, c) for c in held_out]  # no water at all: a detector in the dark
    assert envelope.outside(np.array([background_features(c) for c in empty])).all()


def test_the_energy_distance_card_keeps_its_envelope_and_a_prediction_flags_frames_outside_it(tmp_path):
    from braggflow.ml.ood import ENERGY_DISTANCE_FEATURE, describe, fit_envelope

    rng = np.random.default_rng(1)
    train = rng.normal(-2.0, 0.1, (40, 16))
    envelope = fit_envelope(ENERGY_DISTANCE_FEATURE, train, rng.normal(-2.0, 0.1, (10, 16)))
    inside, outside = rng.normal(-2.0, 0.1, (5, 16)), rng.normal(1.1, 0.1, (3, 16))
    scores = envelope.score(np.concatenate([inside, outside]))
    assert (scores[:5] <= envelope.threshold).all() and (scores[5:] > envelope.threshold).all()
    text = describe(envelope, scores, "energy_distance")
    assert text.startswith("energy_distance: 3 of 8 frames are unlike the training frames") and "extrapolations" in text


def test_spot_centroids_are_those_of_scipys_dilation_labels_and_sums_to_the_bit():
    """spots_from_mask sums over the mask's pixels only; the same bits as ndimage's dilation and sum_labels over
    the whole frame (the slower way it was written first)."""
    from scipy import ndimage

    from braggflow.ml.baselines import spots_from_mask

    def reference(mask, weights, min_spot_px, merge_px):
        grown = ndimage.binary_dilation(mask, np.ones((3, 3), bool), iterations=merge_px) if merge_px else mask
        labels, n = ndimage.label(grown, structure=np.ones((3, 3), bool))
        labels = np.where(mask, labels, 0)
        idx = np.arange(1, n + 1)
        w = np.where(mask, np.maximum(weights, 0).astype(np.float64) + 1e-6, 0.0)
        yy, xx = np.indices(mask.shape)
        total = ndimage.sum_labels(w, labels, idx)
        keep = ndimage.sum_labels(mask, labels, idx) >= min_spot_px
        return np.stack([(ndimage.sum_labels(w * xx, labels, idx) / total + 0.5)[keep],
                         (ndimage.sum_labels(w * yy, labels, idx) / total + 0.5)[keep]], axis=1)

    rng = np.random.default_rng(0)
    for _ in range(6):
        shape = tuple(rng.integers(5, 200, 2))
        mask = rng.random(shape) < rng.uniform(0.001, 0.3)
        weights = rng.poisson(3, shape).astype(np.float32) - rng.integers(0, 2, shape)
        for merge_px in (0, 1, 2):
            for min_px in (1, 3):
                got = spots_from_mask(mask, weights, min_px, merge_px)
                want = reference(mask, weights, min_px, merge_px)
                assert got.shape == want.shape and np.array_equal(got, want)
    assert spots_from_mask(np.zeros((4, 4), bool), np.ones((4, 4))).shape == (0, 2)


def test_network_input_is_the_documented_formula_to_the_bit_whatever_mask_came_before():
    from scipy import ndimage

    def formula(counts):
        trusted = counts >= 0
        c = np.where(trusted, counts, 0).astype(np.float32)
        t = trusted.astype(np.float32)
        b = ndimage.uniform_filter(c, 9, mode="constant") / np.maximum(ndimage.uniform_filter(t, 9, mode="constant"),
                                                                        1e-3)
        return np.stack([np.log1p(c), np.clip((c - b) / np.sqrt(b + 1.0), -5.0, 50.0) * (0.2 * t), t])

    rng = np.random.default_rng(5)
    frames = []
    for k in range(4):
        counts = (rng.poisson(1.5, (120, 97)) / (1.0 if k % 2 else 2.7)).astype(np.float32)
        counts[rng.random(counts.shape) < 0.02 * (k < 3)] = -1  # a new mask each time, then none
        frames += [counts, counts.copy()]  # the second with the mask of the one before
    for counts in frames:
        assert D.network_input(counts).tobytes() == formula(counts).tobytes()
