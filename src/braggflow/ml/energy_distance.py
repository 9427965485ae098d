"""The photon-energy / camera-length model (polar profiles in, two classes out) and its logistic baseline on the
azimuthal averages."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..settings import TrainingSettings
from . import data as D
from .baselines import fit_profile_classifier
from .fit import FitResult, fit, seeded
from .metrics import accuracy, confusion_matrix
from .models import EnergyDistanceNet


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
