"""The hit classifier: binned frames in, hit probability out; its threshold tuned on the validation frames."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..settings import TrainingSettings
from . import data as D
from .fit import FitResult, fit, seeded
from .metrics import accuracy, confusion_matrix
from .models import HitClassifier


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
