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
    Fully convolutional: trained on tiles, run on whole frames (H, W padded to multiples of 4). Its layers
    (``layers``) give the same bits on CPU whatever the thread count."""

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


MODELS = {"peak_finder": PeakUNet, "hit_classifier": HitClassifier, "energy_distance": EnergyDistanceNet}


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
