"""Size smoothing against hand-made sequences: robustness, interval, weights, hysteresis."""
import math

import numpy as np
import pytest

from pipeline.smoothing import SizeSmoother, TrackSizer, count_class_flips, weighted_median
from pipeline.errors import ConfigError


def noisy_sizes(true_mm, n, sd=0.15, seed=0):
    return true_mm * np.exp(np.random.default_rng(seed).normal(0, sd, n))


def feed(smoother, sizes, confidence=1.0, quality=1.0):
    conf = np.broadcast_to(confidence, len(sizes))
    qual = np.broadcast_to(quality, len(sizes))
    return [smoother.add(s, c, q) for s, c, q in zip(sizes, conf, qual)]


def test_weighted_median():
    assert weighted_median(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 1.0])) == 2.0
    assert weighted_median(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 5.0])) == 3.0


def test_ten_percent_spikes_barely_move_the_estimate():
    clean = noisy_sizes(7.0, 100)
    spiked = clean.copy()
    rng = np.random.default_rng(3)
    idx = rng.choice(100, 10, replace=False)
    spiked[idx] = np.where(rng.random(10) < 0.5, 19.0, 1.0)     # wild frames, both directions
    est_clean = feed(SizeSmoother(), clean)[-1].size_mm
    est_spiked = feed(SizeSmoother(), spiked)[-1].size_mm
    assert abs(math.log(est_spiked / est_clean)) < 0.03
    assert abs(math.log(est_spiked / 7.0)) < 0.06
    # a plain mean in log space moves much more under the same spikes
    naive_shift = abs(np.log(spiked).mean() - np.log(clean).mean())
    assert naive_shift > 3 * abs(math.log(est_spiked / est_clean))


def test_interval_contains_truth_and_shrinks_with_frames():
    estimates = feed(SizeSmoother(), noisy_sizes(6.0, 80, seed=5))
    widths = [math.log(e.high_mm / e.low_mm) for e in estimates]
    for n in (1, 5, 20, 80):
        e = estimates[n - 1]
        assert e.low_mm <= 6.0 <= e.high_mm and e.frames_used == n
        assert e.low_mm < e.size_mm < e.high_mm
    assert widths[0] > widths[4] > widths[19] > widths[79]
    # roughly 1/sqrt(n): 16x the frames, about a quarter of the width
    assert widths[79] / widths[4] == pytest.approx(0.25, abs=0.12)


def test_interval_coverage_near_nominal():
    covered = 0
    trials = 200
    for seed in range(trials):
        e = feed(SizeSmoother(confidence_level=0.9, half_life=None), noisy_sizes(8.0, 25, seed=seed))[-1]
        covered += e.low_mm <= 8.0 <= e.high_mm
    assert 0.8 <= covered / trials <= 0.99


def test_low_quality_frames_count_less():
    good = noisy_sizes(8.0, 40, sd=0.05, seed=1)
    bad = noisy_sizes(4.0, 40, sd=0.05, seed=2)            # e.g. cut by the border: under-read
    sizes = np.ravel(np.column_stack([good, bad]))
    weighted = feed(SizeSmoother(), sizes, quality=np.tile([1.0, 0.1], 40))[-1]
    by_confidence = feed(SizeSmoother(), sizes, confidence=np.tile([0.9, 0.05], 40))[-1]
    unweighted = feed(SizeSmoother(), sizes)[-1]
    assert weighted.size_mm > 7.5 and by_confidence.size_mm > 7.5
    assert 4.0 < unweighted.size_mm < 7.5
    # the same frames at low quality give a wider interval than at full quality
    low_q = feed(SizeSmoother(), good, quality=0.2)[-1]
    full_q = feed(SizeSmoother(), good, quality=1.0)[-1]
    assert math.log(low_q.high_mm / low_q.low_mm) > 1.5 * math.log(full_q.high_mm / full_q.low_mm)


