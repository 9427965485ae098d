"""What the workflow's training and evaluation rules call: shards and config in, weights, cards, tables out."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..io import atomic_path, write_text_atomic
from ..settings import TrainingRun, TrainingSettings
from . import data as D
from .cards import model_card, read_card, write_card
from .determinism import kernel_settings, pin_cpu_kernels

# Before anything imports torch: the same CPU kernels on every AVX2 machine (determinism.pin_cpu_kernels).
pin_cpu_kernels()


def _split(paths: Sequence[str | Path], cfg: TrainingSettings, seed: int) -> dict[str, list[D.FrameRef]]:
    refs = D.index_shards(paths)
    splits = D.split_frames(refs, seed, cfg.validation_fraction, cfg.test_fraction)
    if not splits["train"]:
        raise ValueError(f"no training frames in {[str(p) for p in paths]}: config key "
                         "'simulation.frames_per_dataset' must give at least 3 frames per dataset")
    return splits


def _split_names(splits) -> dict[str, list[str]]:
    return {s: [f"{r.dataset}/{r.frame_index}" for r in refs] for s, refs in splits.items()}


def _write_history(path, history: list[dict]) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(history).to_csv(tmp, sep="\t", index=False, float_format="%.6g")


def _json(path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, allow_nan=True) + "\n")


def _setup(run: TrainingRun):
    import torch

    from .train import torch_device

    torch.set_num_threads(run.threads)
    return torch_device(run.device)


def run_peak_finder(shards: Sequence[str], *, weights: str, card: str, history: str, spots: str,
                    cfg: TrainingSettings, run: TrainingRun, seed: int, log=None) -> dict:
    from .models import save_weights
    from .train import cnn_spots, score_spots, train_peak_finder, tune_cnn_spots

    device = _setup(run)
    splits = _split(shards, cfg, seed)
    model, result = train_peak_finder(splits, cfg, seed, device, log)
    save_weights(model, weights)
    _write_history(history, result.history)
    model.to(device)
    post, grid = tune_cnn_spots(model, splits["validation"] or splits["train"], cfg, device)
    if log:
        log.info("spot extraction tuned on validation frames: %s", post)
    t0 = time.perf_counter()
    found = [(r, cnn_spots(model, D.read_counts_only(r), device, post["threshold"], post["min_spot_px"]))
             for r in splits["test"]]
    seconds = time.perf_counter() - t0
    scores, rows = score_spots(found, cfg.match_radius_px, cfg.peak_finder.score_min_photons)
    _json(spots, {"per_frame": rows, "spots": {f"{r.dataset}/{r.frame_index}": s.round(3).tolist()
                                              for r, s in found}})
    metrics = {"test": scores, "best_validation_loss": min(h["validation_loss"] for h in result.history),
               "spot_extraction": post, "tuning_grid": grid,
               "inference_seconds_per_frame": seconds / max(len(found), 1)}
    _write_card(card, "peak_finder", "PeakUNet", {"base_channels": cfg.peak_finder.base_channels}, splits,
                shards, weights, metrics, result, cfg, seed, frames_per_epoch=len(splits["train"]))
    return scores


def _write_card(card, name, arch, arguments, splits, shards, weights, metrics, result, cfg, seed,
                frames_per_epoch) -> None:
    datasets = sorted({r.dataset for refs in splits.values() for r in refs})
    _write_card_split(card, name, arch, arguments, datasets, _split_names(splits), shards, weights, metrics, result,
                      cfg, seed, frames_per_epoch)


def _write_card_split(card, name, arch, arguments, datasets, split, inputs, weights, metrics, result, cfg, seed,
                      frames_per_epoch) -> None:
    from .train import config_hash

    epochs = len(result.history)
    training = {"seconds": result.seconds, "epochs_run": epochs, "best_epoch": result.best_epoch,
                "samples_seen": result.samples_seen,
                "frames_per_second": frames_per_epoch * epochs / max(result.seconds, 1e-9), **result.extra,
                "cpu_kernels": kernel_settings()}
    write_card(card, model_card(model=name, architecture=arch, arguments=arguments, datasets=datasets,
                                config_hash=config_hash(cfg, seed), inputs=inputs, weights_path=weights,
                                split=split, metrics=metrics, training=training,
                                device=result.device))


def run_hit_classifier(shards: Sequence[str], *, weights: str, card: str, history: str, cfg: TrainingSettings,
                       run: TrainingRun, seed: int, log=None) -> dict:
    from .models import save_weights
    from .train import train_hit_classifier

    device = _setup(run)
    splits = _split(shards, cfg, seed)
    model, result, metrics = train_hit_classifier(splits, cfg, seed, device, log)
    save_weights(model, weights)
    _write_history(history, result.history)
    _write_card(card, "hit_classifier", "HitClassifier", {"channels": cfg.hit_classifier.channels}, splits,
                shards, weights, {"test": metrics}, result, cfg, seed, frames_per_epoch=len(splits["train"]))
    return metrics


def write_profiles(path: str, shards: Sequence[str], *, energies_kev: Sequence[float],
                   distances_m: Sequence[float], cfg: TrainingSettings, seed: int, log=None) -> dict:
    """Polar profiles (for the CNN) and azimuthal averages (for the baseline) of every frame, with class labels
    and the split: what both energy / camera-length models train and are scored on (HDF5, a few kB per frame)."""
    import h5py

    from .train import profile_features

    e = cfg.energy_distance
    splits = _split(shards, cfg, seed)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for s in D.SPLITS:
            t0 = time.perf_counter()
            ps = profile_features(splits[s], energies_kev, distances_m, e.radial_bins, e.sectors)
            g = f.create_group(s)
            g["polar"], g["profile"], g["energy"], g["distance"] = ps.polar, ps.profile, ps.energy, ps.distance
            g["frame"] = np.array([f"{r.dataset}/{r.frame_index}" for r in splits[s]], dtype=h5py.string_dtype())
            if log:
                log.info("%s: %d frames in %.1f s", s, len(splits[s]), time.perf_counter() - t0)
        f.attrs["energies_kev"], f.attrs["camera_lengths_m"] = list(energies_kev), list(distances_m)
        f.attrs["sources"] = json.dumps([Path(p).as_posix() for p in shards])
    return {s: len(v) for s, v in splits.items()}


def read_profiles(path: str):
    import h5py

    from .train import ProfileSet

    with h5py.File(path, "r") as f:
        sets = {s: ProfileSet(f[s]["polar"][()], f[s]["profile"][()], f[s]["energy"][()], f[s]["distance"][()])
                for s in D.SPLITS}
        split = {s: [v.decode() for v in f[s]["frame"][()]] for s in D.SPLITS}
        classes = {"energies_kev": [float(v) for v in f.attrs["energies_kev"]],
                   "camera_lengths_m": [float(v) for v in f.attrs["camera_lengths_m"]]}
    return sets, split, classes


def run_energy_distance(profiles: str, *, weights: str, card: str, history: str, cfg: TrainingSettings,
                        run: TrainingRun, seed: int, log=None) -> dict:
    from .models import save_weights
    from .train import train_energy_distance

    device = _setup(run)
    sets, split, classes = read_profiles(profiles)
    n_e, n_d = len(classes["energies_kev"]), len(classes["camera_lengths_m"])
    model, result, metrics = train_energy_distance(sets, n_e, n_d, cfg, seed, device, log)
    save_weights(model, weights)
    _write_history(history, result.history)
    e = cfg.energy_distance
    datasets = sorted({k.split("/")[0] for v in split.values() for k in v})
    _write_card_split(card, "energy_distance", "EnergyDistanceNet",
                      {"sectors": e.sectors, "radial_bins": e.radial_bins, "n_energies": n_e, "n_distances": n_d,
                       "channels": e.channels}, datasets, split, [profiles], weights,
                      {"test": metrics, "classes": classes}, result, cfg, seed, len(split["train"]))
    return metrics


def run_baseline_energy_distance(profiles: str, *, out: str, seed: int) -> dict:
    from .train import baseline_energy_distance

    sets, split, classes = read_profiles(profiles)
    metrics = baseline_energy_distance(sets, len(classes["energies_kev"]), len(classes["camera_lengths_m"]), seed)
    _json(out, {"model": "StandardScaler + LogisticRegression (scikit-learn) on the azimuthally averaged log "
                         "profile, trained on the train + validation frames",
                "classes": classes, "split": split, "test": metrics})
    return metrics


def run_baseline_peaks(shards: Sequence[str], *, out: str, cfg: TrainingSettings, seed: int, log=None) -> dict:
    from .train import baseline_peak_finding

    result = baseline_peak_finding(_split(shards, cfg, seed), cfg, log)
    _json(out, result)
    return result["test"]


# ---------------------------------------------------------------- tables and figures

PEAK_COLUMNS = ["precision", "recall", "f1", "loc_error_median_px", "loc_error_p95_px", "tp", "fp", "fn"]


def peak_finding_table(datasets: Sequence[str], cards: Sequence[str], baselines: Sequence[str],
                       hit_cards: Sequence[str]) -> pd.DataFrame:
    """CNN and baseline side by side per dataset: peak scores on the test frames and hit accuracy."""
    rows = []
    for ds, c, b, h in zip(datasets, cards, baselines, hit_cards):
        cnn, base, hit = read_card(c), json.loads(Path(b).read_text()), read_card(h)
        rows.append({"dataset": ds, "method": "cnn", **{k: cnn["metrics"]["test"][k] for k in PEAK_COLUMNS},
                     "hit_accuracy": hit["metrics"]["test"]["hit_accuracy"],
                     "n_test_frames": hit["metrics"]["test"]["n_test_frames"], "model_id": cnn["model_id"]})
        rows.append({"dataset": ds, "method": "baseline_dispersion", **{k: base["test"][k] for k in PEAK_COLUMNS},
                     "hit_accuracy": base["hit_accuracy"], "n_test_frames": len(base["per_frame"]),
                     "model_id": ""})
    return pd.DataFrame(rows)


def energy_distance_table(card: str, baseline: str) -> pd.DataFrame:
    cnn, base = read_card(card), json.loads(Path(baseline).read_text())
    keys = ["energy_accuracy", "distance_accuracy", "joint_accuracy", "n_test_frames"]
    return pd.DataFrame([{"method": "cnn", **{k: cnn["metrics"]["test"][k] for k in keys}},
                         {"method": "baseline_logistic_profile", **{k: base["test"][k] for k in keys}}])


def write_tsv(path, table: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")


def plot_energy_distance_confusions(path: str, card: str, baseline: str) -> None:
    from .plots import plot_confusions

    cnn, base = read_card(card), json.loads(Path(baseline).read_text())
    classes = cnn["metrics"]["classes"]
    e_labels = [f"{e:g} keV" for e in classes["energies_kev"]]
    d_labels = [f"{1000 * d:g} mm" for d in classes["camera_lengths_m"]]
    panels = [("CNN energy", cnn["metrics"]["test"]["energy_confusion"], e_labels),
              ("CNN camera length", cnn["metrics"]["test"]["distance_confusion"], d_labels),
              ("baseline energy", base["test"]["energy_confusion"], e_labels),
              ("baseline camera length", base["test"]["distance_confusion"], d_labels)]
    plot_confusions(path, panels, "Photon energy and camera length on held-out frames (rows: true)")


def plot_learning_curves_of(path: str, histories: dict[str, str], title: str) -> None:
    from .plots import plot_learning_curves

    plot_learning_curves(path, {k: pd.read_csv(v, sep="\t") for k, v in histories.items()}, title)


def plot_peak_examples(path: str, shards: Sequence[str], cnn_spots: str, baseline: str, cfg: TrainingSettings,
                       seed: int, n_frames: int, title: str) -> None:
    """The first test hits (then blanks) with truth, CNN and baseline spots; reads only the frames it draws."""
    from .plots import plot_example_frames

    cnn = json.loads(Path(cnn_spots).read_text())["spots"]
    base = json.loads(Path(baseline).read_text())["spots"]
    test = _split(shards, cfg, seed)["test"]
    chosen = ([r for r in test if r.hit] + [r for r in test if not r.hit])[:n_frames]
    examples = []
    for r in chosen:
        t = D.read_frame_truth(r)
        vis = t[t.visible.astype(bool)]
        key = f"{r.dataset}/{r.frame_index}"
        examples.append({"counts": D.read_counts_only(r), "visible_xy": vis[["x_px", "y_px"]].to_numpy(float),
                         "visible_photons": vis.photons.to_numpy(float), "cnn_xy": np.asarray(cnn.get(key, [])),
                         "baseline_xy": np.asarray(base.get(key, [])),
                         "name": f"{key} ({'hit' if r.hit else 'blank'})"})
    plot_example_frames(path, examples, title)
