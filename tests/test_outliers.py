"""Lone bright pixels measured in an experiment's frames (braggflow.outliers) and drawn into simulated ones."""

import json

import numpy as np
import pytest

from braggflow.errors import InputError
from braggflow.outliers import (isolated_pixels, measure_outlier_pixels, read_outlier_pixels,
                                write_outlier_pixels)
from braggflow.overlay import OverlaySettings, overlay_frame
from braggflow.formats.frames import Detector, write_frames_file

BASE = dict(blank_fraction=0.0, jet_thickness_rel_sigma=0.0, adu_per_photon=1.0, readout_noise_adu=0.0,
            saturation_adu=10**6, bad_pixel_fraction=0.0, label_nsigma=2.0, label_min_photons=1.0)


def frame_with_outliers():
    """Two 60x50 panels on a flat 0.5-photon background: three lone pixels, a PSF-wide spot, a faint lone pixel,
    and a bright pixel touching an untrusted one."""
    a = np.full((2, 60, 50), 0.5, np.float32)
    a[0, 10, 10] += 40.0
    a[0, 30, 20] += 6.0
    a[1, 40, 40] += 585.0
    a[1, 20, 20] += 3.0  # below 5 photons
    a[0, 45, 30:33] += [8.0, 20.0, 8.0]  # a spot: its neighbours hold 40 % of its peak
    a[1, 5, 5] += 50.0
    a[1, 5, 6] = -1.0  # untrusted neighbour: cannot tell it is isolated
    return a


def test_isolated_pixels_are_lone_bright_pixels_not_spots_or_faint_ones():
    net = isolated_pixels(frame_with_outliers(), min_photons=5.0)
    np.testing.assert_allclose(np.sort(net), [6.0, 40.0, 585.0])  # net of the 0.5-photon local median
    np.testing.assert_allclose(np.sort(isolated_pixels(frame_with_outliers(), 2.0)), [3.0, 6.0, 40.0, 585.0])


def write_frames(path, frames):
    n_panels = frames.shape[1]
    panels = Detector.from_arrays(tuple(f"p{j}" for j in range(n_panels)),
                    np.array([[0.0, 10.0 * j, -100.0] for j in range(n_panels)]), np.tile([1.0, 0, 0], (n_panels, 1)),
                    np.tile([0, -1.0, 0], (n_panels, 1)), np.full((n_panels, 2), 0.11),
                    np.tile([frames.shape[3], frames.shape[2]], (n_panels, 1)))
    write_frames_file(path, frames, panels, np.full(len(frames), 1.3), np.tile([0, 0, -1.0], (len(frames), 1)),
                      ["x.cbf"] * len(frames), np.arange(len(frames)), 28.0, "FormatTest")


def test_measurement_counts_rate_per_eligible_mpx_and_keeps_every_amplitude(tmp_path):
    one = frame_with_outliers()
    two = np.full_like(one, 0.5)
    two[1, 2, 3] = -1.0
    two[0, 30, 30] += 100.0
    write_frames(tmp_path / "frames.h5", np.stack([one, two]))
    stats = measure_outlier_pixels(tmp_path / "frames.h5", 5.0)
    # per Mpx of pixels with 8 trusted neighbours: 4 panels' interiors less the 3x3 around each untrusted pixel
    eligible = 4 * 58 * 48 - 2 * 9
    assert stats["per_frame"] == [3, 1] and stats["frames"] == 2 and stats["frames_file"] == "frames.h5"
    assert stats["per_mpx"] == pytest.approx(4 / eligible * 1e6)
    np.testing.assert_allclose(stats["photons"], [6.0, 40.0, 100.0, 585.0])
    write_outlier_pixels(tmp_path / "o.json", stats)
    rate, amplitudes = read_outlier_pixels(tmp_path / "o.json")
    assert rate == pytest.approx(stats["per_mpx"]) and amplitudes.tolist() == [6.0, 40.0, 100.0, 585.0]
    with pytest.raises(ValueError, match="min_photons 0"):
        measure_outlier_pixels(tmp_path / "frames.h5", 0)


def test_a_counting_detectors_poisson_background_is_not_taken_for_hot_pixels_silently(tmp_path):
    """3 photons per pixel (a photon-counting detector's background): Poisson noise alone makes lone pixels; the
    measurement says so and names the setting, while the 0.5-photon frames above raise nothing."""
    rng = np.random.default_rng(4)
    write_frames(tmp_path / "counting.h5", rng.poisson(3.0, (2, 4, 60, 50)).astype(np.float32))
    noisy = measure_outlier_pixels(tmp_path / "counting.h5", 5.0)
    assert noisy["background_photons_per_px"] == pytest.approx(3.0, abs=0.5) and noisy["per_mpx"] > 50
    assert "Poisson noise" in noisy["warning"] and "outliers_from_frames: false" in noisy["warning"]
    write_frames(tmp_path / "integrating.h5", np.stack([frame_with_outliers()] * 2))
    assert measure_outlier_pixels(tmp_path / "integrating.h5", 5.0)["warning"] is None


@pytest.mark.parametrize("text, message", [
    ("{not json", "unreadable outlier-pixel measurement"),
    (json.dumps({"per_mpx": 10.0}), "unreadable outlier-pixel measurement.*photons"),
    (json.dumps({"per_mpx": 10.0, "photons": [5.0, -2.0]}), "out of range"),
    (json.dumps({"per_mpx": -1.0, "photons": [5.0]}), "out of range"),
    (json.dumps({"per_mpx": 10.0, "photons": []}), "no amplitude to draw from"),
])
def test_a_bad_measurement_file_is_named(tmp_path, text, message):
    path = tmp_path / "outlier_pixels.json"
    path.write_text(text)
    with pytest.raises(InputError, match=f"outlier_pixels.json.*{message}"):
        read_outlier_pixels(path)


def test_measured_amplitudes_are_resampled_into_the_overlay_at_the_measured_rate():
    rng = np.random.default_rng(11)
    water = np.full((400, 300), 0.2, np.float32)
    untrusted = np.zeros(water.shape, bool)
    sample = np.array([30.2, 61.0, 585.0])
    s = OverlaySettings(**BASE, outlier_pixels_per_mpx=1500.0, outlier_photons=(5.0, 600.0))
    values, counts = [], []
    for _ in range(10):
        fr = overlay_frame(np.zeros_like(water), water, untrusted, False, 1.0, 1.0, s, rng, outlier_amplitudes=sample)
        bright = fr.counts >= 25  # Poisson(0.2) never reaches 25
        assert bright.sum() == fr.params["outlier_pixels"] and not fr.label.any()
        values.append(fr.counts[bright])
        counts.append(fr.params["outlier_pixels"])
    v = np.concatenate(values)
    # Each outlier is one of the measured amplitudes (rounded) on a pixel's own background photons (0-3 here).
    assert all(np.any((x - np.rint(sample) >= 0) & (x - np.rint(sample) <= 3)) for x in v)
    for a in np.rint(sample):  # all three drawn, about equally often
        assert np.mean((v >= a) & (v <= a + 3)) == pytest.approx(1 / 3, abs=0.08)
    assert np.mean(counts) == pytest.approx(1500.0 * 400 * 300 / 1e6, rel=0.1)
