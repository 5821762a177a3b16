"""Sizing metrics per frame and per polyp (numpy only).

Per polyp, a polyp's frame predictions are reduced to one: the median of its predicted sizes
in mm (method.md), or, when only class predictions exist, the most frequent predicted class
(ties go to the larger class: over-sizing is the safer clinical error). The ground truth of a
polyp is its (constant) size; the median of its frame targets is used.

Definitions follow scikit-learn's: confusion matrices have true classes in rows, predictions
in columns; F1 "weighted" averages per-class F1 by true support, "macro" is the plain mean
over the classes present in either truth or prediction; `binary_f1` is the F1 of the positive
class (>= 10 mm) and `binary_f1_weighted` the support-weighted mean over both classes, which is
what the reference code reports (scikit-learn average="weighted"; the paper's binary 87.8 %);
balanced accuracy is the mean recall over the classes present in the truth. An undefined ratio
(0/0) counts as 0, as scikit-learn's zero_division default does.

Size predictions also get what a clinician reads (`pipeline.size_metrics`): within 1 mm and
10 %, Bland-Altman bias and limits, and the rates of > 5 mm called diminutive and >= 10 mm
called < 10 mm. A predicted size is diminutive at <= `diminutive_max_mm` (the truth at 5 mm).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.size_metrics import clinician_metrics, size_classes
from pipeline.sizeclass import BINARY_NAMES, DIMINUTIVE_MAX_MM, TRICLASS_NAMES, binary_index, triclass_index


@dataclass
class SizingMetrics:
    values: dict[str, float]                                  # flat, CSV/JSON-ready
    confusion: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. "frame_triclass": (3,3)

    def confusion_lists(self) -> dict[str, list[list[int]]]:
        return {k: v.astype(int).tolist() for k, v in self.confusion.items()}


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def confusion_matrix(true_labels, pred_labels, num_classes: int) -> np.ndarray:
    true_labels = np.asarray(true_labels, dtype=np.int64).reshape(-1)
    pred_labels = np.asarray(pred_labels, dtype=np.int64).reshape(-1)
    if true_labels.shape != pred_labels.shape:
        raise ValueError(f"{true_labels.size} true labels but {pred_labels.size} predictions")
    for name, labels in (("true", true_labels), ("predicted", pred_labels)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name} labels must lie in [0, {num_classes - 1}]")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (true_labels, pred_labels), 1)
    return matrix


def per_class_f1(matrix: np.ndarray) -> np.ndarray:
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    return np.array([_ratio(2 * tp[k], predicted[k] + actual[k]) for k in range(len(tp))])


def f1_weighted(matrix: np.ndarray) -> float:
    support = matrix.sum(axis=1).astype(np.float64)
    return _ratio(float((per_class_f1(matrix) * support).sum()), support.sum())


def f1_macro(matrix: np.ndarray) -> float:
    present = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0
    return float(per_class_f1(matrix)[present].mean()) if present.any() else 0.0


def f1_binary(matrix: np.ndarray, positive: int = 1) -> float:
    return float(per_class_f1(matrix)[positive])


def balanced_accuracy(matrix: np.ndarray) -> float:
    actual = matrix.sum(axis=1)
    present = actual > 0
    if not present.any():
        return 0.0
    recall = np.diag(matrix)[present] / actual[present]
    return float(recall.mean())


def accuracy(matrix: np.ndarray) -> float:
    return _ratio(np.trace(matrix), matrix.sum())


def group_by_polyp(values, polyp_ids, reduce) -> tuple[list, np.ndarray]:
    """Reduce `values` per polyp id with `reduce(array) -> scalar`; ids in first-seen order."""
    values = np.asarray(values)
    ids = list(polyp_ids)
    if len(ids) != len(values):
        raise ValueError(f"{len(values)} values but {len(ids)} polyp ids")
    order: dict = {}
    for index, pid in enumerate(ids):
        order.setdefault(pid, []).append(index)
    return list(order), np.array([reduce(values[idx]) for idx in order.values()])


def majority_class(labels: np.ndarray) -> int:
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    return int(np.flatnonzero(counts == counts.max())[-1])


def _class_block(prefix: str, true_mm: np.ndarray, tri_pred: np.ndarray, bin_pred: np.ndarray,
                 values: dict, confusion: dict) -> None:
    tri = confusion_matrix(triclass_index(true_mm), tri_pred, len(TRICLASS_NAMES))
    binary = confusion_matrix(binary_index(true_mm), bin_pred, len(BINARY_NAMES))
    confusion[f"{prefix}_triclass"] = tri
    confusion[f"{prefix}_binary"] = binary
    values[f"{prefix}_count"] = float(len(true_mm))
    values[f"{prefix}_binary_f1"] = f1_binary(binary)
    values[f"{prefix}_binary_f1_weighted"] = f1_weighted(binary)
    values[f"{prefix}_binary_balanced_accuracy"] = balanced_accuracy(binary)
    values[f"{prefix}_triclass_f1_weighted"] = f1_weighted(tri)
    values[f"{prefix}_triclass_f1_macro"] = f1_macro(tri)
    values[f"{prefix}_triclass_balanced_accuracy"] = balanced_accuracy(tri)
    values[f"{prefix}_triclass_accuracy"] = accuracy(tri)


def evaluate_sizes(predicted_mm, true_mm, polyp_ids=None,
                   diminutive_max_mm: float = DIMINUTIVE_MAX_MM) -> SizingMetrics:
    """Metrics of size predictions in mm, per frame and (with `polyp_ids`) per polyp.

    Keys (prefix "frame_" and "polyp_"): mae_mm, binary_f1, binary_f1_weighted,
    binary_balanced_accuracy, triclass_f1_weighted, triclass_f1_macro, triclass_balanced_accuracy,
    triclass_accuracy, count, and the clinician figures of `pipeline.size_metrics`
    (within_1mm, within_10pct, missed_above_5_rate, missed_large_rate, ba_bias_mm,
    ba_loa_low_mm, ba_loa_high_mm). Confusion matrices: "<prefix>_triclass" (3x3, the
    confusion at 5 and 10 mm) and "<prefix>_binary" (2x2).
    """
    predicted_mm = np.asarray(predicted_mm, dtype=np.float64).reshape(-1)
    true_mm = np.asarray(true_mm, dtype=np.float64).reshape(-1)
    if predicted_mm.shape != true_mm.shape:
        raise ValueError(f"{predicted_mm.size} predictions but {true_mm.size} targets")
    if predicted_mm.size == 0:
        raise ValueError("no predictions to evaluate")
    values: dict[str, float] = {}
    confusion: dict[str, np.ndarray] = {}

    def block(prefix, pred, truth):
        clinic = clinician_metrics(pred, truth, diminutive_max_mm)
        values[f"{prefix}_mae_mm"] = clinic.values["mae_mm"]
        _class_block(prefix, truth, size_classes(pred, diminutive_max_mm), np.atleast_1d(binary_index(pred)),
                     values, confusion)
        values.update({f"{prefix}_{k}": v for k, v in clinic.values.items() if k not in ("count", "mae_mm")})

    block("frame", predicted_mm, true_mm)
    if polyp_ids is not None:
        _, polyp_pred = group_by_polyp(predicted_mm, polyp_ids, np.median)
        _, polyp_true = group_by_polyp(true_mm, polyp_ids, np.median)
        block("polyp", polyp_pred, polyp_true)
    return SizingMetrics(values, confusion)


def evaluate_classes(predicted_class, true_mm, classes: str = "triclass", polyp_ids=None) -> SizingMetrics:
    """Metrics of class predictions (argmax of logits) against true sizes in mm.

    `classes` says what the predicted indices mean. Triclass predictions also give binary
    metrics (large vs. the rest); binary predictions give binary metrics only.
    Per polyp, the predicted class is the most frequent one (ties: the larger class).
    """
    predicted_class = np.asarray(predicted_class, dtype=np.int64).reshape(-1)
    true_mm = np.asarray(true_mm, dtype=np.float64).reshape(-1)
    if predicted_class.shape != true_mm.shape:
        raise ValueError(f"{predicted_class.size} predictions but {true_mm.size} targets")
    if predicted_class.size == 0:
        raise ValueError("no predictions to evaluate")
    if classes not in ("triclass", "binary"):
        raise ValueError(f"classes must be 'triclass' or 'binary', got {classes!r}")
    values: dict[str, float] = {}
    confusion: dict[str, np.ndarray] = {}

    def block(prefix, truth, pred):
        if classes == "triclass":
            _class_block(prefix, truth, pred, (pred == 2).astype(np.int64), values, confusion)
        else:
            binary = confusion_matrix(binary_index(truth), pred, len(BINARY_NAMES))
            confusion[f"{prefix}_binary"] = binary
            values[f"{prefix}_count"] = float(len(truth))
            values[f"{prefix}_binary_f1"] = f1_binary(binary)
            values[f"{prefix}_binary_f1_weighted"] = f1_weighted(binary)
            values[f"{prefix}_binary_balanced_accuracy"] = balanced_accuracy(binary)

    block("frame", true_mm, predicted_class)
    if polyp_ids is not None:
        _, polyp_pred = group_by_polyp(predicted_class, polyp_ids, majority_class)
        _, polyp_true = group_by_polyp(true_mm, polyp_ids, np.median)
        block("polyp", polyp_true, polyp_pred.astype(np.int64))
    return SizingMetrics(values, confusion)
