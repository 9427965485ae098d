"""The peak finder (U-Net on tiles of overlay shards) and the conventional dispersion finder it is scored against:
training, spot extraction and its tuning, scores on the test frames."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..settings import TrainingSettings
from . import data as D
from .baselines import DispersionSettings, find_spots, spots_from_probability, tune_dispersion, tune_hit_threshold
from .fit import VALIDATION_EPOCH, FitResult, fit, seeded
from .metrics import PeakCounts, accuracy, frame_peak_counts, peak_scores, select_setting
from .models import peak_finder, peak_finder_arguments


def block_edge(n_px: int, max_block_px: int, multiple_px: int) -> int:
    """The block edge along an axis of ``n_px``: as few blocks as ``max_block_px`` allows, of equal size (a
    multiple of ``multiple_px``), so the padding to whole blocks stays below one multiple per block."""
    k = -(-n_px // max_block_px)
    return multiple_px * -(-(-(-n_px // k)) // multiple_px)


@torch.no_grad()
def predict_probability(model: nn.Module, counts: np.ndarray, device: torch.device, block_px: int | None = None,
                        margin_px: int | None = None) -> np.ndarray:
    """Peak probability (slow, fast) float32 of a whole frame, in overlapping blocks to bound memory; the margin
    (the network's ``margin_px`` unless given) exceeds its receptive field radius, so blocks join without seams
    and the result does not depend on the block size (at most the network's ``block_px`` unless given; blocks
    of equal size along each axis, ``block_edge``)."""
    model.eval()
    multiple = model.multiple_px
    margin_px = model.margin_px if margin_px is None else margin_px
    if margin_px % multiple or (block_px is not None and block_px % multiple):
        raise ValueError(f"block {block_px} px and margin {margin_px} px must be multiples of {multiple} px for "
                         f"{type(model).__name__}")
    x = D.network_input(counts)
    ny, nx = counts.shape
    largest = model.block_px if block_px is None else block_px
    by, bx = block_edge(ny, largest, multiple), block_edge(nx, largest, multiple)
    py, px = -ny % by, -nx % bx
    xp = np.pad(x, ((0, 0), (margin_px, margin_px + py), (margin_px, margin_px + px)))
    out = np.empty((ny + py, nx + px), np.float32)
    for y0 in range(0, ny, by):
        for x0 in range(0, nx, bx):
            window = torch.from_numpy(np.ascontiguousarray(
                xp[None, :, y0:y0 + by + 2 * margin_px, x0:x0 + bx + 2 * margin_px])).to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                p = torch.sigmoid(model(window).float())
            out[y0:y0 + by, x0:x0 + bx] = p[0, 0, margin_px:-margin_px, margin_px:-margin_px].cpu().numpy()
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
                      log=None) -> tuple[nn.Module, FitResult]:
    p = cfg.peak_finder
    tile, per_frame = p.tile_px, p.tiles_per_frame
    with seeded(seed):
        model = peak_finder(**peak_finder_arguments(p.architecture, p.base_channels, p.cell_px))
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
