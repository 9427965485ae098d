"""Training and evaluation of the three models, and the baselines, on overlay shards.

Protocol: frames split per dataset into train / validation / test (``data.split_frames``); weighted
BCEWithLogits (pos_weight) or cross-entropy; Adam with ReduceLROnPlateau on the validation loss; early stopping
with the best validation state restored; float16 autocast on CUDA; on CPU one seeded torch RNG inside
``fork_rng`` (no global state changes) and a fixed thread count, so the same config gives the same weight bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..settings import TrainingSettings
from . import data as D
from .baselines import (DispersionSettings, find_spots, fit_profile_classifier, spots_from_probability,
                        tune_dispersion, tune_hit_threshold)
from .determinism import one_thread
from .metrics import PeakCounts, accuracy, confusion_matrix, frame_peak_counts, peak_scores, select_setting
from .models import EnergyDistanceNet, HitClassifier, PeakUNet

VALIDATION_EPOCH = 1_000_000  # tile stream of the fixed validation tiles, apart from every training epoch


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    seconds: float
    samples_seen: int
    device: str
    extra: dict[str, Any] = field(default_factory=dict)


def config_hash(settings: TrainingSettings, seed: int) -> str:
    """sha256 of the canonical JSON of (seed, the training settings the job recorded): what makes the weights."""
    blob = json.dumps({"seed": seed, "training": settings.params()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def torch_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("config key 'training.device': 'cuda' requested but torch sees no CUDA device")
    return torch.device(name)


def _to(device, *arrays):
    return [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]


def _loss_threads(device: torch.device):
    """The loss on one thread on CPU: a mean over a batch of tiles is summed in thread-sized chunks otherwise, and
    its last bit (the history, the learning-rate schedule, early stopping) would depend on the thread count."""
    return one_thread() if device.type == "cpu" else contextlib.nullcontext()


def fit(model: nn.Module, train_batches: Callable[[int], Iterable[tuple]], val_batches: Sequence[tuple],
        loss_fn: Callable, *, epochs: int, learning_rate: float, patience: int, device: torch.device,
        weight_decay: float = 0.0, log=None) -> FitResult:
    """Adam + ReduceLROnPlateau; stops after ``patience`` epochs without a better validation loss and restores
    the best state. Batches are tuples of NumPy arrays (inputs first); ``loss_fn(output, *targets)``."""
    model.to(device)
    amp = device.type == "cuda"
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, factor=0.5, patience=max(1, patience // 2))
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    history, best, best_state, best_epoch, seen = [], math.inf, None, 0, 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        total, n = 0.0, 0
        for batch in train_batches(epoch):
            x, *targets = _to(device, *batch)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                out = model(x)
                with _loss_threads(device):
                    loss = loss_fn(out, *targets)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            total, n, seen = total + float(loss.detach()) * len(x), n + len(x), seen + len(x)
        val = evaluate_loss(model, val_batches, loss_fn, device)
        scheduler.step(val)
        history.append({"epoch": epoch, "train_loss": total / max(n, 1), "validation_loss": val,
                        "learning_rate": optimiser.param_groups[0]["lr"], "seconds": time.perf_counter() - t0})
        if log:
            log.info("epoch %d: train loss %.4g, validation loss %.4g", epoch, total / max(n, 1), val)
        if val < best:
            best, best_epoch = val, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= patience:
            if log:
                log.info("early stop after epoch %d (best %d)", epoch, best_epoch)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(history, best_epoch, time.perf_counter() - t0, seen, str(device))


@torch.no_grad()
def evaluate_loss(model: nn.Module, batches: Sequence[tuple], loss_fn: Callable, device: torch.device) -> float:
    model.eval()
    total, n = 0.0, 0
    for batch in batches:
        x, *targets = _to(device, *batch)
        out = model(x)
        with _loss_threads(device):
            loss = float(loss_fn(out, *targets))
        total, n = total + loss * len(x), n + len(x)
    return total / max(n, 1)


@contextlib.contextmanager
def seeded(seed: int):
    """A private torch RNG stream for weight init and dropout; the global state is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------- peak finder

