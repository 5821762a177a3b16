"""Per-track temporal smoothing of the polyp size, with an interval and a class shown with hysteresis.

The paper scores single frames; a clinician needs one number per polyp. A polyp does not change
size, but per-frame sizer outputs jump with the view (oblique, cut by the border, blurred, too far)
and sometimes fail outright. The estimate is therefore:

- in log-millimetres (errors of a size regressor are multiplicative: 4 mm read as 5 is as wrong as
  8 read as 10), so the estimate is a geometric-mean-like size and the interval is asymmetric in mm;
- a Huber M-estimate of location started from the weighted median (robust: a 10% share of wild
  frames hardly moves it; efficient: ~95% of the mean's efficiency on clean Gaussian noise);
- with inverse-variance weights: a frame of weight w = confidence * quality is modelled as having
  log-error sd sigma / sqrt(w), so blurred, border-cut or low-confidence frames count less both in
  the estimate and in the interval;
- over the last `window` samples with exponential forgetting (`half_life` samples), so the track
  follows a real change (the polyp comes closer and the sizer sees it better) without being led
  by one frame.

Uncertainty interval (`confidence_level`, default 90%), in log space around the estimate:
- with a calibration (pipeline.calibration, from the sizer bundle): the half-width calibrated on
  held-out polyps for an estimate made of n sized frames. The error of a track's estimate is
  mostly the sizer's own and shared by its frames, so that half-width stops shrinking at a floor
  instead of going as 1/sqrt(n);
- without one: z * sqrt(se^2 + uncalibrated_log_sd^2), where se = 1.026 * sigma / sqrt(sum of
  weights) is the frames' own scatter (1.026 = sqrt(1 / 0.95), the Huber estimator's variance
  relative to the mean at k = 1.345; sigma is the MAD of the standardised residuals shrunk
  towards `prior_log_sd` with `prior_frames` pseudo-frames) and uncalibrated_log_sd stands for
  the sizer's shared error, which no number of frames averages away. Reports say such an
  interval is not calibrated.

Sizes and interval ends are kept within the sizer's range: the sizer bundle's
`outputs.decision.clamp_mm` (the reference's [0.5, 22] mm) when it names one, else
pipeline.sizeclass MIN_SIZE_MM..MAX_SIZE_MM. The sizer cannot say more than that range, so an
interval end at the cap means "at least" (or "at most" at the bottom), not a measured bound.

The class shown names the interval, so it never contradicts the size beside it (issue 13): the
classes the interval [low, high] touches (`size_claim`: "small", or "diminutive or small" while
it straddles 5 mm). The values are also taken rounded to the 0.1 mm that labels print, so a label
reading "[5.0-6.3]" never says only "small". Hysteresis only ever errs towards caution: a claim
widens at once when the interval reaches another class, and narrows only when the interval,
widened by `hysteresis_mm_ratio` on both sides, stays within the narrower claim for
`switch_after_frames` consecutive samples.
"""
from __future__ import annotations

import logging
import math
from collections import deque
from statistics import NormalDist

import numpy as np

from pipeline.calibration import TrackInterval
from pipeline.errors import ConfigError
from pipeline.sizeclass import DIMINUTIVE_MAX_MM, MAX_SIZE_MM, MIN_SIZE_MM, TRICLASS_NAMES, triclass_index

from .types import SizeEstimate

log = logging.getLogger(__name__)

_HUBER_K = 1.345
_HUBER_SE_FACTOR = 1.026
_MAD_TO_SD = 1.4826
_MIN_WEIGHT = 1e-3


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """Value where the cumulative weight reaches half (the lower one on an exact tie)."""
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    cum = np.cumsum(w)
    return float(v[np.searchsorted(cum, 0.5 * cum[-1])])


# The claim shown for an interval touching classes lo..hi (triclass indices).
SIZE_CLAIMS: dict[tuple[int, int], str] = {
    (0, 0): "diminutive", (1, 1): "small", (2, 2): "large",
    (0, 1): "diminutive or small", (1, 2): "small or large", (0, 2): "diminutive, small or large"}
CLAIM_SPANS = {name: span for span, name in SIZE_CLAIMS.items()}


def claimed_classes(claim: str) -> tuple[str, ...]:
    """The triclass names a shown claim admits ("small or large" -> ("small", "large"))."""
    lo, hi = CLAIM_SPANS[claim]
    return TRICLASS_NAMES[lo:hi + 1]


def _span(low_mm: float, high_mm: float, ratio: float = 1.0,
          diminutive_max_mm: float = DIMINUTIVE_MAX_MM) -> tuple[int, int]:
    """Classes touched by [low / ratio, high * ratio], exact and as printed to 0.1 mm."""
    low, high = low_mm / ratio, high_mm * ratio

    def cls(v):
        return triclass_index(v, diminutive_max_mm)
    return min(cls(low), cls(round(low, 1))), max(cls(high), cls(round(high, 1)))