def test_class_does_not_flicker_around_a_threshold():
    sizes = noisy_sizes(10.0, 300, sd=0.12, seed=11)        # right on the small/large boundary
    raw_flips = count_class_flips(sizes)
    shown = [e.size_class for e in feed(SizeSmoother(), sizes)]
    shown_flips = sum(a != b for a, b in zip(shown, shown[1:]))
    assert raw_flips > 60
    assert shown_flips <= 2
    # the smoothed size alone (no hysteresis) still flips more than the shown class
    no_hysteresis = feed(SizeSmoother(hysteresis_mm_ratio=1.0, switch_after_frames=1), sizes)
    assert count_class_flips([e.size_mm for e in no_hysteresis]) > shown_flips


def test_class_changes_when_size_truly_moves():
    sizes = np.concatenate([noisy_sizes(4.0, 60, sd=0.1, seed=1), noisy_sizes(13.0, 120, sd=0.1, seed=2)])
    shown = [e.size_class for e in feed(SizeSmoother(), sizes)]
    assert shown[59] == "diminutive"
    assert shown[-1] == "large"
    switch = next(i for i in range(60, 180) if shown[i] == "large")
    assert switch < 60 + 110        # follows within the forgetting horizon
    assert count_class_flips([{"diminutive": 1, "small": 7, "large": 15}[c] for c in shown]) <= 2


def test_hysteresis_margin_and_persistence():
    smoother = SizeSmoother(window=5, half_life=None, hysteresis_mm_ratio=1.1, switch_after_frames=3)
    assert feed(smoother, [9.0] * 5)[-1].size_class == "small"
    # 10.5 mm is "large" by the thresholds but within the 10% margin: stays small
    assert {e.size_class for e in feed(smoother, [10.5] * 10)} == {"small"}
    shown = [e.size_class for e in feed(smoother, [11.5] * 10)]
    # the window median passes 11 mm on the 3rd frame, then 3 consecutive frames are needed
    assert shown[:4] == ["small"] * 4 and shown[4] == "large"


def test_invalid_sizes_are_skipped_and_sizes_clipped():
    smoother = SizeSmoother()
    assert smoother.add(float("nan")) is None
    e = smoother.add(6.0)
    assert smoother.add(-1.0) is e and smoother.add(float("inf")) is e and smoother.invalid_samples == 3
    assert smoother.add(500.0).frames_used == 2     # clipped to 20 mm, not rejected


@pytest.mark.parametrize("kwargs, words", [
    ({"window": 0}, "window must be an integer >= 1"),
    ({"half_life": -1}, "half_life must be a number of samples > 0"),
    ({"hysteresis_mm_ratio": 0.9}, "hysteresis_mm_ratio must be a factor in [1, 2)"),
    ({"switch_after_frames": 0}, "switch_after_frames"),
    ({"confidence_level": 1.0}, "confidence_level"),
])
def test_parameter_validation(kwargs, words):
    with pytest.raises(ConfigError, match=r"^SizeSmoother: ") as err:
        SizeSmoother(**kwargs)
    assert words in str(err.value)


def test_track_sizer_keeps_tracks_apart_and_drops_state():
    sizer = TrackSizer(window=50)
    for s in noisy_sizes(4.0, 20, seed=1):
        sizer.add(1, s)
    for s in noisy_sizes(12.0, 20, seed=2):
        sizer.add(2, s, confidence=0.8, quality=0.9)
    assert sizer.estimate(1).size_class == "diminutive" and sizer.estimate(2).size_class == "large"
    assert sizer.estimate(3) is None and len(sizer) == 2
    sizer.retain({2})
    assert 1 not in sizer and 2 in sizer and sizer.track_ids() == [2]
    with pytest.raises(ConfigError, match="window"):
        TrackSizer(window=-3)
    with pytest.raises(ConfigError, match="TrackSizer: .*windows"):
        TrackSizer(windows=3)
