"""The training loop the three models share, and what makes it reproducible.

Protocol: frames split per dataset into train / validation / test (``data.split_frames``); weighted
BCEWithLogits (pos_weight) or cross-entropy; Adam with ReduceLROnPlateau on the validation loss; early stopping
with the best validation state restored; float16 autocast on CUDA; on CPU one seeded torch RNG inside
``fork_rng`` (no global state changes) and a fixed thread count, so the same config gives the same weight bytes."""

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
from .determinism import one_thread

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