def size_claim(low_mm: float, high_mm: float, diminutive_max_mm: float = DIMINUTIVE_MAX_MM) -> str:
    """The claim that names every class the interval touches (no hysteresis)."""
    return SIZE_CLAIMS[_span(low_mm, high_mm, diminutive_max_mm=diminutive_max_mm)]


def claim_contradicts(size_mm: float, low_mm: float, high_mm: float, claim: str,
                      diminutive_max_mm: float = DIMINUTIVE_MAX_MM) -> str | None:
    """Why a shown (size, interval, claim) contradicts itself, or None: the claim must admit the
    class of the size and of every size in the interval, exactly and as printed to 0.1 mm, with
    the sizer bundle's decision threshold for diminutive (`outputs.decision.diminutive_max_mm`)."""
    if claim not in CLAIM_SPANS:
        return f"unknown class {claim!r}"
    if not low_mm <= size_mm <= high_mm:
        return f"size {size_mm} outside its interval [{low_mm}, {high_mm}]"
    lo, hi = CLAIM_SPANS[claim]
    need_lo, need_hi = _span(low_mm, high_mm, diminutive_max_mm=diminutive_max_mm)
    if need_lo < lo or need_hi > hi:
        return f"[{low_mm:.1f}-{high_mm:.1f}] mm reaches {SIZE_CLAIMS[(need_lo, need_hi)]} but the label says {claim}"
    return None


def count_class_flips(sizes_mm) -> int:
    """Changes of the triclass between consecutive values (for flips-per-100-frames figures)."""
    classes = np.asarray(triclass_index(np.asarray(sizes_mm, dtype=np.float64))).ravel()
    return int(np.count_nonzero(classes[1:] != classes[:-1]))


