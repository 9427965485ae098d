"""Trained models on experimental frames (the normalized frames file of ``braggflow.formats.frames``).

One prediction file per (model, input), laid out by ``braggflow.formats.predictions``. Peak probabilities are
stored as float16 (3 significant digits are plenty for a probability, and half the bytes).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..formats.frames import read_frame_photons, read_frames_info
from ..formats.predictions import write_prediction
from ..settings import TrainingRun, TrainingSettings
from .cards import read_card
from .ood import Envelope, background_features, describe

KINDS = ("peak_finder", "hit_classifier", "energy_distance")


def load_model(card_path: str | Path, weights_path: str | Path, device, engine: str = "torch",
               onnx_path: str | Path | None = None, threads: int = 1):
    """(card, network): the torch network, or its ONNX file through ONNX Runtime (called alike)."""
    card = read_card(card_path)
    if engine == "onnxruntime":
        from .onnx_models import load_onnx

        if onnx_path is None:
            raise ValueError(f"{card_path}: inference_engine onnxruntime needs the model's ONNX file")
        return card, load_onnx(card, onnx_path, threads, str(device))
    if engine != "torch":
        raise ValueError(f"config key 'training.inference_engine': {engine!r} is not one of torch, onnxruntime")
    from .models import load_weights

    return card, load_weights(card["model"], card["arguments"], weights_path, device=str(device))


def predict_file(frames_path: str | Path, card_path: str | Path, weights_path: str | Path, out: str | Path, *,
                 training: TrainingSettings, run: TrainingRun, onnx_path: str | Path | None = None,
                 hits_path: str | Path | None = None, hit_gate: float | None = None, log=None) -> dict[str, Any]:
    """``training``: the hit classifier's binning; ``run``: device, threads and engine (``onnx_path``: the
    model's ONNX file, for ONNX Runtime). A peak finder with ``hit_gate`` skips the frames whose hit probability
    in ``hits_path`` (a hit classifier's prediction on the same frames) is below it: no peak there."""
    import torch

    from .data import binned_frame, polar_profile
    from .fit import torch_device
    from .peak_finder import predict_probability

    torch.set_num_threads(run.threads)
    device = torch_device(run.device)
    info = read_frames_info(frames_path)
    card, model = load_model(card_path, weights_path, device, run.inference_engine, onnx_path, run.threads)
    engine = "torch" if run.inference_engine == "torch" else f"onnxruntime ({model.provider})"
    kind = card["model"]
    n, p = info.n_frames, info.n_panels
    t0 = time.perf_counter()
    attrs: dict[str, Any] = {}
    features = []  # per frame, what the model's training envelope compares (ml.ood)
    skipped = _skipped_frames(hits_path, hit_gate, n, frames_path) if kind == "peak_finder" else None
    if kind == "peak_finder":
        shape = (n, info.shape[0], info.shape[1]) if p == 1 else (n, p, *info.shape)
        pred = np.empty(shape, np.float16)
        for i in range(n):
            photons = read_frame_photons(frames_path, i)
            features.append(background_features(photons))
            if skipped is not None and skipped[i]:
                pred[i] = 0.0
                continue
            for j in range(p):
                # Blocks no larger than a panel: a 185 x 194 CSPAD panel in one block.
                prob = predict_probability(model, photons[j], device)
                if p == 1:
                    pred[i] = prob
                else:
                    pred[i, j] = prob
        classes = ["peak"]
        post = card["metrics"]["spot_extraction"]
        attrs = {"threshold": float(post["threshold"]), "min_spot_px": int(post["min_spot_px"])}
        if skipped is not None:
            attrs.update(hit_gate=float(hit_gate), hit_gate_source=Path(hits_path).as_posix())
    elif kind == "hit_classifier":
        bin_px = int(training.hit_classifier.bin_px)
        pred = np.empty(n, np.float32)
        with torch.no_grad():
            for i in range(n):
                photons = read_frame_photons(frames_path, i)
                features.append(background_features(photons))
                x = torch.from_numpy(np.stack([binned_frame(photons[j], bin_px) for j in range(p)])).to(device)
                # A hit on any panel is a hit (the classifier pools globally over one image).
                pred[i] = float(torch.sigmoid(model(x)).max())
        classes = ["hit"]
    elif kind == "energy_distance":
        if p != 1:
            raise ValueError(f"{frames_path}: the energy / camera-length model reads single-panel frames; this input "
                             f"has {p} panels (set experiments.<name>.energy_distance: false)")
        a = card["arguments"]
        energies, lengths = card["metrics"]["classes"]["energies_kev"], card["metrics"]["classes"]["camera_lengths_m"]
        frames = [(read_frame_photons(frames_path, i)[0], info.panels.beam_center_px(info.beam_direction[i]))
                  for i in range(n)]
        prof = np.stack([polar_profile(ph, c, a["radial_bins"], a["sectors"]) for ph, c in frames])
        features = [polar_profile(ph, c, a["radial_bins"], 1)[0] for ph, c in frames]
        with torch.no_grad():
            pe, pd_ = model(torch.from_numpy(prof).to(device))
            pe, pd_ = torch.softmax(pe, 1).cpu().numpy(), torch.softmax(pd_, 1).cpu().numpy()
        # Joint class probabilities (energy x camera length), named like the matrix datasets.
        pred = (pe[:, :, None] * pd_[:, None, :]).reshape(n, -1).astype(np.float32)
        from ..matrix import dataset_name

        classes = [dataset_name(e, d) for e in energies for d in lengths]
        attrs = {"energies_kev": np.asarray(energies, float), "camera_lengths_m": np.asarray(lengths, float)}
    else:
        raise ValueError(f"{card_path}: unknown model kind {kind!r}; known: {KINDS}")
    seconds = time.perf_counter() - t0
    extras = ({"energy_probability": pe.astype(np.float32), "camera_length_probability": pd_.astype(np.float32)}
              if kind == "energy_distance" else {})
    if skipped is not None:
        extras["skipped_blank"] = skipped
        if log:
            log.info("hit gate %g: %d of %d frames called blank by %s skip the peak finder", hit_gate,
                     int(skipped.sum()), n, hits_path)
    envelope = card["metrics"].get("training_envelope")
    if envelope is not None:
        envelope = Envelope.from_dict(envelope)
        scores = envelope.score(np.array(features).reshape(n, -1)) if n else np.zeros(0)
        extras.update(ood_score=scores.astype(np.float32), out_of_distribution=scores > envelope.threshold)
        if log and n:
            (log.warning if (scores > envelope.threshold).any() else log.info)(
                "%s", describe(envelope, scores, f"{kind} {card['model_id'][:8]}"))
    elif log:
        log.warning("%s: its model card has no training envelope; frames unlike its training frames are not flagged",
                    card_path)
    write_prediction(out, pred, classes=classes, model_id=card["model_id"], panel_names=info.panels.name,
                     attrs={**attrs, "model": kind, "model_datasets": ",".join(card["datasets"]),
                            "input": Path(frames_path).as_posix(), "layout": _layout(kind, p),
                            "seconds_per_frame": seconds / max(n, 1), "inference_engine": engine},
                     extras=extras)
    stats = {"model": kind, "model_id": card["model_id"], "frames": n, "panels": p, "shape": list(pred.shape),
             "out_of_distribution_frames": int(extras["out_of_distribution"].sum()) if "out_of_distribution" in extras
             else None,
             "seconds_per_frame": round(seconds / max(n, 1), 3), "device": str(device), "engine": engine,
             "skipped_blank_frames": None if skipped is None else int(skipped.sum())}
    if log:
        log.info("%s", stats)
    return stats


def _skipped_frames(hits_path, hit_gate, n: int, frames_path) -> np.ndarray | None:
    """(n,) bool: the frames the hit gate skips, or None without a gate."""
    if hit_gate is None:
        return None
    from ..errors import InputError
    from ..formats.predictions import read_prediction

    if hits_path is None:
        raise ValueError(f"{frames_path}: hit_gate {hit_gate} needs the hit classifier's prediction")
    hits = read_prediction(hits_path)
    if hits["classes"] != ["hit"] or hits["pred"].shape != (n,):
        raise InputError(hits_path, f"not a hit classifier's prediction on the {n} frames of {frames_path}")
    return np.asarray(hits["pred"], float) < float(hit_gate)


def _layout(kind: str, panels: int) -> str:
    if kind == "peak_finder":
        return "frames, slow, fast" if panels == 1 else "frames, panels, slow, fast"
    return "frames" if kind == "hit_classifier" else "frames, classes"
