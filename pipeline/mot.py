"""MOTChallenge text files, the synthetic ground-truth JSON, and CLEAR-MOT / identity metrics.

In memory, boxes per frame are `dict[frame_index (0-based), list[MotBox]]` with xyxy boxes; the
MOTChallenge text form is `frame,id,x,y,w,h,conf,-1,-1,-1` with frames counted from 1.
Metrics come from py-motmetrics; the IoU distance is computed here because motmetrics 1.4's
`iou_matrix` calls `np.asfarray`, which numpy 2 removed.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.boxes import box_iou
from pipeline.errors import DataError
from pipeline.fsutil import write_text_atomic

from .types import GroundTruthBox

FrameBoxes = dict[int, list["MotBox"]]


@dataclass(frozen=True)
class MotBox:
    object_id: int
    box: tuple[float, float, float, float]     # x1, y1, x2, y2
    score: float = 1.0


@dataclass
class GroundTruthVideo:
    """A synthetic video's `<name>.gt.json` (docs/design.md)."""
    video: str
    fps: float
    width: int
    height: int
    num_frames: int
    synthetic: bool
    diameters_mm: dict[int, float]                       # polyp id -> diameter
    frames: dict[int, list[GroundTruthBox]] = field(default_factory=dict)   # 0-based index

    def boxes(self) -> FrameBoxes:
        """Per-frame MotBoxes (ids are the polyp ids)."""
        return {i: [MotBox(g.polyp_id, g.box, 1.0) for g in gts] for i, gts in self.frames.items()}


def tracks_to_mot(tracks) -> list[MotBox]:
    """What a tracker output contributes to a MOT file: confirmed tracks matched on this frame."""
    return [MotBox(t.id, tuple(t.box), float(t.score)) for t in tracks if t.confirmed and t.missed == 0]


def format_mot(frames: Mapping[int, Sequence[MotBox]]) -> str:
    lines = []
    for index in sorted(frames):
        for m in sorted(frames[index], key=lambda m: m.object_id):
            x1, y1, x2, y2 = m.box
            lines.append(f"{index + 1},{m.object_id},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},"
                         f"{m.score:.4f},-1,-1,-1")
    return "".join(line + "\n" for line in lines)


def write_mot(path: str | os.PathLike, frames: Mapping[int, Sequence[MotBox]]) -> None:
    """Write MOTChallenge rows (atomically), frames from 1, sorted by frame then id."""
    write_text_atomic(path, format_mot(frames))


def read_mot(path: str | os.PathLike) -> FrameBoxes:
    """Read MOTChallenge rows into 0-based frame -> boxes; DataError names the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read MOT file ({getattr(exc, 'strerror', None) or exc})") from None
    frames: FrameBoxes = {}
    seen: set[tuple[int, int]] = set()
    for line_no, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")] if "," in line else line.split()
        if len(parts) < 6:
            raise DataError(f"{path}:{line_no}: expected at least 6 comma-separated values "
                            f"(frame,id,x,y,w,h[,conf,...]), got {len(parts)}")
        try:
            frame_f, id_f = float(parts[0]), float(parts[1])
            x, y, w, h = (float(v) for v in parts[2:6])
            score = float(parts[6]) if len(parts) > 6 else 1.0
        except ValueError:
            raise DataError(f"{path}:{line_no}: non-numeric value in {line!r}") from None
        if not all(math.isfinite(v) for v in (frame_f, id_f, x, y, w, h, score)):
            raise DataError(f"{path}:{line_no}: non-finite value in {line!r}")
        if frame_f != int(frame_f) or frame_f < 1:
            raise DataError(f"{path}:{line_no}: frame must be an integer >= 1 (MOTChallenge counts from 1), "
                            f"got {parts[0]}")
        if id_f != int(id_f):
            raise DataError(f"{path}:{line_no}: id must be an integer, got {parts[1]}")
        if w <= 0 or h <= 0:
            raise DataError(f"{path}:{line_no}: box width and height must be > 0, got {w}x{h}")
        frame, object_id = int(frame_f) - 1, int(id_f)
        if (frame, object_id) in seen:
            raise DataError(f"{path}:{line_no}: id {object_id} appears twice in frame {frame + 1}")
        seen.add((frame, object_id))
        frames.setdefault(frame, []).append(MotBox(object_id, (x, y, x + w, y + h), score))
    return frames


def read_ground_truth_json(path: str | os.PathLike) -> GroundTruthVideo:
    """Read a synthetic `<name>.gt.json`; DataError names the file and the missing/bad key."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ground truth ({getattr(exc, 'strerror', None) or exc})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: ground truth must be a JSON object")

    def need(obj, key, where):
        if not isinstance(obj, dict) or key not in obj:
            raise DataError(f"{path}: missing key '{key}' in {where}")
        return obj[key]

    try:
        diameters = {int(need(p, "id", "polyps[]")): float(need(p, "diameter_mm", "polyps[]"))
                     for p in need(data, "polyps", "the top level")}
        gt = GroundTruthVideo(
            video=str(data.get("video", path.name.split(".")[0])), fps=float(need(data, "fps", "the top level")),
            width=int(need(data, "width", "the top level")), height=int(need(data, "height", "the top level")),
            num_frames=int(need(data, "num_frames", "the top level")),
            synthetic=bool(data.get("synthetic", False)), diameters_mm=diameters)
        for k, f in enumerate(need(data, "frames", "the top level")):
            index = int(need(f, "index", f"frames[{k}]"))
            boxes = []
            for p in need(f, "polyps", f"frames[{k}]"):
                box = tuple(float(v) for v in need(p, "box", f"frames[{k}].polyps[]"))
                if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
                    raise DataError(f"{path}: frames[{k}] has an invalid box {list(box)} (want x1<x2, y1<y2)")
                pid = int(need(p, "id", f"frames[{k}].polyps[]"))
                boxes.append(GroundTruthBox(
                    polyp_id=pid, box=box,
                    diameter_mm=float(p.get("diameter_mm", diameters.get(pid, float("nan")))),
                    distance_mm=float(p.get("distance_mm", float("nan"))),
                    visible_fraction=float(p.get("visible_fraction", 1.0))))
            gt.frames[index] = boxes
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: malformed ground truth ({exc})") from None
    return gt


