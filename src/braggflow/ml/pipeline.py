"""What the workflow's training and evaluation rules call: shards and config in, weights, cards, tables out."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..formats import profiles
from ..formats.profiles import profiles_writer
from ..io import atomic_path, write_text_atomic
from ..settings import TrainingRun, TrainingSettings
from . import data as D
from .cards import model_card, read_card, write_card
from .determinism import kernel_settings, pin_cpu_kernels

# Before anything imports torch: the same CPU kernels on every AVX2 machine (determinism.pin_cpu_kernels).
pin_cpu_kernels()


def _split_names(splits) -> dict[str, list[str]]:
    return {s: [f"{r.dataset}/{r.frame_index}" for r in refs] for s, refs in splits.items()}


def _write_history(path, history: list[dict]) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(history).to_csv(tmp, sep="\t", index=False, float_format="%.6g")


def _json(path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, allow_nan=True) + "\n")


def _setup(run: TrainingRun):
    import torch

    from .fit import torch_device

    torch.set_num_threads(run.threads)
    return torch_device(run.device)


def run_peak_finder(shards: Sequence[str], *, weights: str, onnx: str, card: str, history: str, spots: str,
                    cfg: TrainingSettings, run: TrainingRun, seed: int, log=None) -> dict:
    from .models import peak_finder_arguments, save_weights
    from .peak_finder import cnn_spots, score_spots, train_peak_finder, tune_cnn_spots

    device = _setup(run)
    splits = D.frame_splits(shards, cfg, seed)
    model, result = train_peak_finder(splits, cfg, seed, device, log)
    p = cfg.peak_finder
    arguments = peak_finder_arguments(p.architecture, p.base_channels, p.cell_px)
    save_weights(model, weights)
    exported = _export(model, "peak_finder", arguments, onnx, log)
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
               "inference_seconds_per_frame": seconds / max(len(found), 1),
               "training_envelope": background_envelope(splits).as_dict()}
    _write_card(card, "peak_finder", type(model).__name__, arguments, splits, shards, weights, exported, metrics, result, cfg,
                seed, frames_per_epoch=len(splits["train"]))
    return scores


def background_envelope(splits, max_frames: int = 200):
    """The envelope (ml.ood) of the training frames' background, the held-out frames inside it; at most
    ``max_frames`` frames of each, evenly spaced, are read."""
    from .ood import PEAK_FINDER_FEATURE, background_features, fit_envelope

    def features(refs):
        step = max(1, -(-len(refs) // max_frames))
        return np.array([background_features(D.read_counts_only(r)) for r in refs[::step]]).reshape(-1, 1)

    return fit_envelope(PEAK_FINDER_FEATURE, features(splits["train"]),
                        features(splits["validation"] + splits["test"]))


def _export(model, kind: str, arguments: dict, path: str, log) -> dict:
    from .onnx_models import export_onnx

    t0 = time.perf_counter()
    entry = export_onnx(model, kind, arguments, path)
    if log:
        log.info("ONNX (opset %d) written in %.1f s: %s, sha256 %s; ONNX Runtime gives torch's logits within %.2g",
                 entry["opset"], time.perf_counter() - t0, path, entry["sha256"][:12],
                 entry["export_check_max_abs_logit_difference"])
    return entry


def _write_card(card, name, arch, arguments, splits, shards, weights, exported, metrics, result, cfg, seed,
                frames_per_epoch) -> None:
    datasets = sorted({r.dataset for refs in splits.values() for r in refs})
    _write_card_split(card, name, arch, arguments, datasets, _split_names(splits), shards, weights, exported, metrics,
                      result, cfg, seed, frames_per_epoch)


def _write_card_split(card, name, arch, arguments, datasets, split, inputs, weights, exported, metrics, result, cfg,
                      seed, frames_per_epoch) -> None:
    from .fit import config_hash

    epochs = len(result.history)
    training = {"seconds": result.seconds, "epochs_run": epochs, "best_epoch": result.best_epoch,
                "samples_seen": result.samples_seen,
                "frames_per_second": frames_per_epoch * epochs / max(result.seconds, 1e-9), **result.extra,
                "cpu_kernels": kernel_settings()}
    write_card(card, model_card(model=name, architecture=arch, arguments=arguments, datasets=datasets,
                                config_hash=config_hash(cfg, seed), inputs=inputs, weights_path=weights,
                                split=split, metrics=metrics, training=training,
                                device=result.device, onnx=exported))


def run_hit_classifier(shards: Sequence[str], *, weights: str, onnx: str, card: str, history: str,
                       cfg: TrainingSettings, run: TrainingRun, seed: int, log=None) -> dict:
    from .models import save_weights
    from .hit_classifier import train_hit_classifier

    device = _setup(run)
    splits = D.frame_splits(shards, cfg, seed)
    model, result, metrics = train_hit_classifier(splits, cfg, seed, device, log)
    arguments = {"channels": cfg.hit_classifier.channels}
    save_weights(model, weights)
    exported = _export(model, "hit_classifier", arguments, onnx, log)
    _write_history(history, result.history)
    _write_card(card, "hit_classifier", "HitClassifier", arguments, splits, shards, weights, exported,
                {"test": metrics, "training_envelope": background_envelope(splits).as_dict()}, result,
                cfg, seed, frames_per_epoch=len(splits["train"]))
    return metrics


def write_profiles(path: str, shards: Sequence[str], *, energies_kev: Sequence[float],
                   distances_m: Sequence[float], cfg: TrainingSettings, seed: int, log=None) -> dict:
    """Polar profiles (for the CNN) and azimuthal averages (for the baseline) of every frame, with class labels
    and the split: what both energy / camera-length models train and are scored on (HDF5, a few kB per frame)."""
    from .energy_distance import profile_features

    e = cfg.energy_distance
    splits = D.frame_splits(shards, cfg, seed)
    with profiles_writer(path, energies_kev=energies_kev, camera_lengths_m=distances_m, sources=shards) as write:
        for s in D.SPLITS:
            t0 = time.perf_counter()
            ps = profile_features(splits[s], energies_kev, distances_m, e.radial_bins, e.sectors)
            write(s, {"polar": ps.polar, "profile": ps.profile, "energy": ps.energy, "distance": ps.distance},
                  [f"{r.dataset}/{r.frame_index}" for r in splits[s]])
            if log:
                log.info("%s: %d frames in %.1f s", s, len(splits[s]), time.perf_counter() - t0)
    return {s: len(v) for s, v in splits.items()}


def read_profiles(path: str):
    from .energy_distance import ProfileSet

    arrays, split, classes = profiles.read_profiles(path, D.SPLITS)
    return {s: ProfileSet(**a) for s, a in arrays.items()}, split, classes


def run_energy_distance(profiles: str, *, weights: str, onnx: str, card: str, history: str,
                        cfg: TrainingSettings, run: TrainingRun, seed: int, log=None) -> dict:
    from .energy_distance import train_energy_distance
    from .models import save_weights
    from .ood import ENERGY_DISTANCE_FEATURE, fit_envelope

    device = _setup(run)
    sets, split, classes = read_profiles(profiles)
    n_e, n_d = len(classes["energies_kev"]), len(classes["camera_lengths_m"])
    model, result, metrics = train_energy_distance(sets, n_e, n_d, cfg, seed, device, log)
    e = cfg.energy_distance
    arguments = {"sectors": e.sectors, "radial_bins": e.radial_bins, "n_energies": n_e, "n_distances": n_d,
                 "channels": e.channels}
    save_weights(model, weights)
    exported = _export(model, "energy_distance", arguments, onnx, log)
    _write_history(history, result.history)
    datasets = sorted({k.split("/")[0] for v in split.values() for k in v})
    _write_card_split(card, "energy_distance", "EnergyDistanceNet", arguments, datasets, split, [profiles], weights,
                      exported,
                      {"test": metrics, "classes": classes,
                       "training_envelope": fit_envelope(ENERGY_DISTANCE_FEATURE, sets["train"].profile, np.concatenate(
                           [sets["validation"].profile, sets["test"].profile])).as_dict()},
                      result, cfg, seed, len(split["train"]))
    return metrics


def run_baseline_energy_distance(profiles: str, *, out: str, seed: int) -> dict:
    from .energy_distance import baseline_energy_distance

    sets, split, classes = read_profiles(profiles)
    metrics = baseline_energy_distance(sets, len(classes["energies_kev"]), len(classes["camera_lengths_m"]), seed)
    _json(out, {"model": "StandardScaler + LogisticRegression (scikit-learn) on the azimuthally averaged log "
                         "profile, trained on the train + validation frames",
                "classes": classes, "split": split, "test": metrics})
    return metrics


def run_baseline_peaks(shards: Sequence[str], *, out: str, cfg: TrainingSettings, seed: int, log=None) -> dict:
    from .peak_finder import baseline_peak_finding

    result = baseline_peak_finding(D.frame_splits(shards, cfg, seed), cfg, log)
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
