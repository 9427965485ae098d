"""Defaults of the config's ``training:`` block (the schema carries the same values; tests compare them)."""

from __future__ import annotations

import copy
from typing import Any

DEFAULTS: dict[str, Any] = {
    "device": "auto",
    "threads": 1,
    "validation_fraction": 0.2,
    "test_fraction": 0.2,
    "match_radius_px": 3.0,
    "example_frames": 2,
    "peak_finder": {"base_channels": 16, "tile_px": 48, "tiles_per_frame": 64, "batch_size": 32, "epochs": 30,
                    "patience": 6, "learning_rate": 0.003, "pos_weight_power": 0.5, "target": "reflections", "threshold_grid": [0.5, 0.7, 0.9, 0.95, 0.98],
                    "min_spot_px_grid": [1, 2, 3], "score_min_photons": 0.0,
                    "tune_min_recall": None},
    "hit_classifier": {"bin_px": 8, "channels": 16, "batch_size": 8, "epochs": 40, "patience": 8,
                       "learning_rate": 0.003},
    "energy_distance": {"radial_bins": 128, "sectors": 8, "channels": 32, "batch_size": 16, "epochs": 200,
                        "patience": 25, "learning_rate": 0.002},
    "baseline": {"kernel_half_px": 3, "sigma_background": 6.0, "min_local": 2,
                 "sigma_strong_grid": [2.0, 3.0, 4.0, 5.0], "min_spot_px_grid": [1, 2, 3], "max_tuning_frames": 8},
}


def training_config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """DEFAULTS with ``overrides`` merged in (one level of nesting)."""
    cfg = copy.deepcopy(DEFAULTS)
    for k, v in (overrides or {}).items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    return cfg
