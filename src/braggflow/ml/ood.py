"""Is an input like the frames a model was trained on? Each model card keeps an envelope of its training frames'
features; a prediction scores every input frame against it and says, per frame, whether the model extrapolates.

The features are what decides whether a model's output can be trusted on a frame, in log units:
- the peak finders and hit classifiers: the frame's background, log trimmed-mean photons per trusted pixel (the
  brightest 5 % left out, so spots do not count), over every panel;
- the energy / camera-length model: its own azimuthal input (log trimmed-mean photons per radius bin).
A frame's score is the largest |value - training mean| / training spread over its features (the spread floored at
``FLOOR`` log units, so a feature constant in training still allows its own noise); it is out of distribution
where the score exceeds the envelope's threshold: ``MARGIN`` times the largest score of the training and
held-out frames, at least ``MIN_THRESHOLD``. NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FLOOR = 0.25  # log units: a quarter of an e-fold
MARGIN = 2.0
MIN_THRESHOLD = 3.0
TRIM_FRACTION = 0.05


@dataclass(frozen=True)
class Envelope:
    feature: str  # what is compared, in words
    mean: tuple[float, ...]
    spread: tuple[float, ...]
    threshold: float

    def score(self, x: np.ndarray) -> np.ndarray:
        """(n,) score of (n, k) feature vectors."""
        z = (np.asarray(x, float).reshape(len(x), -1) - np.asarray(self.mean)) / np.asarray(self.spread)
        return np.abs(z).max(axis=1)

    def outside(self, x: np.ndarray) -> np.ndarray:
        return self.score(x) > self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "mean": [round(v, 6) for v in self.mean],
                "spread": [round(v, 6) for v in self.spread], "threshold": round(self.threshold, 6)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Envelope":
        return cls(str(d["feature"]), tuple(d["mean"]), tuple(d["spread"]), float(d["threshold"]))


def fit_envelope(feature: str, training: np.ndarray, held_out: np.ndarray | None = None) -> Envelope:
    """The envelope of the training frames' features (n, k); the threshold covers the held-out frames too."""
    x = np.asarray(training, float).reshape(len(training), -1)
    if not len(x):
        raise ValueError("an envelope needs at least one training frame")
    mean, spread = x.mean(axis=0), np.maximum(x.std(axis=0), FLOOR)
    probe = Envelope(feature, tuple(mean), tuple(spread), np.inf)
    seen = x if held_out is None or not len(held_out) else np.concatenate(
        [x, np.asarray(held_out, float).reshape(len(held_out), -1)])
    return Envelope(feature, tuple(float(v) for v in mean), tuple(float(v) for v in spread),
                    float(max(MIN_THRESHOLD, MARGIN * probe.score(seen).max())))


PEAK_FINDER_FEATURE = "background: log trimmed-mean photons per trusted pixel"


def background_features(counts: np.ndarray) -> np.ndarray:
    """(1,) the peak finders' feature of one frame (any shape; negative values are untrusted pixels)."""
    v = np.asarray(counts, float).reshape(-1)
    v = v[v >= 0]
    if not len(v):
        return np.full(1, np.log(1e-3))
    keep = max(1, int(np.ceil((1.0 - TRIM_FRACTION) * len(v))))
    return np.log(np.array([np.partition(v, keep - 1)[:keep].mean()]) + 1e-3)


ENERGY_DISTANCE_FEATURE = "azimuthal profile: log trimmed-mean photons per radius bin"


def describe(envelope: Envelope, scores: np.ndarray, what: str) -> str:
    """A sentence for the log: how many frames are unlike the training frames, and by how much."""
    out = scores > envelope.threshold
    if not out.any():
        return f"{what}: every frame is within the training envelope ({envelope.feature}; largest score " \
               f"{scores.max():.2f} of {envelope.threshold:.2f})"
    return (f"{what}: {int(out.sum())} of {len(scores)} frames are unlike the training frames ({envelope.feature}: "
            f"score up to {scores.max():.1f}, threshold {envelope.threshold:.1f}); its predictions on them are "
            "extrapolations")
