"""Box utilities shared by the detector stage, the tracker, the sizer and the metrics.

Boxes are float `(x1, y1, x2, y2)` pixel coordinates (docs/design.md).
"""
from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (M,K) of xyxy boxes a (M,4) and b (K,4)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0.0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def clip_boxes(boxes, width: int, height: int) -> np.ndarray:
    """(K,4) boxes clipped to a width x height frame."""
    b = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    return b


def grow_boxes(boxes, grow: float) -> np.ndarray:
    """(K,4) boxes enlarged by `grow` times their width/height on each side (0.5: a 40 px wide
    box becomes 80 px wide). The one growth convention: the sizer crops a box clipped to the
    frame and grown so (pipeline.prep), and the quality check's border test grows the same
    clipped box the same way, so it judges exactly the crop the sizer sees."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    d = (b[:, 2:] - b[:, :2]) * grow
    return np.concatenate([b[:, :2] - d, b[:, 2:] + d], axis=1)

