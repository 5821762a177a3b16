"""Polyp detection metrics: AP@0.5, recall at a false-positive budget, per-polyp detection and delay.

What a clinical engineer asks of a polyp detector:
- AP at IoU 0.5 over all evaluated frames (all-point interpolated precision-recall area);
- recall when the operating point allows one false positive per 100 frames (false alarms are
  what make endoscopists switch a detector off);
- the fraction of polyps detected at least once at the operating score threshold;
- how long after a polyp first becomes visible it is first detected, in frames and seconds,
  per clip: a SUN case holds several recordings (`FrameRecord.clip`) of its one polyp, each a
  separate encounter timed from the polyp's first visible frame in that recording.

Matching is per frame, greedy by score: a detection is a true positive when its IoU with a
still-unmatched ground-truth box is at least the threshold. Because higher-scoring detections
are matched first, a detection's status does not depend on the score threshold, so one
matching serves every operating point.

Difficult boxes (Pascal VOC's flag, `trainer.synth.difficulty`: under half the polyp in view
or a short side under 5% of the frame width) follow VOC: they count neither as hits nor as
misses, and a detection overlapping one (IoU >= threshold) that matches no normal box is
ignored, not a false positive. The same figures over every box (difficult ones counted as
normal boxes) are reported beside them with the suffix `_all_boxes`, so nothing is hidden.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from pipeline.boxes import box_iou


@dataclass
class FrameDetections:
    """One evaluated frame: its ground truth and the detector's boxes (same coordinate frame)."""
    video: str
    frame_index: int
    gt_boxes: np.ndarray                       # (K,4) xyxy
    gt_ids: Sequence[str]                      # K polyp ids (unique across videos)
    boxes: np.ndarray                          # (M,4) xyxy
    scores: np.ndarray                         # (M,)
    gt_difficult: np.ndarray | None = None     # (K,) bool, VOC's flag; None: no box is difficult
    clip: str = ""                             # the recording within `video` (FrameRecord.clip)
    matched_gt: np.ndarray = field(init=False)  # (M,) index into gt_boxes or -1
    ignored: np.ndarray = field(init=False)     # (M,) True: matched only a difficult box

    def __post_init__(self) -> None:
        self.gt_boxes = np.asarray(self.gt_boxes, dtype=np.float64).reshape(-1, 4)
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.gt_difficult = (np.zeros(len(self.gt_boxes), dtype=bool) if self.gt_difficult is None
                             else np.asarray(self.gt_difficult, dtype=bool).reshape(-1))
        if len(self.gt_ids) != len(self.gt_boxes):
            raise ValueError(f"{self.video} frame {self.frame_index}: {len(self.gt_ids)} ids "
                             f"for {len(self.gt_boxes)} ground-truth boxes")
        if len(self.gt_difficult) != len(self.gt_boxes):
            raise ValueError(f"{self.video} frame {self.frame_index}: {len(self.gt_difficult)} difficult "
                             f"flags for {len(self.gt_boxes)} ground-truth boxes")
        if len(self.scores) != len(self.boxes):
            raise ValueError(f"{self.video} frame {self.frame_index}: {len(self.scores)} scores "
                             f"for {len(self.boxes)} boxes")
        self.matched_gt = np.full(len(self.boxes), -1, dtype=np.int64)
        self.ignored = np.zeros(len(self.boxes), dtype=bool)


def match_frame(frame: FrameDetections, iou_threshold: float, ignore_difficult: bool = True) -> np.ndarray:
    """Fill and return `frame.matched_gt` (greedy, highest score first), and `frame.ignored`.

    With `ignore_difficult`, detections match normal boxes only; one that matches none but
    overlaps a difficult box by `iou_threshold` is ignored (VOC: any number of detections may
    fall on a difficult box). Without it every box is a normal box.
    """
    matched = np.full(len(frame.boxes), -1, dtype=np.int64)
    ignored = np.zeros(len(frame.boxes), dtype=bool)
    if len(frame.boxes) and len(frame.gt_boxes):
        iou = box_iou(frame.boxes, frame.gt_boxes)
        difficult = frame.gt_difficult if ignore_difficult else np.zeros(len(frame.gt_boxes), dtype=bool)
        taken = difficult.copy()          # difficult boxes are never matched one-to-one
        for det in np.argsort(-frame.scores, kind="stable"):   # a handful of boxes per frame
            candidates = np.where(taken, -1.0, iou[det])
            best = int(np.argmax(candidates))
            if candidates[best] >= iou_threshold:
                matched[det] = best
                taken[best] = True
            elif np.any(difficult & (iou[det] >= iou_threshold)):
                ignored[det] = True
    frame.matched_gt = matched
    frame.ignored = ignored
    return matched


def average_precision(scores: np.ndarray, is_tp: np.ndarray, num_gt: int) -> float:
    """All-point interpolated AP (area under the precision envelope)."""
    if num_gt == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(is_tp[order])
    fp = np.cumsum(~is_tp[order])
    recall = tp / num_gt
    precision = tp / np.maximum(tp + fp, 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    recall_steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(recall_steps * envelope))


def recall_at_fp_rate(scores: np.ndarray, is_tp: np.ndarray, num_gt: int, num_frames: int,
                      fp_per_100_frames: float = 1.0) -> tuple[float, float]:
    """(recall, score threshold) at the lowest threshold whose false positives stay within
    `fp_per_100_frames` per 100 frames. Detections tied in score are admitted together."""
    if num_gt == 0:
        return float("nan"), float("nan")
    if len(scores) == 0:
        return 0.0, float("inf")
    allowed = fp_per_100_frames * num_frames / 100.0
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    tp = np.cumsum(is_tp[order])
    fp = np.cumsum(~is_tp[order])
    # only cut after the last detection of a run of equal scores
    last_of_tie = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    ok = last_of_tie & (fp <= allowed)
    if not ok.any():
        return 0.0, float("inf")
    cut = int(np.flatnonzero(ok)[-1])
    return float(tp[cut] / num_gt), float(sorted_scores[cut])


