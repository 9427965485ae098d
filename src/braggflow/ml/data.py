"""Streaming frames, tiles and profiles out of overlay shards: one frame in memory at a time.

Frames are split into train / validation / test per dataset from a hash of (seed, dataset, frame index), so the
split does not depend on sharding, on the order of the shards, or on the other datasets.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..formats import shards as S

SPLITS = ("train", "validation", "test")
TILE_STREAM, SPLIT_STREAM = 0x711E, 0x5717


@dataclass(frozen=True)
class FrameRef:
    """One frame of one shard: where it is and what it is."""

    path: str
    row: int  # position in the shard file
    frame_index: int  # frame number within the dataset (independent of sharding)
    dataset: str
    energy_kev: float
    camera_length_m: float
    hit: int
    n_peaks: int



def index_shards(paths: Sequence[str | Path]) -> list[FrameRef]:
    """Every frame of the given overlay shards (reads only the small per-frame tables)."""
    refs: list[FrameRef] = []
    for p in paths:
        geometry, cols, dataset = S.index_training_shard(p)
        for row, (fi, h, n) in enumerate(zip(cols["frame_index"], cols["hit"], cols["n_peaks"])):
            refs.append(FrameRef(str(p), row, int(fi), dataset, float(geometry["energy_kev"]),
                                 float(geometry["camera_length_m"]), int(h), int(n)))
    return refs


def split_frames(refs: Sequence[FrameRef], seed: int, validation_fraction: float,
                 test_fraction: float) -> dict[str, list[FrameRef]]:
    """Deterministic split by frame, per dataset: frames ranked by a hash of (seed, dataset, frame index).

    Each split gets at least one frame where the dataset has three or more, so even the 6-frame demo
    config has a validation and a test frame per dataset.
    """
    out: dict[str, list[FrameRef]] = {s: [] for s in SPLITS}
    by_dataset: dict[str, list[FrameRef]] = {}
    for r in refs:
        by_dataset.setdefault(r.dataset, []).append(r)
    for dataset, frames in sorted(by_dataset.items()):
        def key(r: FrameRef) -> bytes:
            return hashlib.sha256(f"{seed}/{SPLIT_STREAM}/{dataset}/{r.frame_index}".encode()).digest()

        ranked = sorted(frames, key=key)
        n = len(ranked)
        n_test = max(1, round(test_fraction * n)) if n >= 3 else 0
        n_val = max(1, round(validation_fraction * n)) if n >= 3 else 0
        n_test, n_val = min(n_test, n - 1), min(n_val, max(n - 1 - n_test, 0))
        out["test"] += ranked[:n_test]
        out["validation"] += ranked[n_test:n_test + n_val]
        out["train"] += ranked[n_test + n_val:]
    for s in SPLITS:  # a stable order for iteration: dataset, then frame
        out[s].sort(key=lambda r: (r.dataset, r.frame_index))
    return out


def frame_splits(paths: Sequence[str | Path], cfg, seed: int) -> dict[str, list[FrameRef]]:
    """The frames of these shards split into train / validation / test (``cfg``: the training settings)."""
    refs = index_shards(paths)
    splits = split_frames(refs, seed, cfg.validation_fraction, cfg.test_fraction)
    if not splits["train"]:
        raise ValueError(f"no training frames in {[str(p) for p in paths]}: config key "
                         "'simulation.frames_per_dataset' must give at least 3 frames per dataset")
    return splits


def read_frame(ref: FrameRef) -> tuple[np.ndarray, np.ndarray]:
    """(counts int32 (slow, fast) with -1 where untrusted, peak label bool)."""
    return S.read_images(ref.path, ref.row), S.read_label(ref.path, ref.row)


def read_counts_only(ref: FrameRef) -> np.ndarray:
    return S.read_images(ref.path, ref.row)


def read_frame_truth(ref: FrameRef) -> pd.DataFrame:
    """Truth reflections of one frame (DIALS continuous px; pixel i spans [i, i+1))."""
    return S.read_truth(ref.path, ("x_px", "y_px", "photons", "visible"), ref.frame_index)


def beam_center_px(ref: FrameRef) -> tuple[float, float]:
    """(fast, slow) beam centre: a detector property, the same for every dataset of a matrix."""
    fast, slow = S.read_geometry(ref.path)["beam_center_px"]
    return float(fast), float(slow)


INPUT_CHANNELS = 3
BACKGROUND_BOX_PX = 9


def network_input(counts: np.ndarray) -> np.ndarray:
    """(3, slow, fast) float32: log1p(counts); the excess over the local background in Poisson sigmas,
    (counts - b) / sqrt(b + 1) / 5 with b the mean of the trusted pixels in a 9 x 9 box (so the net starts from
    what a dispersion spot finder sees, whatever the water level of the frame); the trusted-pixel mask.
    Untrusted pixels read 0 in every channel."""
    from scipy import ndimage

    trusted = counts >= 0
    c = np.where(trusted, counts, 0).astype(np.float32)
    x = np.empty((INPUT_CHANNELS, *counts.shape), np.float32)
    t = x[2]
    t[...] = trusted
    b = ndimage.uniform_filter(c, BACKGROUND_BOX_PX, mode="constant")
    b /= _trusted_share(trusted, t)
    np.log1p(c, out=x[0])
    # clip((c - b) / sqrt(b + 1), -5, 50) * 0.2 t, in place (the same float32 operations in the same order)
    e = np.subtract(c, b, out=x[1])
    np.add(b, 1.0, out=b)
    np.divide(e, np.sqrt(b, out=b), out=e)
    np.clip(e, -5.0, 50.0, out=e)
    np.multiply(e, np.multiply(t, 0.2, out=b), out=e)
    return x


_SHARE: list = []  # (trusted mask, its box share): frames of one detector share their mask


def _trusted_share(trusted: np.ndarray, t: np.ndarray) -> np.ndarray:
    """max(the trusted share of each pixel's 9 x 9 box, 1e-3); the last mask's is kept for the next frame."""
    from scipy import ndimage

    if _SHARE and _SHARE[0][0].shape == trusted.shape and np.array_equal(_SHARE[0][0], trusted):
        return _SHARE[0][1]
    share = np.maximum(ndimage.uniform_filter(t, BACKGROUND_BOX_PX, mode="constant"), 1e-3)
    share.flags.writeable = False
    _SHARE[:] = [(trusted.copy(), share)]
    return share


def reflection_target(label: np.ndarray, truth: pd.DataFrame) -> np.ndarray:
    """The label's 8-connected regions that hold a visible reflection (within 1 px of its position): the
    peaks the evaluation counts. Label regions away from every reflection (lattice-transform side maxima) become
    background, so the net is not trained to report what the metrics call false positives."""
    from scipy import ndimage

    regions, n = ndimage.label(label, structure=np.ones((3, 3), bool))
    vis = truth[truth.visible.astype(bool)]
    if n == 0 or len(vis) == 0:
        return np.zeros(label.shape, bool)
    x = np.floor(vis.x_px.to_numpy()).astype(int)
    y = np.floor(vis.y_px.to_numpy()).astype(int)
    ids = set()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            yy, xx = np.clip(y + dy, 0, label.shape[0] - 1), np.clip(x + dx, 0, label.shape[1] - 1)
            ids.update(int(v) for v in regions[yy, xx] if v)
    keep = np.zeros(n + 1, bool)
    keep[list(ids)] = True
    return keep[regions]


def sample_tiles(counts: np.ndarray, label: np.ndarray, truth: pd.DataFrame, n_tiles: int, tile_px: int,
                 rng: np.random.Generator, peak_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """n_tiles crops (inputs (n, 3, t, t), labels (n, 1, t, t)): about half centred near visible reflections
    (jittered so peaks are not always central), the rest anywhere on the frame.

    Crops may overhang the frame edges by up to half a tile, into zeros in every channel: inference pads whole
    frames (and small panels) with zeros the same way, and a net that never saw the frame's edge reports noise
    there as peaks."""
    ny, nx = counts.shape
    pad = tile_px // 2
    visible = truth[truth.visible.astype(bool)]
    n_peak = int(round(peak_fraction * n_tiles)) if len(visible) else 0
    corners = []
    if n_peak:
        pick = rng.integers(0, len(visible), n_peak)
        cx = visible.x_px.to_numpy()[pick] + rng.uniform(-tile_px / 3, tile_px / 3, n_peak)
        cy = visible.y_px.to_numpy()[pick] + rng.uniform(-tile_px / 3, tile_px / 3, n_peak)
        corners += list(zip((cy - tile_px / 2).astype(int), (cx - tile_px / 2).astype(int)))
    n_rand = n_tiles - n_peak
    corners += list(zip(rng.integers(-pad, ny - tile_px + pad + 1, n_rand),
                        rng.integers(-pad, nx - tile_px + pad + 1, n_rand)))
    # The whole frame, zero-padded: the local background needs the tiles' surroundings.
    full = np.pad(network_input(counts), ((0, 0), (pad, pad), (pad, pad)))
    lab = np.pad(label, pad)
    x = np.empty((n_tiles, INPUT_CHANNELS, tile_px, tile_px), np.float32)
    y = np.empty((n_tiles, 1, tile_px, tile_px), np.float32)
    for i, (y0, x0) in enumerate(corners):
        y0 = int(np.clip(y0, -pad, ny - tile_px + pad)) + pad
        x0 = int(np.clip(x0, -pad, nx - tile_px + pad)) + pad
        x[i] = full[:, y0:y0 + tile_px, x0:x0 + tile_px]
        y[i, 0] = lab[y0:y0 + tile_px, x0:x0 + tile_px]
    return x, y


def tile_rng(seed: int, epoch: int, ref: FrameRef) -> np.random.Generator:
    dataset_hash = int.from_bytes(hashlib.sha256(ref.dataset.encode()).digest()[:4], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, TILE_STREAM, dataset_hash, epoch, ref.frame_index]))


def iter_tile_batches(refs: Sequence[FrameRef], *, seed: int, epoch: int, tiles_per_frame: int, tile_px: int,
                      batch_size: int | None = None, shuffle: bool = True, target: str = "labels") -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Tiles of one frame at a time (in batches of ``batch_size``), frames in a seeded order: only the current
    frame is in memory, and each frame read (~0.05 s for an Eiger 4M) feeds several optimiser steps."""
    order = list(range(len(refs)))
    if shuffle:
        np.random.default_rng(np.random.SeedSequence([seed, TILE_STREAM, epoch])).shuffle(order)
    for i in order:
        ref = refs[i]
        counts, label = read_frame(ref)
        truth = read_frame_truth(ref)
        if target == "reflections":
            label = reflection_target(label, truth)
        x, y = sample_tiles(counts, label, truth, tiles_per_frame, tile_px, tile_rng(seed, epoch, ref))
        step = batch_size or tiles_per_frame
        for i in range(0, tiles_per_frame, step):
            yield x[i:i + step], y[i:i + step]


def binned_frame(counts: np.ndarray, bin_px: int) -> np.ndarray:
    """(2, slow/bin, fast/bin) float32: log1p of the block maximum (spots survive binning) and of the block mean
    of trusted pixels (the background level)."""
    ny, nx = counts.shape[0] // bin_px * bin_px, counts.shape[1] // bin_px * bin_px
    c = counts[:ny, :nx].reshape(ny // bin_px, bin_px, nx // bin_px, bin_px)
    trusted = c >= 0
    n = trusted.sum(axis=(1, 3))
    mean = np.where(trusted, c, 0).sum(axis=(1, 3)) / np.maximum(n, 1)
    peak = c.max(axis=(1, 3)).clip(min=0)
    return np.stack([np.log1p(peak), np.log1p(mean)]).astype(np.float32)


PROFILE_TRIM_FRACTION = 0.02


def polar_profile(counts: np.ndarray, beam_center_px: tuple[float, float], radial_bins: int,
                  sectors: int, trim_fraction: float = PROFILE_TRIM_FRACTION) -> np.ndarray:
    """(sectors, radial_bins) float32: log of the trimmed mean counts of trusted pixels per (azimuthal sector,
    radius bin): the brightest ``trim_fraction`` of each bin's pixels are left out, so Bragg spots (a small share
    of any bin's pixels) do not pull the water profile about; a median would lose the sub-photon levels of
    long camera lengths.

    Radii in pixels from the beam centre, up to the farthest detector corner, so the input needs no energy or
    camera length: the water ring position and the falling solid angle carry them. Empty bins read
    log(1e-3), as zero counts.
    """
    order, bounds = _polar_order(counts.shape, tuple(float(v) for v in beam_center_px), radial_bins, sectors)
    values = counts.reshape(-1)[order]
    mean = np.zeros(sectors * radial_bins)
    for i in range(sectors * radial_bins):
        v = values[bounds[i]:bounds[i + 1]]
        v = v[v >= 0]
        if len(v) == 0:
            continue
        keep = max(1, int(np.ceil((1.0 - trim_fraction) * len(v))))
        mean[i] = np.partition(v, keep - 1)[:keep].mean(dtype=np.float64)
    return np.log(mean + 1e-3).reshape(sectors, radial_bins).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _polar_order(shape: tuple[int, int], beam_center_px: tuple[float, float], radial_bins: int,
                 sectors: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels sorted by their (sector, radius) bin, and where each bin starts; cached per detector."""
    bins = _polar_bins(shape, beam_center_px, radial_bins, sectors).reshape(-1)
    order = np.argsort(bins, kind="stable")
    return order, np.searchsorted(bins[order], np.arange(sectors * radial_bins + 1))


@functools.lru_cache(maxsize=4)
def _polar_bins(shape: tuple[int, int], beam_center_px: tuple[float, float], radial_bins: int,
                sectors: int) -> np.ndarray:
    """Flat (sector, radius) bin of every pixel; cached, as every frame of a matrix shares the detector."""
    ny, nx = shape
    fast0, slow0 = beam_center_px
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32) + 0.5  # pixel centres, DIALS continuous coordinates
    dx, dy = xx - fast0, yy - slow0
    r_max = float(np.hypot(max(fast0, nx - fast0), max(slow0, ny - slow0)))
    rb = np.minimum((np.hypot(dx, dy) / r_max * radial_bins).astype(np.int64), radial_bins - 1)
    sb = np.minimum(((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * sectors).astype(np.int64), sectors - 1)
    return sb * radial_bins + rb