def size_range(clamp_mm=None) -> tuple[float, float]:
    """The (low, high) mm range sizes are kept in: the sizer bundle's clamp_mm, or the
    method's MIN_SIZE_MM..MAX_SIZE_MM when it names none; ConfigError when it is not a range."""
    if clamp_mm is None:
        return MIN_SIZE_MM, MAX_SIZE_MM
    try:
        lo, hi = (float(v) for v in clamp_mm)
    except (TypeError, ValueError):
        raise ConfigError(f"clamp_mm must be two sizes in mm (low, high), got {clamp_mm!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ConfigError(f"clamp_mm must be two finite sizes 0 < low < high mm, got {clamp_mm!r}")
    return lo, hi


class SizeSmoother:
    """One track's size: `add(size_mm, confidence, quality) -> SizeEstimate`.

    interval: the calibrated half-widths (pipeline.calibration.interval_for) or None
    (uncalibrated, see the module doc); not a run-config key, it comes with the sizer bundle.
    window: most recent samples kept. half_life: samples after which a sample's weight halves
    (None: no forgetting). hysteresis_mm_ratio: how far (as a factor) the interval must clear a
    class boundary before the claim shown narrows. switch_after_frames: consecutive samples it
    must do so. confidence_level: of the interval. prior_log_sd / prior_frames: per-frame
    log-error sd assumed before data says otherwise, and how many frames that assumption is
    worth. uncalibrated_log_sd: the sizer's shared log error assumed without a calibration.
    diminutive_max_mm: the class boundary for diminutive, from the sizer bundle's decision block
    (5 mm by definition; the reference protocol decides at 4.75 mm); like `interval`, it comes
    with the sizer bundle, so it is not keyword-only and not a run-config key. clamp_mm: the
    sizer bundle's (low, high) size range (`outputs.decision.clamp_mm`), None for
    MIN_SIZE_MM..MAX_SIZE_MM; sizes and interval ends are clipped to it.
    """

    def __init__(self, interval: TrackInterval | None = None, diminutive_max_mm: float = DIMINUTIVE_MAX_MM,
                 clamp_mm: tuple[float, float] | None = None, *,
                 window: int = 150,
                 half_life: float | None = 60.0, hysteresis_mm_ratio: float = 1.1, switch_after_frames: int = 5,
                 confidence_level: float = 0.9, prior_log_sd: float = 0.25, prior_frames: float = 3.0,
                 uncalibrated_log_sd: float = 0.25):
        def bad(name, value, what):
            raise ConfigError(f"SizeSmoother: {name} must be {what}, got {value!r}")

        if not isinstance(window, (int, np.integer)) or isinstance(window, bool) or window < 1:
            bad("window", window, "an integer >= 1 (samples)")
        if half_life is not None and not (isinstance(half_life, (int, float)) and half_life > 0):
            bad("half_life", half_life, "a number of samples > 0, or None for no forgetting")
        if not (isinstance(hysteresis_mm_ratio, (int, float)) and 1.0 <= hysteresis_mm_ratio < 2.0):
            bad("hysteresis_mm_ratio", hysteresis_mm_ratio, "a factor in [1, 2) (1.1 = 10% past a boundary)")
        if not isinstance(switch_after_frames, (int, np.integer)) or isinstance(switch_after_frames, bool) \
                or switch_after_frames < 1:
            bad("switch_after_frames", switch_after_frames, "an integer >= 1")
        if not (isinstance(confidence_level, (int, float)) and 0 < confidence_level < 1):
            bad("confidence_level", confidence_level, "a number in (0, 1)")
        if not (isinstance(prior_log_sd, (int, float)) and prior_log_sd > 0):
            bad("prior_log_sd", prior_log_sd, "a number > 0 (sd of log-size errors, 0.25 ~ 25%)")
        if not (isinstance(prior_frames, (int, float)) and prior_frames >= 0):
            bad("prior_frames", prior_frames, "a number >= 0")
        if not (isinstance(uncalibrated_log_sd, (int, float)) and uncalibrated_log_sd > 0):
            bad("uncalibrated_log_sd", uncalibrated_log_sd, "a number > 0 (log-size error shared by a track's frames)")
        if not (isinstance(diminutive_max_mm, (int, float)) and MIN_SIZE_MM < diminutive_max_mm < 10.0):
            bad("diminutive_max_mm", diminutive_max_mm, f"a size in ({MIN_SIZE_MM}, 10) mm")
        self.clamp_mm = size_range(clamp_mm)
        if not self.clamp_mm[0] < diminutive_max_mm < self.clamp_mm[1]:
            bad("diminutive_max_mm", diminutive_max_mm, f"inside clamp_mm {self.clamp_mm}")
        if interval is not None and abs(interval.level - confidence_level) > 1e-9:
            bad("confidence_level", confidence_level, f"the calibrated interval's level {interval.level:g}")
        self.interval = interval
        self.window = int(window)
        self.half_life = None if half_life is None else float(half_life)
        self.switch_after_frames = int(switch_after_frames)
        self.z = NormalDist().inv_cdf(0.5 + confidence_level / 2)
        self.prior_log_sd = float(prior_log_sd)
        self.prior_frames = float(prior_frames)
        self.uncalibrated_log_sd = float(uncalibrated_log_sd)
        self.hysteresis_ratio = float(hysteresis_mm_ratio)
        self.diminutive_max_mm = float(diminutive_max_mm)

        self._log_sizes: deque[float] = deque(maxlen=self.window)
        self._weights: deque[float] = deque(maxlen=self.window)
        self._frames_added = 0
        self._shown_class: tuple[int, int] | None = None
        self._pending_class: tuple[int, int] | None = None
        self._pending_count = 0
        self._estimate: SizeEstimate | None = None
        self._invalid_samples = 0

    @property
    def invalid_samples(self) -> int:
        """Sizes skipped because they were not finite and positive."""
        return self._invalid_samples

    @property
    def estimate(self) -> SizeEstimate | None:
        """The latest estimate (None before the first valid sample)."""
        return self._estimate

    def add(self, size_mm: float, confidence: float = 1.0, quality: float = 1.0) -> SizeEstimate | None:
        """Add one frame's sizer output; confidence and quality in 0..1 weight it.

        A non-finite or non-positive size (a failed inference) is skipped with a warning and the
        previous estimate is returned (None if there is none yet).
        """
        size_mm = float(size_mm)
        if not math.isfinite(size_mm) or size_mm <= 0:
            self._invalid_samples += 1
            # Once per track: a broken sizer would otherwise log on every frame.
            if self._invalid_samples == 1:
                log.warning("SizeSmoother: skipping invalid size %r mm (further ones are counted)", size_mm)
            return self._estimate
        weight = float(confidence) * float(quality)
        weight = min(1.0, max(_MIN_WEIGHT, weight if math.isfinite(weight) else _MIN_WEIGHT))
        lo_mm, hi_mm = self.clamp_mm
        size_mm = min(hi_mm, max(lo_mm, size_mm))
        self._log_sizes.append(math.log(size_mm))
        self._weights.append(weight)
        self._frames_added += 1
        mu, half = self._robust_log_estimate()
        # The sizer says nothing beyond its range: an end at the cap reads "at least" / "at most".
        # (the size too: exp(log(22)) can round past 22, outside its own interval)
        size, low, high = (min(hi_mm, max(lo_mm, math.exp(v))) for v in (mu, mu - half, mu + half))
        self._update_class(low, high)
        self._estimate = SizeEstimate(
            size_mm=size, low_mm=low, high_mm=high,
            size_class=SIZE_CLAIMS[self._shown_class], frames_used=len(self._log_sizes))
        return self._estimate

    def _robust_log_estimate(self) -> tuple[float, float]:
        x = np.fromiter(self._log_sizes, dtype=np.float64, count=len(self._log_sizes))
        w = np.fromiter(self._weights, dtype=np.float64, count=len(self._weights))
        if self.half_life is not None:
            ages = np.arange(len(x) - 1, -1, -1, dtype=np.float64)
            w = w * np.power(0.5, ages / self.half_life)
        mu = weighted_median(x, w)
        sqrt_w = np.sqrt(w)
        # Standardised residuals: a frame of weight w has log-error sd sigma / sqrt(w).
        abs_res = np.abs(x - mu) * sqrt_w
        mad_sd = _MAD_TO_SD * float(np.median(abs_res)) if len(x) > 1 else 0.0
        n = float(len(x))
        sigma = math.sqrt((n * mad_sd ** 2 + self.prior_frames * self.prior_log_sd ** 2)
                          / max(n + self.prior_frames, 1e-9))
        sigma = max(sigma, 1e-6)
        for _ in range(10):     # Huber IRLS from the median
            r = (x - mu) * sqrt_w / sigma
            huber = np.minimum(1.0, _HUBER_K / np.maximum(np.abs(r), 1e-12))
            ww = w * huber
            new_mu = float(np.sum(ww * x) / np.sum(ww))
            if abs(new_mu - mu) < 1e-7:
                mu = new_mu
                break
            mu = new_mu
        if self.interval is not None:
            return mu, self.interval.halfwidth(len(x))
        se = _HUBER_SE_FACTOR * sigma / math.sqrt(float(np.sum(w)))
        return mu, self.z * math.sqrt(se ** 2 + self.uncalibrated_log_sd ** 2)

    def _update_class(self, low: float, high: float) -> None:
        exact = _span(low, high, diminutive_max_mm=self.diminutive_max_mm)
        shown = self._shown_class
        if shown is None or exact[0] < shown[0] or exact[1] > shown[1]:
            # The interval reaches a class the claim leaves out: widen now, with the margin,
            # so it does not have to widen again on the next wobble.
            self._shown_class = _span(low, high, self.hysteresis_ratio, self.diminutive_max_mm) \
                if shown is not None else exact
            self._pending_class, self._pending_count = None, 0
            return
        candidate = _span(low, high, self.hysteresis_ratio, self.diminutive_max_mm)  # narrower only with the margin
        if candidate == shown or not (candidate[0] >= shown[0] and candidate[1] <= shown[1]):
            self._pending_class, self._pending_count = None, 0
            return
        if candidate == self._pending_class:
            self._pending_count += 1
        else:
            self._pending_class, self._pending_count = candidate, 1
        if self._pending_count >= self.switch_after_frames:
            self._shown_class = candidate
            self._pending_class, self._pending_count = None, 0


class TrackSizer:
    """Size smoothers by track id: `add(track_id, size_mm, confidence, quality) -> SizeEstimate`.

    `interval` and the keyword arguments are passed to every new `SizeSmoother`. Call `retain(ids)` with the ids the
    tracker still remembers (`Tracker.remembered_ids`) so a re-identified polyp keeps its history
    and deleted tracks free their state.
    """

    def __init__(self, interval: TrackInterval | None = None, **smoother_kwargs):
        try:
            SizeSmoother(interval, **smoother_kwargs)     # validate once, here, with the caller's arguments
        except TypeError as exc:
            raise ConfigError(f"TrackSizer: {exc}") from None
        self.interval = interval
        self._kwargs = smoother_kwargs
        self._smoothers: dict[int, SizeSmoother] = {}

    def add(self, track_id: int, size_mm: float, confidence: float = 1.0,
            quality: float = 1.0) -> SizeEstimate | None:
        smoother = self._smoothers.get(track_id)
        if smoother is None:
            smoother = self._smoothers[track_id] = SizeSmoother(self.interval, **self._kwargs)
        return smoother.add(size_mm, confidence, quality)

    @property
    def smoother_settings(self) -> dict:
        """The keyword arguments every new SizeSmoother gets."""
        return dict(self._kwargs)

    def estimate(self, track_id: int) -> SizeEstimate | None:
        smoother = self._smoothers.get(track_id)
        return None if smoother is None else smoother.estimate

    def retain(self, track_ids) -> None:
        keep = set(track_ids)
        for tid in [t for t in self._smoothers if t not in keep]:
            del self._smoothers[tid]

    def drop(self, track_id: int) -> None:
        self._smoothers.pop(track_id, None)

    def __contains__(self, track_id: int) -> bool:
        return track_id in self._smoothers

    def __len__(self) -> int:
        return len(self._smoothers)

    def track_ids(self) -> list[int]:
        return sorted(self._smoothers)