@torch.no_grad()
def predict_probability(model: nn.Module, counts: np.ndarray, device: torch.device, block_px: int = 512,
                        margin_px: int = 32) -> np.ndarray:
    """Peak probability (slow, fast) float32 of a whole frame, in overlapping blocks to bound memory; the margin
    exceeds the U-Net's receptive field radius, so blocks join without seams."""
    model.eval()
    x = D.network_input(counts)
    ny, nx = counts.shape
    py, px = -ny % block_px, -nx % block_px
    xp = np.pad(x, ((0, 0), (margin_px, margin_px + py), (margin_px, margin_px + px)))
    out = np.empty((ny + py, nx + px), np.float32)
    for y0 in range(0, ny, block_px):
        for x0 in range(0, nx, block_px):
            window = torch.from_numpy(np.ascontiguousarray(
                xp[None, :, y0:y0 + block_px + 2 * margin_px, x0:x0 + block_px + 2 * margin_px])).to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                p = torch.sigmoid(model(window).float())
            out[y0:y0 + block_px, x0:x0 + block_px] = p[0, 0, margin_px:-margin_px, margin_px:-margin_px].cpu().numpy()
    return out[:ny, :nx]


def cnn_spots(model: nn.Module, counts: np.ndarray, device: torch.device, threshold: float,
              min_spot_px: int) -> np.ndarray:
    return spots_from_probability(predict_probability(model, counts, device), counts, threshold, min_spot_px)


def tune_cnn_spots(model: nn.Module, refs: Sequence[D.FrameRef], cfg: TrainingSettings,
                   device: torch.device) -> tuple[dict[str, float], list[dict]]:
    """Probability threshold and minimum spot size maximising F1 on the validation frames, or the most precise
    reaching peak_finder.tune_min_recall (as the baseline's thresholds are tuned on frames it is not scored on)."""
    p = cfg.peak_finder
    frames = []
    for r in refs[: cfg.baseline.max_tuning_frames]:
        counts = D.read_counts_only(r)
        frames.append((predict_probability(model, counts, device), counts,
                       *truth_xy(r, cfg.match_radius_px, p.score_min_photons)))
    grid = []
    for thr in p.threshold_grid:
        for min_px in p.min_spot_px_grid:
            total = PeakCounts()
            for prob, counts, vis, other, unlisted in frames:
                total.add(frame_peak_counts(spots_from_probability(prob, counts, thr, min_px), vis,
                                            cfg.match_radius_px, other, unlisted))
            grid.append({"threshold": float(thr), "min_spot_px": int(min_px), **peak_scores(total)})
    best = select_setting(grid, p.tune_min_recall, lambda g: (-abs(g["threshold"] - 0.5), -g["min_spot_px"]))
    return {"threshold": best["threshold"], "min_spot_px": best["min_spot_px"]}, grid


