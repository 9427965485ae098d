"""The four phase models of the study (linear, three-layer fully connected, three-layer 3D CNN, 3D U-Net).

Every model maps the (2, 2H+1, 2K+1, 2L+1) input (``loss.network_inputs``) to two channels (a, b) per reflection,
the predicted phase being atan2(b, a), and ends in the same Friedel head: z(h) and conj z(-h) are averaged, so
every model predicts phi(-h) = -phi(h) as the real structure (f'' aside) has it. The U-Net is the one with the
regularisation the study proposed: batch norm, channel dropout, and (in training) the space group's symmetry as
augmentation and early stopping.
"""

from __future__ import annotations

import torch
from torch import nn

KINDS = ("linear", "mlp", "cnn", "unet")


def friedel(out: torch.Tensor) -> torch.Tensor:
    """(n, 2, *grid): a(h) -> (a(h) + a(-h)) / 2, b(h) -> (b(h) - b(-h)) / 2 (the grid is centred on 000)."""
    flipped = torch.flip(out, dims=(2, 3, 4))
    return torch.stack([0.5 * (out[:, 0] + flipped[:, 0]), 0.5 * (out[:, 1] - flipped[:, 1])], dim=1)


class ChannelDropout(nn.Module):
    """Dropout3d with its masks from torch's generator as ``ml.layers.Dropout`` draws them (same bits on any CPU)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand((x.shape[0], x.shape[1], 1, 1, 1), dtype=torch.float64, device=x.device) < (1 - self.p)
        return x * keep.to(x.dtype) / (1 - self.p)


class Flat(nn.Module):
    """linear (no hidden layer) or an MLP (three linear layers) over the flattened volume."""

    def __init__(self, shape: tuple[int, int, int], hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        v = shape[0] * shape[1] * shape[2]
        self.shape = tuple(shape)
        if hidden:
            self.net = nn.Sequential(nn.Linear(2 * v, hidden), nn.ReLU(), nn.Dropout(dropout) if dropout else
                                     nn.Identity(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2 * v))
        else:
            self.net = nn.Linear(2 * v, 2 * v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return friedel(self.net(x.flatten(1)).view(len(x), 2, *self.shape))


class CNN3(nn.Module):
    """Three 3x3x3 convolutions (2 -> c -> c -> 2), ReLU between."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.net = nn.Sequential(nn.Conv3d(2, c, 3, padding=1), nn.ReLU(), nn.Conv3d(c, c, 3, padding=1), nn.ReLU(),
                                 nn.Conv3d(c, 2, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return friedel(self.net(x))


def _block(cin: int, cout: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(),
                         nn.Conv3d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(),
                         ChannelDropout(dropout))


def coordinates(shape: tuple[int, int, int]) -> torch.Tensor:
    """(3, *shape): h / H, k / K, l / L at each grid point."""
    axes = [torch.linspace(-1.0, 1.0, n) if n > 1 else torch.zeros(1) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


class UNet3(nn.Module):
    """Two down-sampling levels (stride-2 convolutions), transpose-convolution up-sampling, skip connections;
    batch norm and channel dropout in every block. The bottom level sees the whole grid (9^3 -> 3^3). The input
    gains the grid's coordinates (h/H, k/K, l/L) as three channels: a convolution alone cannot tell where on the
    grid it is, and a parent structure's phases follow rules in the indices (h + 2k mod 3, l mod 4 in hcp)."""

    def __init__(self, channels: int, dropout: float, shape: tuple[int, int, int]):
        super().__init__()
        c = channels
        self.register_buffer("coords", coordinates(shape), persistent=False)
        self.enc1 = _block(5, c, 0.0)
        self.down1 = nn.Sequential(nn.Conv3d(c, 2 * c, 3, stride=2, padding=1), nn.BatchNorm3d(2 * c), nn.ReLU())
        self.enc2 = _block(2 * c, 2 * c, dropout)
        self.down2 = nn.Sequential(nn.Conv3d(2 * c, 4 * c, 3, stride=2, padding=1), nn.BatchNorm3d(4 * c), nn.ReLU())
        self.bottom = _block(4 * c, 4 * c, dropout)
        self.up2 = nn.ConvTranspose3d(4 * c, 2 * c, 3, stride=2, padding=1)
        self.dec2 = _block(4 * c, 2 * c, dropout)
        self.up1 = nn.ConvTranspose3d(2 * c, c, 3, stride=2, padding=1)
        self.dec1 = _block(2 * c, c, dropout)
        self.head = nn.Conv3d(c, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(torch.cat([x, self.coords.expand(len(x), -1, -1, -1, -1)], dim=1))
        e2 = self.enc2(self.down1(e1))
        b = self.bottom(self.down2(e2))
        d2 = self.dec2(torch.cat([self.up2(b, output_size=e2.shape[2:]), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2, output_size=e1.shape[2:]), e1], dim=1))
        return friedel(self.head(d1))


def build_model(kind: str, shape: tuple[int, int, int], arguments: dict) -> nn.Module:
    """``arguments``: the kind's settings (PhaseModelSettings.arguments)."""
    if kind == "linear":
        return Flat(shape)
    if kind == "mlp":
        return Flat(shape, hidden=int(arguments["hidden"]), dropout=float(arguments.get("dropout", 0.0)))
    if kind == "cnn":
        return CNN3(int(arguments["channels"]))
    if kind == "unet":
        return UNet3(int(arguments["channels"]), float(arguments["dropout"]), shape)
    raise ValueError(f"phase model kind {kind!r}: one of {KINDS}")
