"""The networks: a small fully convolutional U-Net (peak probability per pixel), a hit classifier on binned frames
and an energy / camera-length classifier on polar profiles. Weights are plain state dicts (loaded with
``weights_only=True``); the constructor arguments live in the model card, so a card rebuilds its model."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import layers as L


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(L.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True),
                         L.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(inplace=True))


class PeakUNet(nn.Module):
    """Two-level U-Net; input (N, 3, H, W) (``data.network_input``); output logits (N, 1, H, W).
    Fully convolutional: trained on tiles, run on whole frames (H, W padded to multiples of ``multiple_px``,
    blocks overlapping by ``margin_px``, more than its receptive-field radius of ~23 px). Its layers (``layers``)
    give the same bits on CPU whatever the thread count."""

    multiple_px, margin_px, block_px = 4, 32, 512

    def __init__(self, base_channels: int = 16):
        super().__init__()
        c = base_channels
        self.enc1, self.enc2, self.mid = _block(3, c), _block(c, 2 * c), _block(2 * c, 4 * c)
        self.up2, self.dec2 = L.ConvTranspose2d(4 * c, 2 * c, 2, stride=2), _block(4 * c, 2 * c)
        self.up1, self.dec1 = L.ConvTranspose2d(2 * c, c, 2, stride=2), _block(2 * c, c)
        self.head = L.Conv2d(c, 1, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


class PeakCellUNet(nn.Module):
    """The U-Net on a grid of cells: each ``cell_px`` x ``cell_px`` block of pixels is one position with
    3 cell_px^2 input channels (``pixel_unshuffle``), so the two levels (cells, then 2 x 2 cells) run on
    1/cell_px^2 of the positions. Each cell then hands ``PIXEL_CHANNELS`` features to each of its pixels
    (``pixel_shuffle``), and one 3 x 3 convolution at full resolution, over those and the input, decides per pixel:
    ~7x fewer multiply-adds per frame than ``PeakUNet`` at cell_px 4. Input and output as ``PeakUNet``'s, sizes
    multiples of 2 cell_px."""

    PIXEL_CHANNELS = 8

    def __init__(self, base_channels: int = 24, cell_px: int = 4):
        super().__init__()
        c, f, k = base_channels, cell_px, self.PIXEL_CHANNELS
        self.cell_px = f
        self.multiple_px = 2 * f
        self.block_px = 4096  # 1/cell_px^2 of the positions (~60 MB per 4M frame): whole frames in one block
        # Block overlap beyond the receptive-field radius, ~10 cell_px (40 px measured at cell_px 4).
        self.margin_px = self.multiple_px * -(-(10 * f + 4) // self.multiple_px)
        self.enc, self.mid = _block(3 * f * f, c), _block(c, 2 * c)
        self.up, self.dec = L.ConvTranspose2d(2 * c, c, 2, stride=2), _block(2 * c, c)
        self.to_pixels = L.Conv2d(c, k * f * f, 1)
        self.refine = L.Conv2d(k + 3, k, 3, padding=1)
        self.head = L.Conv2d(k, 1, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(nn.functional.pixel_unshuffle(x, self.cell_px))
        m = self.mid(self.pool(e))
        d = self.dec(torch.cat([self.up(m), e], 1))
        fine = nn.functional.relu(nn.functional.pixel_shuffle(self.to_pixels(d), self.cell_px))
        return self.head(nn.functional.relu(self.refine(torch.cat([fine, x], 1))))


def peak_finder(architecture: str = "unet", base_channels: int = 16, cell_px: int = 4) -> nn.Module:
    """The peak finder a card's arguments name (cards before the choice existed name only base_channels)."""
    if architecture == "cell_unet":
        return PeakCellUNet(base_channels, cell_px)
    if architecture == "unet":
        return PeakUNet(base_channels)
    raise ValueError(f"unknown peak-finder architecture {architecture!r}; known: cell_unet, unet")


def peak_finder_arguments(architecture: str, base_channels: int, cell_px: int) -> dict[str, Any]:
    """The card's arguments of a peak finder (cell_px only where it is used)."""
    args: dict[str, Any] = {"architecture": architecture, "base_channels": base_channels}
    if architecture == "cell_unet":
        args["cell_px"] = cell_px
    return args


class HitClassifier(nn.Module):
    """Binned frame (N, 2, h, w) -> hit logit (N,). Global max pooling: one bright spot anywhere is a hit."""

    def __init__(self, channels: int = 16):
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            L.Conv2d(2, c, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            L.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            L.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU(inplace=True))
        self.head = L.Linear(4 * c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], 1)
        return self.head(pooled).squeeze(1)


class EnergyDistanceNet(nn.Module):
    """Polar profile (N, sectors, radial_bins) -> (energy logits, camera-length logits).

    The net sees the log profile and its shape (the log profile less its frame mean): the shape does not move
    with the shot-to-shot fluence and jet-thickness jitter, the level carries the solid angle (camera length).
    Standardisation (train-set mean / std per input) is part of the state dict."""

    def __init__(self, sectors: int, radial_bins: int, n_energies: int, n_distances: int, channels: int = 32):
        super().__init__()
        c = channels
        self.register_buffer("mean", torch.zeros(2 * sectors, radial_bins))
        self.register_buffer("std", torch.ones(2 * sectors, radial_bins))
        self.features = nn.Sequential(
            L.Conv1d(2 * sectors, c, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool1d(2),
            L.Conv1d(c, 2 * c, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool1d(2))
        flat = 2 * c * (radial_bins // 4)
        self.trunk = nn.Sequential(nn.Flatten(), L.Dropout(0.2), L.Linear(flat, 64), nn.ReLU(inplace=True))
        self.energy_head, self.distance_head = L.Linear(64, n_energies), L.Linear(64, n_distances)

    @staticmethod
    def inputs(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x - x.mean(dim=(1, 2), keepdim=True)], 1)

    def set_standardisation(self, x_train: torch.Tensor) -> None:
        z = self.inputs(x_train)
        self.mean.copy_(z.mean(0))
        self.std.copy_(z.std(0, unbiased=False) + 1e-3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(self.features((self.inputs(x) - self.mean) / self.std))
        return self.energy_head(h), self.distance_head(h)


MODELS = {"peak_finder": peak_finder, "hit_classifier": HitClassifier, "energy_distance": EnergyDistanceNet}


def build_model(kind: str, arguments: dict[str, Any]) -> nn.Module:
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; known: {sorted(MODELS)}")
    return MODELS[kind](**arguments)


def save_weights(model: nn.Module, path) -> None:
    """State dict only (tensors on CPU), written atomically. Saved through a buffer: torch.save names the zip
    archive after the file it writes, and the temporary name would make equal weights differ in bytes."""
    import io

    from ..io import atomic_path

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def load_weights(kind: str, arguments: dict[str, Any], path, device: str = "cpu") -> nn.Module:
    model = build_model(kind, arguments)
    model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    return model.to(device).eval()
