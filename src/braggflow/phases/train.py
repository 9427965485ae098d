"""Training of one phase model on a phase dataset: the shared loop (``ml.fit``: Adam, learning rate halved on a
plateau, early stopping on the validation loss with the best state restored), the loss of ``loss``, and, for the
U-Net where ``augment`` is set, the space group's operations as augmentation (``origins.grid_operations``).

On CPU the job runs on one intra-op thread inside a private seeded RNG stream: the same dataset, settings and
seed give the same weight bytes whatever the job's thread count.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import numpy as np

from ..formats.phase_volumes import read_dataset_id, read_phase_volumes
from ..io import atomic_path, file_sha256, write_text_atomic
from . import origins
from .dataset import PhaseVolumes, space_group
from .loss import Equivalents, loss_weights, network_inputs


class Batches:
    """The arrays one model trains on, and its batches (inputs first, then the loss's targets)."""

    def __init__(self, v: PhaseVolumes, augment: bool):
        self.v = v
        self.eq = Equivalents(v)
        self.x = network_inputs(v, np.arange(len(v.amplitude)))
        self.w = loss_weights(v, np.arange(len(v.amplitude)))
        # along_a moves atoms along a: only operations that keep the a axis keep the samples' distribution
        axis = 0 if v.settings["perturbation"]["model"] == "along_a" else None
        self.ops = [origins.grid_operations(space_group(c), v.hkl, axis) for c in v.crystals] if augment else None

    def batch(self, idx: np.ndarray, rng: np.random.Generator | None = None) -> tuple:
        x, w, ph = self.x[idx], self.w[idx], self.v.phase_rad[idx].astype(np.float64)
        if rng is not None and self.ops is not None:
            x, w, ph = x.copy(), w.copy(), ph.copy()
            flat = x.reshape(len(idx), 2, -1)
            for j, i in enumerate(idx):
                ops = self.ops[self.v.crystal[i]]
                perm, tau_phase = ops[int(rng.integers(len(ops)))]
                flat[j] = flat[j][:, perm]
                w[j] = w[j][perm]
                ph[j] = ph[j][perm] + tau_phase
        cos_t, sin_t, valid = self.eq.targets(self.v, idx, ph)
        return x, w, cos_t, sin_t, valid

    def stream(self, idx: np.ndarray, batch_size: int, seed: int, augment: bool):
        def batches(epoch: int):
            rng = np.random.default_rng([seed, epoch])
            order = idx[rng.permutation(len(idx))]
            for i in range(0, len(order), batch_size):
                yield self.batch(order[i:i + batch_size], rng if augment else None)
        return batches

    def fixed(self, idx: np.ndarray, batch_size: int) -> list[tuple]:
        return [self.batch(idx[i:i + batch_size]) for i in range(0, len(idx), batch_size)]


def _cpu_one_thread(device):
    from ..ml.determinism import one_thread

    return one_thread() if device.type == "cpu" else contextlib.nullcontext()


def load_model(card_path: str | Path, weights: str | Path, device: str = "cpu"):
    import torch

    from .models import build_model

    card = json.loads(Path(card_path).read_text())
    model = build_model(card["model"], tuple(card["grid_shape"]), card["arguments"])
    model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    return model.to(device).eval(), card


def train_phase_model(dataset: str | Path, kind: str, arguments: dict, fit_settings, seed: int, *, weights: str,
                      card: str, history: str, device_name: str = "cpu", log=None) -> dict:
    from ..ml.cards import hardware, software
    from ..ml.determinism import kernel_settings
    from ..ml.fit import fit, seeded, torch_device
    from ..ml.models import save_weights
    from .loss import phase_loss
    from .models import build_model

    device = torch_device(device_name)
    v = read_phase_volumes(dataset)
    augment = bool(arguments.get("augment", False))
    data = Batches(v, augment)
    train, val = v.select("train"), v.select("validation")
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"{dataset}: {len(train)} training and {len(val)} validation samples; both must be > 0")
    f = fit_settings
    t0 = time.perf_counter()
    with _cpu_one_thread(device), seeded(seed):
        model = build_model(kind, v.shape, arguments)
        result = fit(model, data.stream(train, f.batch_size, seed, augment), data.fixed(val, f.batch_size),
                     phase_loss, epochs=f.epochs, learning_rate=f.learning_rate, patience=f.patience, device=device,
                     weight_decay=f.weight_decay, log=log)
    model.cpu().eval()
    save_weights(model, weights)
    with atomic_path(history) as tmp:
        lines = ["epoch\ttrain_loss\tvalidation_loss\tlearning_rate"]
        lines += [f"{h['epoch']}\t{h['train_loss']:.6g}\t{h['validation_loss']:.6g}\t{h['learning_rate']:.6g}"
                  for h in result.history]
        tmp.write_text("\n".join(lines) + "\n")
    n_params = sum(p.numel() for p in model.parameters())
    entry = {
        "model": kind, "task": "phases from structure-factor amplitudes", "arguments": arguments,
        "grid_shape": list(v.shape), "parameters": n_params,
        "dataset": {"path": Path(dataset).name, "dataset_id": read_dataset_id(dataset), "sha256": file_sha256(dataset)},
        "weights": {"path": Path(weights).name, "sha256": file_sha256(weights),
                    "format": "torch state_dict; torch.load(path, weights_only=True)"},
        "training": {**f.params(), "seed": seed, "epochs_run": len(result.history), "best_epoch": result.best_epoch,
                     "best_validation_loss": min(h["validation_loss"] for h in result.history),
                     "train_samples": int(len(train)), "validation_samples": int(len(val)),
                     "augmentation": ("the space group's operations that map the hkl grid onto itself (and keep a, "
                                      "for along_a)") if augment else "none",
                     "cpu_kernels": kernel_settings()},
        "loss": "min over equivalent origins and hands of sum |F|^2 (1 - cos dphi) / sum |F|^2 (phases.loss)",
        "hardware": hardware(str(device)), "software": software(),
    }
    write_text_atomic(card, json.dumps(entry, indent=1) + "\n")
    if log:
        log.info("%s: %d parameters, %d epochs (best %d), best validation loss %.4f, %.0f s", kind, n_params,
                 len(result.history), result.best_epoch, entry["training"]["best_validation_loss"],
                 time.perf_counter() - t0)
    return entry
