"""Sizes a pipeline run showed, against ground truth (a synthetic `<name>.gt.json`): what a
clinician reads (`pipeline.size_metrics`) per frame and per polyp, and the time from a polyp's
first visible frame to the first size shown for it. Used by hagview-annotate's report.

A track matches the ground-truth box it overlaps most on a frame (IoU >= 0.5). Per frame: the
sizer's output on that frame against the matched polyp's diameter. Per polyp: the final
smoothed size of the track that covered most of the polyp's frames.
"""
from __future__ import annotations

import numpy as np

from .boxes import box_iou
from .size_metrics import clinician_report

MATCH_IOU = 0.5


class TruthAccuracy:
    def __init__(self, truth) -> None:
        """truth: a `pipeline.mot.GroundTruthVideo` (frames: index -> boxes, diameters_mm, fps)."""
        self.truth = truth
        self.frame_pairs: list[tuple[float, float]] = []
        self.votes: dict[int, dict[int, int]] = {}       # track -> polyp -> frames matched
        self.last_size: dict[int, float] = {}            # track -> latest smoothed size
        self.first_sized: dict[int, float] = {}          # polyp -> first time a matched track showed a size
        self.first_visible: dict[int, float] = {}
        for index in sorted(truth.frames):
            for g in truth.frames[index]:
                self.first_visible.setdefault(g.polyp_id, index / truth.fps)

    def add(self, index: int, pts: float, tracks) -> None:
        """One analysed frame's TrackReports."""
        boxes = self.truth.frames.get(index, [])
        for t in tracks:
            if t.missed != 0 or not boxes:
                continue
            ious = box_iou([g.box for g in boxes], [t.box])[:, 0]
            if ious.max() < MATCH_IOU:
                continue
            polyp = boxes[int(ious.argmax())].polyp_id
            votes = self.votes.setdefault(t.track_id, {})
            votes[polyp] = votes.get(polyp, 0) + 1
            if t.frame_size_mm is not None:
                self.frame_pairs.append((float(t.frame_size_mm), self.truth.diameters_mm[polyp]))
            if t.estimate is not None:
                self.last_size[t.track_id] = float(t.estimate.size_mm)
                self.first_sized.setdefault(polyp, pts)

    def polyp_pairs(self) -> list[tuple[float, float]]:
        pairs = []
        for polyp in sorted(self.first_visible):
            covering = {tid: v[polyp] for tid, v in self.votes.items() if v.get(polyp) and tid in self.last_size}
            if covering:
                best = max(covering, key=covering.get)
                pairs.append((self.last_size[best], self.truth.diameters_mm[polyp]))
        return pairs

    def report(self) -> dict:
        """`clinician_report` plus the (predicted, true) pairs for Bland-Altman plots."""
        frames, polyps = np.array(self.frame_pairs).reshape(-1, 2), np.array(self.polyp_pairs()).reshape(-1, 2)
        out = clinician_report(frames[:, 0], frames[:, 1], polyps[:, 0], polyps[:, 1],
                               first_visible_s=self.first_visible, first_sized_s=self.first_sized)
        out["pairs"] = {"per_frame": frames.tolist(), "per_polyp": polyps.tolist()}
        return out