def truth_xy(ref: D.FrameRef, radius_px: float,
             min_photons: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a frame's spots are scored against: visible reflections with >= ``min_photons`` (n, 2), the other
    listed reflections (m, 2), which excuse a spot without counting as missed (as the evaluator excuses real
    reflections below its I/sigma cut), and the mask of labelled Bragg signal that no listed reflection explains
    (``metrics.unlisted_signal_mask``)."""
    from .metrics import unlisted_signal_mask

    t = D.read_frame_truth(ref)
    scored = t.visible.astype(bool).to_numpy() & (t.photons.to_numpy() >= min_photons)
    xy = t[["x_px", "y_px"]].to_numpy(float)
    _, label = D.read_frame(ref)
    return xy[scored], xy[~scored], unlisted_signal_mask(label, xy, radius_px)


def score_spots(per_frame: Sequence[tuple[D.FrameRef, np.ndarray]], radius_px: float,
                min_photons: float = 0.0) -> tuple[dict, list[dict]]:
    total, rows = PeakCounts(), []
    for ref, spots in per_frame:
        vis, other, unlisted = truth_xy(ref, radius_px, min_photons)
        c = frame_peak_counts(spots, vis, radius_px, other, unlisted)
        total.add(c)
        rows.append({"dataset": ref.dataset, "frame_index": ref.frame_index, "hit": ref.hit,
                     "n_visible": len(vis), "n_found": len(spots), **{k: v for k, v in peak_scores(c).items()}})
    return peak_scores(total), rows


def train_peak_finder(refs: dict[str, list[D.FrameRef]], cfg: TrainingSettings, seed: int, device: torch.device,
                      log=None) -> tuple[PeakUNet, FitResult]:
    p = cfg.peak_finder
    tile, per_frame = p.tile_px, p.tiles_per_frame
    with seeded(seed):
        model = PeakUNet(p.base_channels)
        # Fixed validation tiles (small: tiles_per_frame crops per validation frame) and the label fraction of
        # the training tiles, from one pass over the training frames.
        val = list(D.iter_tile_batches(refs["validation"], seed=seed, epoch=VALIDATION_EPOCH,
                                       tiles_per_frame=per_frame, tile_px=tile, shuffle=False,
                                       target=p.target))
        pos = tot = 0.0
        for _, y in D.iter_tile_batches(refs["train"], seed=seed, epoch=0, tiles_per_frame=per_frame, tile_px=tile,
                                        target=p.target):
            pos, tot = pos + float(y.sum()), tot + y.size
        # (neg / pos)^power: power 1 balances the classes, 0.5 weights peaks up without flooding the
        # probability map with false positives.
        pos_weight = float(((tot - pos) / max(pos, 1.0)) ** p.pos_weight_power)
        weight = torch.tensor(pos_weight, device=device)

        def loss_fn(logits, y):
            return nn.functional.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=weight)

        def batches(epoch):
            return D.iter_tile_batches(refs["train"], seed=seed, epoch=epoch, tiles_per_frame=per_frame,
                                       tile_px=tile, batch_size=p.batch_size, target=p.target)

        result = fit(model, batches, val, loss_fn, epochs=p.epochs, learning_rate=p.learning_rate,
                     patience=p.patience, device=device, log=log)
    result.extra["pos_weight"] = pos_weight
    result.extra["label_fraction_in_tiles"] = pos / max(tot, 1.0)
    return model.cpu(), result


# ---------------------------------------------------------------- hit classifier

def binned_features(refs: Sequence[D.FrameRef], bin_px: int) -> tuple[np.ndarray, np.ndarray]:
    """(frames, 2, h, w) binned inputs (1/bin_px^2 of the data; frames read one at a time) and hit flags."""
    x = np.stack([D.binned_frame(D.read_counts_only(r), bin_px) for r in refs]) if refs else np.zeros((0, 2, 1, 1))
    return x.astype(np.float32), np.array([r.hit for r in refs], np.float32)


def train_hit_classifier(refs: dict[str, list[D.FrameRef]], cfg: TrainingSettings, seed: int, device: torch.device,
                         log=None) -> tuple[HitClassifier, FitResult, dict]:
    h = cfg.hit_classifier
    xs = {s: binned_features(refs[s], h.bin_px) for s in D.SPLITS}
    x_train, y_train = xs["train"]
    n_pos = float(y_train.sum())
    pos_weight = (len(y_train) - n_pos) / n_pos if 0 < n_pos < len(y_train) else 1.0
    weight = torch.tensor(pos_weight, device=device)

    def loss_fn(logits, y):
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=weight)

    def batches(epoch):
        rng = np.random.default_rng(np.random.SeedSequence([seed, D.TILE_STREAM, 0x417, epoch]))
        order = rng.permutation(len(y_train))
        for i in range(0, len(order), h.batch_size):
            idx = order[i:i + h.batch_size]
            x = x_train[idx]
            # Flips: a hit is a hit whichever way the detector is read; the model must not learn spot positions.
            if rng.random() < 0.5:
                x = x[..., ::-1]
            if rng.random() < 0.5:
                x = x[..., ::-1, :]
            yield x.copy(), y_train[idx]

    with seeded(seed):
        model = HitClassifier(h.channels)
        val = [xs["validation"]] if len(xs["validation"][1]) else []
        result = fit(model, batches, val, loss_fn, epochs=h.epochs, learning_rate=h.learning_rate,
                     patience=h.patience, device=device, log=log)
    model = model.cpu().eval()
    x_test, y_test = xs["test"]
    with torch.no_grad():
        pred = (model(torch.from_numpy(x_test)) > 0).int().numpy() if len(y_test) else np.zeros(0, int)
    metrics = {"hit_accuracy": accuracy(pred, y_test.astype(int)), "n_test_frames": int(len(y_test)),
               "confusion_matrix": confusion_matrix(pred, y_test.astype(int), 2),
               "predictions": [{"dataset": r.dataset, "frame_index": r.frame_index, "hit": r.hit, "pred": int(q)}
                               for r, q in zip(refs["test"], pred)]}
    result.extra["pos_weight"] = pos_weight
    return model, result, metrics


# ---------------------------------------------------------------- energy and camera length

@dataclass
class ProfileSet:
    polar: np.ndarray  # (frames, sectors, radial_bins)
    profile: np.ndarray  # (frames, radial_bins): azimuthal average, for the scikit-learn baseline
    energy: np.ndarray  # class index
    distance: np.ndarray


def profile_features(refs: Sequence[D.FrameRef], energies_kev: Sequence[float], distances_m: Sequence[float],
                     radial_bins: int, sectors: int) -> ProfileSet:
    polar, prof = [], []
    for r in refs:
        counts = D.read_counts_only(r)
        centre = D.beam_center_px(r)
        polar.append(D.polar_profile(counts, centre, radial_bins, sectors))
        prof.append(D.polar_profile(counts, centre, radial_bins, 1)[0])
    e = [_class_of(r.energy_kev, energies_kev, "energy") for r in refs]
    d = [_class_of(r.camera_length_m, distances_m, "camera length") for r in refs]
    shape = (0, sectors, radial_bins)
    return ProfileSet(np.stack(polar) if polar else np.zeros(shape, np.float32),
                      np.stack(prof) if prof else np.zeros((0, radial_bins), np.float32),
                      np.array(e, np.int64), np.array(d, np.int64))


def _class_of(value: float, classes: Sequence[float], what: str) -> int:
    for i, c in enumerate(classes):
        if math.isclose(value, c, rel_tol=1e-6):
            return i
    raise ValueError(f"{what} {value:g} is not among the classes {list(classes)}")


def classification_metrics(pred_e, pred_d, sets: ProfileSet, n_e: int, n_d: int) -> dict:
    return {"energy_accuracy": accuracy(pred_e, sets.energy), "distance_accuracy": accuracy(pred_d, sets.distance),
            "joint_accuracy": float(np.mean((np.asarray(pred_e) == sets.energy) & (np.asarray(pred_d) == sets.distance)))
            if len(sets.energy) else float("nan"),
            "energy_confusion": confusion_matrix(pred_e, sets.energy, n_e),
            "distance_confusion": confusion_matrix(pred_d, sets.distance, n_d), "n_test_frames": int(len(sets.energy))}


def train_energy_distance(sets: dict[str, ProfileSet], n_energies: int, n_distances: int, cfg: TrainingSettings,
                          seed: int, device: torch.device, log=None) -> tuple[EnergyDistanceNet, FitResult, dict]:
    e = cfg.energy_distance
    tr = sets["train"]
    ce = nn.CrossEntropyLoss()

    def loss_fn(out, y_e, y_d):
        return ce(out[0].float(), y_e) + ce(out[1].float(), y_d)

    def batches(epoch):
        rng = np.random.default_rng(np.random.SeedSequence([seed, D.TILE_STREAM, 0xED, epoch]))
        order = rng.permutation(len(tr.energy))
        for i in range(0, len(order), e.batch_size):
            idx = order[i:i + e.batch_size]
            yield tr.polar[idx], tr.energy[idx], tr.distance[idx]

    with seeded(seed):
        model = EnergyDistanceNet(e.sectors, e.radial_bins, n_energies, n_distances, e.channels)
        model.set_standardisation(torch.from_numpy(tr.polar))
        va = sets["validation"]
        val = [(va.polar, va.energy, va.distance)] if len(va.energy) else []
        result = fit(model, batches, val, loss_fn, epochs=e.epochs, learning_rate=e.learning_rate,
                     patience=e.patience, device=device, weight_decay=1e-4, log=log)
    model = model.cpu().eval()
    te = sets["test"]
    with torch.no_grad():
        out_e, out_d = model(torch.from_numpy(te.polar))
    metrics = classification_metrics(out_e.argmax(1).numpy(), out_d.argmax(1).numpy(), te, n_energies, n_distances)
    return model, result, metrics


def baseline_energy_distance(sets: dict[str, ProfileSet], n_energies: int, n_distances: int, seed: int) -> dict:
    """scikit-learn logistic regression on the azimuthal average, trained on train + validation frames."""
    x = np.concatenate([sets["train"].profile, sets["validation"].profile])
    t0 = time.perf_counter()
    m_e = fit_profile_classifier(x, np.concatenate([sets["train"].energy, sets["validation"].energy]), seed)
    m_d = fit_profile_classifier(x, np.concatenate([sets["train"].distance, sets["validation"].distance]), seed)
    te = sets["test"]
    metrics = classification_metrics(m_e.predict(te.profile), m_d.predict(te.profile), te, n_energies, n_distances)
    metrics["training_seconds"] = time.perf_counter() - t0
    return metrics


# ---------------------------------------------------------------- conventional peak finding

def baseline_peak_finding(refs: dict[str, list[D.FrameRef]], cfg: TrainingSettings, log=None) -> dict:
    """Dispersion spot finder, tuned (sigma_strong, min spot size, hit threshold) on the train + validation
    frames, then scored on the test frames; hit = at least hit_min_spots spots."""
    b, radius = cfg.baseline, cfg.match_radius_px
    min_photons = cfg.peak_finder.score_min_photons  # the CNN's reference and rule: both are tuned alike
    base = DispersionSettings(b.kernel_half_px, b.sigma_background, 3.0, b.min_local, 2)
    tune_refs = refs["train"] + refs["validation"]
    frames = [(D.read_counts_only(r), *truth_xy(r, radius, min_photons))
              for r in tune_refs[: b.max_tuning_frames]]
    settings, grid = tune_dispersion(frames, base, b.sigma_strong_grid, b.min_spot_px_grid, radius,
                                     cfg.peak_finder.tune_min_recall)
    del frames
    n_tune = [len(find_spots(D.read_counts_only(r), settings)) for r in tune_refs]
    hit_min = tune_hit_threshold(n_tune, [r.hit for r in tune_refs])
    if log:
        log.info("baseline settings %s, hit at >= %d spots", settings, hit_min)
    t0 = time.perf_counter()
    found = [(r, find_spots(D.read_counts_only(r), settings)) for r in refs["test"]]
    seconds = time.perf_counter() - t0
    scores, rows = score_spots(found, radius, min_photons)
    pred_hit = [int(len(s) >= hit_min) for _, s in found]
    return {"settings": settings.__dict__, "hit_min_spots": hit_min, "tuning_grid": grid, "test": scores,
            "hit_accuracy": accuracy(pred_hit, [r.hit for r in refs["test"]]), "per_frame": rows,
            "spots": {f"{r.dataset}/{r.frame_index}": s.round(3).tolist() for r, s in found},
            "seconds_per_frame": seconds / max(len(found), 1)}