def detection_metrics(frames: Sequence[FrameDetections], fps: Mapping[str, float] | float,
                      iou_threshold: float = 0.5, score_threshold: float = 0.3,
                      fp_per_100_frames: float = 1.0) -> dict[str, float]:
    """Every detection metric over a set of frames (frames of a video in any order).

    fps: frames per second per video (or one value for all) to turn delays into seconds.
    Per-polyp figures use detections scoring at least `score_threshold` (the operating point
    the pipeline runs at). Delays are per appearance, a polyp in one clip of one video
    (`FrameDetections.clip`; "" = the whole video): (first frame it is detected there) - (first
    frame it is visible there) among the evaluated frames, so with sampled frames it is resolved
    to the sampling step; the mean is over detected appearances (`polyp_clips_detected` of
    `polyp_clips`). Frame indices of one clip must count its frames in order (the readers' do).
    The detection rate stays per polyp: detected in any of its clips.
    Difficult boxes follow VOC (module docstring); `ap50_all_boxes`, `recall_all_boxes`,
    `precision_all_boxes`, `fp_per_100_frames_all_boxes` and `polyp_detection_rate_all_boxes`
    count every box. The frames keep the VOC matching (`matched_gt`, `ignored`).
    """
    every_box = _metrics(frames, fps, iou_threshold, score_threshold, fp_per_100_frames,
                         ignore_difficult=False)
    metrics = _metrics(frames, fps, iou_threshold, score_threshold, fp_per_100_frames,
                       ignore_difficult=True)
    for key in ("ap50", "recall", "precision", "fp_per_100_frames", "polyp_detection_rate"):
        metrics[f"{key}_all_boxes"] = every_box[key]
    metrics["gt_boxes_all"] = every_box["gt_boxes"]
    return metrics


def _metrics(frames: Sequence[FrameDetections], fps: Mapping[str, float] | float, iou_threshold: float,
             score_threshold: float, fp_per_100_frames: float, ignore_difficult: bool) -> dict[str, float]:
    for frame in frames:
        match_frame(frame, iou_threshold, ignore_difficult)
    counted = [~f.gt_difficult if ignore_difficult else np.ones(len(f.gt_boxes), dtype=bool) for f in frames]
    num_frames = len(frames)
    num_gt = int(sum(int(c.sum()) for c in counted))
    scores = np.concatenate([f.scores[~f.ignored] for f in frames]) if frames else np.zeros(0)
    is_tp = np.concatenate([f.matched_gt[~f.ignored] >= 0 for f in frames]) if frames else np.zeros(0, bool)

    ap = average_precision(scores, is_tp, num_gt)
    recall_fp, threshold_fp = recall_at_fp_rate(scores, is_tp, num_gt, num_frames, fp_per_100_frames)
    at_op = scores >= score_threshold
    tp_op = int(np.sum(is_tp & at_op))
    fp_op = int(np.sum(~is_tp & at_op))

    # keyed by appearance (polyp, video, clip): frame indices of different recordings of one
    # polyp are not on one clock, so each recording's delay starts at its own first sight
    first_visible: dict[tuple[str, str, str], int] = {}
    first_detected: dict[tuple[str, str, str], int] = {}
    for frame, counts in zip(frames, counted):
        for gt_index, polyp in enumerate(frame.gt_ids):
            if not counts[gt_index]:
                continue
            key = (polyp, frame.video, frame.clip)
            if key not in first_visible or frame.frame_index < first_visible[key]:
                first_visible[key] = frame.frame_index
        hits = frame.matched_gt[(frame.matched_gt >= 0) & (frame.scores >= score_threshold)]
        for gt_index in hits:
            key = (frame.gt_ids[int(gt_index)], frame.video, frame.clip)
            if key not in first_detected or frame.frame_index < first_detected[key]:
                first_detected[key] = frame.frame_index
    delays_frames = []
    delays_seconds = []
    for key, frame_index in first_detected.items():
        delay = frame_index - first_visible[key]
        rate = fps if isinstance(fps, (int, float)) else fps.get(key[1], float("nan"))
        delays_frames.append(delay)
        delays_seconds.append(delay / rate if rate and rate > 0 else float("nan"))
    num_polyps = len({key[0] for key in first_visible})
    num_detected = len({key[0] for key in first_detected})
    nan = float("nan")
    return {
        "ap50": ap,
        f"recall_at_{fp_per_100_frames:g}fp_per_100": recall_fp,
        f"threshold_at_{fp_per_100_frames:g}fp_per_100": threshold_fp,
        "precision": tp_op / (tp_op + fp_op) if tp_op + fp_op else nan,
        "recall": tp_op / num_gt if num_gt else nan,
        "fp_per_100_frames": 100.0 * fp_op / num_frames if num_frames else nan,
        "polyp_detection_rate": num_detected / num_polyps if num_polyps else nan,
        "polyps": float(num_polyps),
        "polyps_detected": float(num_detected),
        "polyp_clips": float(len(first_visible)),
        "polyp_clips_detected": float(len(first_detected)),
        "mean_delay_frames": float(np.mean(delays_frames)) if delays_frames else nan,
        "mean_delay_s": float(np.nanmean(delays_seconds)) if delays_seconds
        and not np.all(np.isnan(delays_seconds)) else nan,
        "frames": float(num_frames),
        "gt_boxes": float(num_gt),
    }