def read_boxes(path: str | os.PathLike) -> FrameBoxes:
    """Boxes from a `.json` synthetic ground truth or a MOTChallenge text file, by suffix."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return read_ground_truth_json(path).boxes()
    return read_mot(path)


def _iou_distance(gt: np.ndarray, hyp: np.ndarray, max_distance: float) -> np.ndarray:
    """1 - IoU for xyxy boxes, NaN where the pair may not match (motmetrics' convention)."""
    if len(gt) == 0 or len(hyp) == 0:
        return np.empty((len(gt), len(hyp)))
    dist = 1.0 - box_iou(gt, hyp)
    dist[dist > max_distance] = np.nan
    return dist


_METRICS = {   # motmetrics name -> our key
    "mota": "mota", "motp": "motp", "idf1": "idf1", "idp": "idp", "idr": "idr",
    "num_switches": "id_switches", "precision": "precision", "recall": "recall",
    "num_false_positives": "false_positives", "num_misses": "misses",
    "num_fragmentations": "fragmentations", "mostly_tracked": "mostly_tracked",
    "mostly_lost": "mostly_lost", "num_objects": "gt_boxes", "num_predictions": "predicted_boxes",
    "num_unique_objects": "gt_ids", "num_frames": "frames",
}


def evaluate_mot(ground_truth: Mapping[int, Sequence[MotBox]], hypotheses: Mapping[int, Sequence[MotBox]],
                 *, iou_threshold: float = 0.5, frames: Iterable[int] | None = None) -> dict[str, float | None]:
    """CLEAR-MOT and identity metrics of `hypotheses` against `ground_truth` (both 0-based frames).

    A hypothesis matches a ground-truth box with IoU >= iou_threshold. `frames` are the frame
    indices evaluated (default: every frame in either input). Returns mota, motp (mean 1 - IoU
    of matches), idf1, idp, idr, id_switches, precision, recall, false_positives, misses,
    fragmentations, mostly_tracked, mostly_lost, gt_boxes, predicted_boxes, gt_ids, frames;
    a metric that is undefined (e.g. no ground truth at all) is None.
    """
    import motmetrics as mm

    if not 0 < iou_threshold <= 1:
        raise ValueError(f"evaluate_mot: iou_threshold must be in (0, 1], got {iou_threshold!r}")
    frame_list = sorted(set(ground_truth) | set(hypotheses)) if frames is None else sorted(set(frames))
    acc = mm.MOTAccumulator(auto_id=False)
    for index in frame_list:
        gts = list(ground_truth.get(index, ()))
        hyps = list(hypotheses.get(index, ()))
        g = np.array([m.box for m in gts], dtype=np.float64).reshape(-1, 4)
        h = np.array([m.box for m in hyps], dtype=np.float64).reshape(-1, 4)
        acc.update([m.object_id for m in gts], [m.object_id for m in hyps],
                   _iou_distance(g, h, 1.0 - iou_threshold), frameid=index)
    summary = mm.metrics.create().compute(acc, metrics=list(_METRICS), name="all")
    row = summary.iloc[0]
    result: dict[str, float | None] = {}
    for name, key in _METRICS.items():
        value = float(row[name])
        result[key] = None if math.isnan(value) else value
    return result
