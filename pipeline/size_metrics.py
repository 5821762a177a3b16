"""What a clinician reads from a sizer: agreement in mm and the errors that change a decision.

Pure numpy, shared by training reports (trainer.metrics), hagview-annotate's report and
scripts/bench_pipeline.py. Every function takes sizes in mm, per frame or per polyp (the
caller reduces a polyp's frames first, e.g. `per_polyp_median`).

- confusion at 5 and 10 mm: 3x3, true classes in rows (<= 5, 5-10, >= 10 mm), predicted in
  columns; a prediction is diminutive at <= `diminutive_max_mm` (5 mm, or the reference's
  test-time 4.75 mm);
- `missed_above_5_rate`: of the polyps > 5 mm, the share called diminutive (a polyp that should
  be resected and sent to histology, left in place or discarded under resect-and-discard);
- `missed_large_rate`: of the polyps >= 10 mm, the share called < 10 mm (sets the surveillance
  interval);
- MAE, the share within +-1 mm and within 10 % of the true size;
- Bland-Altman: bias (mean of predicted - true) and 95 % limits of agreement (bias +- 1.96 SD).
A rate whose denominator is empty is NaN (not 0: "no large polyp was missed" needs one).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .sizeclass import DIMINUTIVE_MAX_MM, LARGE_MIN_MM

CLASS_LABELS = ("<=5mm", "5-10mm", ">=10mm")
LOA_Z = 1.96


def _arrays(predicted_mm, true_mm) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predicted_mm, dtype=np.float64).reshape(-1)
    t = np.asarray(true_mm, dtype=np.float64).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"{p.size} predictions but {t.size} true sizes")
    return p, t


def size_classes(size_mm, diminutive_max_mm: float = DIMINUTIVE_MAX_MM) -> np.ndarray:
    """0: <= diminutive_max_mm, 1: between, 2: >= 10 mm."""
    s = np.asarray(size_mm, dtype=np.float64).reshape(-1)
    return np.where(s <= diminutive_max_mm, 0, np.where(s >= LARGE_MIN_MM, 2, 1)).astype(np.int64)


def confusion_5_10(predicted_mm, true_mm, diminutive_max_mm: float = DIMINUTIVE_MAX_MM) -> np.ndarray:
    """3x3 counts; truth classed at 5 and 10 mm, predictions at `diminutive_max_mm` and 10 mm."""
    p, t = _arrays(predicted_mm, true_mm)
    matrix = np.zeros((3, 3), dtype=np.int64)
    np.add.at(matrix, (size_classes(t), size_classes(p, diminutive_max_mm)), 1)
    return matrix


def _rate(hits: np.ndarray, of: np.ndarray) -> float:
    n = int(of.sum())
    return float((hits & of).sum()) / n if n else float("nan")


def bland_altman(predicted_mm, true_mm) -> dict[str, float]:
    """bias (mean predicted - true), sd of the differences, lower and upper 95 % limits."""
    p, t = _arrays(predicted_mm, true_mm)
    if p.size == 0:
        return {"bias_mm": float("nan"), "sd_mm": float("nan"),
                "loa_low_mm": float("nan"), "loa_high_mm": float("nan")}
    d = p - t
    bias = float(d.mean())
    sd = float(d.std(ddof=1)) if d.size > 1 else 0.0
    return {"bias_mm": bias, "sd_mm": sd, "loa_low_mm": bias - LOA_Z * sd, "loa_high_mm": bias + LOA_Z * sd}


@dataclass
class ClinicianMetrics:
    values: dict[str, float]
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((3, 3), dtype=np.int64))


def clinician_metrics(predicted_mm, true_mm, diminutive_max_mm: float = DIMINUTIVE_MAX_MM) -> ClinicianMetrics:
    """Every figure above for one set of (predicted, true) sizes; keys are unprefixed."""
    p, t = _arrays(predicted_mm, true_mm)
    err = np.abs(p - t)
    above_5 = t > DIMINUTIVE_MAX_MM
    large = t >= LARGE_MIN_MM
    ba = bland_altman(p, t)
    values = {
        "count": float(p.size),
        "mae_mm": float(err.mean()) if p.size else float("nan"),
        "within_1mm": float((err <= 1.0).mean()) if p.size else float("nan"),
        "within_10pct": float((err <= 0.1 * t).mean()) if p.size else float("nan"),
        "missed_above_5_rate": _rate(p <= diminutive_max_mm, above_5),
        "missed_large_rate": _rate(p < LARGE_MIN_MM, large),
        "ba_bias_mm": ba["bias_mm"], "ba_loa_low_mm": ba["loa_low_mm"], "ba_loa_high_mm": ba["loa_high_mm"],
    }
    return ClinicianMetrics(values, confusion_5_10(p, t, diminutive_max_mm))


def per_polyp_median(values, polyp_ids) -> tuple[list, np.ndarray]:
    """(ids in first-seen order, median of each id's values)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    ids = list(polyp_ids)
    if len(ids) != values.size:
        raise ValueError(f"{values.size} values but {len(ids)} polyp ids")
    groups: dict = {}
    for i, pid in enumerate(ids):
        groups.setdefault(pid, []).append(i)
    return list(groups), np.array([float(np.median(values[idx])) for idx in groups.values()])


def time_to_first_size(first_visible_s: dict, first_sized_s: dict) -> dict[str, float]:
    """From each polyp's first visible frame to the first size shown for it, in seconds.

    `first_visible_s`: polyp -> time it first appears (ground truth); `first_sized_s`: polyp ->
    time a size was first shown on a track matched to it (absent: never sized). Returns the
    median, mean and maximum over the sized polyps and the share never sized (NaN when none).
    """
    delays = np.array([max(0.0, first_sized_s[p] - first_visible_s[p])
                       for p in first_visible_s if p in first_sized_s], dtype=np.float64)
    n = len(first_visible_s)
    nan = float("nan")
    return {"polyps": float(n), "sized_polyps": float(delays.size),
            "never_sized_rate": (n - delays.size) / n if n else nan,
            "median_s": float(np.median(delays)) if delays.size else nan,
            "mean_s": float(delays.mean()) if delays.size else nan,
            "max_s": float(delays.max()) if delays.size else nan}


CLINICIAN_KEYS = ("mae_mm", "within_1mm", "within_10pct", "missed_above_5_rate", "missed_large_rate",
                  "ba_bias_mm", "ba_loa_low_mm", "ba_loa_high_mm")


def clinician_report(frame_pred, frame_true, polyp_pred, polyp_true, *, first_visible_s: dict | None = None,
                     first_sized_s: dict | None = None,
                     diminutive_max_mm: float = DIMINUTIVE_MAX_MM) -> dict:
    """{"per_frame": {...}, "per_polyp": {...}[, "time_to_first_size": {...}]}, JSON-ready:
    each level holds `clinician_metrics` values and its confusion at 5 and 10 mm as lists
    (labels CLASS_LABELS); levels without pairs hold {"count": 0}."""
    out: dict = {}
    for level, pred, true in (("per_frame", frame_pred, frame_true), ("per_polyp", polyp_pred, polyp_true)):
        if len(pred) == 0:
            out[level] = {"count": 0.0}
            continue
        m = clinician_metrics(pred, true, diminutive_max_mm)
        out[level] = {**m.values, "confusion_5_10": m.confusion.tolist()}
    if first_visible_s is not None:
        out["time_to_first_size"] = time_to_first_size(first_visible_s, first_sized_s or {})
    return out
