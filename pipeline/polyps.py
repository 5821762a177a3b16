"""A track as the outputs record it, and one polyp's history.

`track_record`: one track on one frame as JSON (frames.jsonl, the viewer's snapshots).
`PolypHistory` / `PolypHistories`: what was seen of each polyp over the run - when, how often,
its newest size estimate and its size over time - gathered from the tracks reported frame by
frame; hagview-annotate writes polyps.json and the report from it, the viewer's track panel
shows it (with `max_rows`, so an hour of live video does not grow it).
"""
from __future__ import annotations

import math
from array import array
from typing import Any, Iterable, Sequence

import numpy as np

from .types import SizeEstimate, TrackReport

HISTORY_KEYS = ("time", "frame_mm", "smoothed_mm", "low_mm", "high_mm")


def rounded(v: float | None, digits: int = 3) -> float | None:
    """A JSON number (None for a missing or non-finite value)."""
    return None if v is None or not math.isfinite(v) else round(float(v), digits)


def track_record(r: TrackReport) -> dict[str, Any]:
    est = r.estimate
    return {"id": r.track_id, "box": [round(float(v), 2) for v in r.box], "score": rounded(r.score, 4),
            "size_mm": rounded(r.frame_size_mm), "smoothed_mm": rounded(est.size_mm) if est else None,
            "low_mm": rounded(est.low_mm) if est else None, "high_mm": rounded(est.high_mm) if est else None,
            "class": est.size_class if est else None, "quality": rounded(r.quality, 4), "missed": r.missed}


class PolypHistory:
    """One polyp, report by report.

    First/last frame and time and `frames_seen` count the frames it was matched on (not the
    ones it coasted through); `frames_sized` the frames with a per-frame size; `estimate` is the
    newest smoothed size. The size history is kept in compact columns (8 bytes a value: an hour
    of video stays a few MB per polyp); with `max_rows` only about the newest `max_rows` rows.
    """

    def __init__(self, track_id: int, max_rows: int | None = None) -> None:
        self.track_id = track_id
        self.max_rows = max_rows
        self.first_frame = self.last_frame = -1
        self.first_time = self.last_time = 0.0
        self.frames_seen = 0
        self.frames_sized = 0
        self.estimate: SizeEstimate | None = None
        self.visible = False          # matched on the newest frame reported
        self.columns = {key: array("d") for key in HISTORY_KEYS}
        self._seen = array("b")
        self.size_points_added = 0     # rows `size_points` shows (changes when it has more)

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, frame_index: int, time_s: float, report: TrackReport) -> None:
        self.visible = report.missed == 0
        if self.visible:
            if self.frames_seen == 0:
                self.first_frame, self.first_time = frame_index, time_s
            self.last_frame, self.last_time = frame_index, time_s
            self.frames_seen += 1
        if report.frame_size_mm is not None:
            self.frames_sized += 1
        est = report.estimate
        if est is not None:
            self.estimate = est
            if self.visible:
                self.size_points_added += 1
        nan = math.nan
        for key, value in (("time", time_s), ("frame_mm", report.frame_size_mm),
                           ("smoothed_mm", est.size_mm if est else None), ("low_mm", est.low_mm if est else None),
                           ("high_mm", est.high_mm if est else None)):
            self.columns[key].append(nan if value is None else value)
        self._seen.append(self.visible)
        if self.max_rows is not None and len(self._seen) >= 2 * self.max_rows:
            drop = len(self._seen) - self.max_rows        # in halves: trimming is a copy
            for column in (*self.columns.values(), self._seen):
                del column[:drop]

    def rows(self, indices: Iterable[int] | None = None) -> list[dict[str, float | None]]:
        """History rows (all, or those at `indices`), a missing value as None."""
        columns = self.columns
        return [{key: (None if math.isnan(columns[key][i]) else columns[key][i]) for key in HISTORY_KEYS}
                for i in (range(len(self)) if indices is None else indices)]

    def size_points(self, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(time, size, low, high) of the newest `limit` rows where it was seen and sized."""
        columns = {key: np.array(self.columns[key], dtype=np.float64) for key in HISTORY_KEYS if key != "frame_mm"}
        keep = (np.array(self._seen, dtype=np.int8) != 0) & ~np.isnan(columns["smoothed_mm"])
        picked = [columns[key][keep] for key in ("time", "smoothed_mm", "low_mm", "high_mm")]
        if limit is not None:
            picked = [values[-limit:] for values in picked]
        return picked[0], picked[1], picked[2], picked[3]


class PolypHistories:
    """Every polyp reported so far by track id (confirmed tracks only)."""

    def __init__(self, max_rows: int | None = None) -> None:
        self.max_rows = max_rows
        self.polyps: dict[int, PolypHistory] = {}

    def add(self, frame_index: int, time_s: float, reports: Sequence[TrackReport]) -> list[tuple[PolypHistory, TrackReport]]:
        """Record one frame's reports; returns (history, report) for each confirmed one. A polyp
        not reported on this frame is no longer visible."""
        added = []
        for report in reports:
            if not report.confirmed:
                continue
            history = self.polyps.get(report.track_id)
            if history is None:
                history = self.polyps[report.track_id] = PolypHistory(report.track_id, self.max_rows)
            history.add(frame_index, time_s, report)
            added.append((history, report))
        reported = {history.track_id for history, _ in added}
        for track_id, history in self.polyps.items():
            if track_id not in reported:
                history.visible = False
        return added

    def clear(self) -> None:
        self.polyps.clear()
