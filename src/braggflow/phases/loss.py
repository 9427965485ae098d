"""The loss every phase model is trained and scored with, and the inputs it sees.

Loss of a sample: min over the equivalent origins and hands g of sum_h w_h (1 - cos(phi_pred(h) - phi_g(h))),
with w_h = |F_h|^2 / sum |F|^2 over the measurable reflections (F000 excluded). By Parseval this is exactly
1 - the correlation coefficient of the two maps made from the true amplitudes with the true and with the predicted
phases (mean-free, on the grid's reflections): the loss is the density-map error a crystallographer reads, where
an unweighted phase error would be dominated by the many weak reflections that hardly change the map. The
minimum over g (``origins``: the permissible discrete origin shifts x the two hands) makes it blind to the
choices the amplitudes cannot fix. The amplitude-weighted mean phase error in degrees is reported beside it.

Inputs: the normalised amplitudes E = |F| / rms(|F|) over the measurable reflections (0 elsewhere) and the
measurable mask, as two channels of the (2H+1, 2K+1, 2L+1) volume.
"""

from __future__ import annotations

import numpy as np

from .dataset import PhaseVolumes


def network_inputs(v: PhaseVolumes, idx: np.ndarray) -> np.ndarray:
    """(n, 2, *grid) float32: E and the measurable mask of the samples ``idx``."""
    m = v.measurable[v.crystal[idx]]
    a = np.where(m, v.amplitude[idx], 0.0)
    rms = np.sqrt((a * a).sum(1) / np.maximum(m.sum(1), 1))
    e = a / np.where(rms > 0, rms, 1.0)[:, None]
    return np.stack([e, m], axis=1).astype(np.float32).reshape(len(idx), 2, *v.shape)


def loss_weights(v: PhaseVolumes, idx: np.ndarray) -> np.ndarray:
    """(n, V) float32 |F|^2 over the measurable reflections, each sample's summing to 1."""
    m = v.measurable[v.crystal[idx]]
    w = np.where(m, v.amplitude[idx].astype(np.float64) ** 2, 0.0)
    s = w.sum(1, keepdims=True)
    return (w / np.where(s > 0, s, 1.0)).astype(np.float32)


class Equivalents:
    """Per crystal, the phase offsets 2 pi h.t of its discrete origin shifts t, each with either hand."""

    def __init__(self, v: PhaseVolumes):
        per = []
        for c in v.crystals:
            t = np.asarray(c["origin_shifts"], dtype=float).reshape(-1, 3)
            off = 2 * np.pi * (v.hkl @ t.T).T  # (n, V)
            per.append([(s, o) for s in (1.0, -1.0) for o in off])
        g = max(len(p) for p in per)
        self.sign = np.ones((len(per), g), dtype=np.float32)
        self.offset = np.zeros((len(per), g, len(v.hkl)), dtype=np.float64)
        self.valid = np.zeros((len(per), g), dtype=bool)
        for i, p in enumerate(per):
            for j, (s, o) in enumerate(p):
                self.sign[i, j], self.offset[i, j], self.valid[i, j] = s, o, True

    def targets(self, v: PhaseVolumes, idx: np.ndarray, phase: np.ndarray | None = None):
        """cos and sin (n, G, V) float32 of every equivalent of the samples' phases, and which g are real."""
        c = v.crystal[idx]
        ph = v.phase_rad[idx] if phase is None else phase
        eq = self.sign[c][:, :, None] * ph[:, None, :].astype(np.float64) - self.offset[c]
        return np.cos(eq).astype(np.float32), np.sin(eq).astype(np.float32), self.valid[c]

    def equivalent(self, v: PhaseVolumes, i: int, g: int) -> np.ndarray:
        """Sample i's phases moved to equivalent g."""
        c = v.crystal[i]
        return self.sign[c, g] * v.phase_rad[i].astype(np.float64) - self.offset[c, g]


def per_sample_loss(out, weight, cos_t, sin_t, valid):
    """Torch: the loss of each sample (n,) and the equivalent that gives it (n,); ``out`` (n, 2, *grid)."""
    import torch

    a = out[:, 0].flatten(1).float()
    b = out[:, 1].flatten(1).float()
    r = torch.sqrt(a * a + b * b + 1e-12)
    cosd = (a[:, None] * cos_t + b[:, None] * sin_t) / r[:, None]
    per_g = (weight[:, None] * (1.0 - cosd)).sum(-1)
    per_g = torch.where(valid, per_g, torch.full_like(per_g, float("inf")))
    best = per_g.min(1)
    return best.values, best.indices


def phase_loss(out, weight, cos_t, sin_t, valid):
    """The batch's mean loss (training)."""
    return per_sample_loss(out, weight, cos_t, sin_t, valid)[0].mean()
