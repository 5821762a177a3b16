"""Multi-object tracker made for polyps in endoscopy video.

Polyp scenes differ from pedestrian scenes: one to three objects, abrupt scope motion (the whole
image swings), and the polyp often leaves the view and comes back seconds later. So:

- Motion: a constant-velocity Kalman filter on the box centre and size whose velocity is damped
  each step, so a track coasting through missed frames slows down instead of flying off.
- Association: Hungarian assignment on 1 - IoU with the predicted box; where the boxes do not
  overlap (a fast swing moved the polyp by more than its own width) a centre-distance gate,
  measured in predicted box diagonals (never less than `min_gate_px`, so a polyp a few pixels
  across survives a pixel of jitter) and guarded by a size ratio, still allows the match.
  Detections are associated in two rounds (ByteTrack's idea): confident ones first, then weak
  ones may only keep existing tracks alive, never start new ones.
- Scene motion: a scope swing moves every polyp at once. The median displacement of the tracks
  matched on a frame moves the predictions of the unmatched ones (they moved with the scene);
  when nothing matched, the displacement under which at least two tracks land on detections
  (`layout_tolerance`) carries them across a jump no motion model predicts.
- Lifecycle: a new track is tentative (provisional negative id) until it has `min_hits` hits;
  a tentative track that misses more than `max_missed_tentative_frames` frames is deleted. A
  confirmed track coasts on its prediction for `max_missed_frames` frames, then waits in a
  re-identification gallery for `reid_window_s` seconds (media time).
- Re-identification, before a new id is spent: when tentative tracks are confirmed they are
  assigned jointly (Hungarian) to the lost and coasting tracks. The relative layout decides
  first: the polyps that left together (a swing) come back together, and a polyp that stayed
  in view tells where one that left must reappear; a new track within `layout_tolerance` box
  diagonals of where the common displacement puts a lost track is that track. Each lost track
  remembers its last box taken while the view was steady and not cut to a sliver, since a box
  caught halfway through a swing or at the view's edge misplaces the polyp. While other new
  tracks are still short of confirmation, a track that nothing identifies yet waits for them
  (up to `min_hits` more frames). Without a layout (a single polyp back) the appearance decides,
  within `reid_threshold`: an HSV colour histogram + a small zero-mean intensity patch (see
  `appearance_embedding`), averaged over good views only (whole, not tiny, off the image
  edge). On the synthetic videos the appearance varies more over time for one polyp than
  between polyps, so it is a tie-breaker, not the main cue. Without images (`image=None`)
  there is no appearance; layout re-identification still works.

Ids are assigned on confirmation (1, 2, 3, ...), so an id is never spent on a false positive.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.boxes import box_iou
from pipeline.errors import ConfigError

from .types import Detection, Frame

log = logging.getLogger(__name__)

_INFEASIBLE = 1e6
# Weight of the colour histogram in the appearance distance; the rest is the intensity patch.
# Colour survives the change of view between an exit and a return better than the patch does.
_COLOUR_WEIGHT = 0.7
# How much a new observation moves a track's stored appearance (exponential moving average).
_APPEARANCE_UPDATE = 0.2
_HIST_BINS = (12, 4)          # hue x saturation
_PATCH_SIZE = 8
_CROP_SIZE = 32
# Centre-gated matches (no overlap) must not change the box size by more than this factor:
# the scope does not zoom by 2x between two frames, but a different polyp easily differs by that.
_MAX_SIZE_RATIO = 2.0
# Between a loss and a return the scope may have come closer or moved away: looser size test.
_MAX_REID_SIZE_RATIO = 3.0
# A match is "steady" (the box is a layout reference) when the centre moved less than this many
# box diagonals per frame and the box is not a sliver (a box cut by the view's edge has its centre
# off the polyp's).
_STEADY_MOTION = 0.5
_MAX_STEADY_ASPECT = 2.5
# A view updates the stored appearance only when the whole polyp is seen at a usable size: a
# sliver at the image edge or a box of a few pixels describes the border or the blur instead.
_MIN_APPEARANCE_SIDE_PX = 12
_EDGE_MARGIN_PX = 2


@dataclass
class Track:
    """One track as the tracker sees it after an update (a snapshot: safe to keep)."""
    id: int                        # >= 1 once confirmed; negative while tentative
    box: tuple[float, float, float, float]   # matched detection box, or the prediction while missed
    score: float                   # score of the last matched detection
    confirmed: bool
    hits: int                      # matched frames so far (carried over on re-identification)
    missed: int                    # updates since the last match (0: matched on this frame)
    age: int                       # updates since the track was created
    first_frame_index: int
    last_frame_index: int          # frame of the last match
    first_seen_time: float
    last_seen_time: float          # media time (s) of the last match
    velocity: tuple[float, float]  # box centre velocity, pixels per frame index
    detection_index: int | None    # index into this update's detections (None: not matched)
    reidentified: bool = False     # True on the update where an old id was given back


def appearance_embedding(image: np.ndarray, box) -> tuple[np.ndarray, np.ndarray] | None:
    """Cheap colour/texture description of the box contents (None when the box is off-image).

    Returns (sqrt of the normalised hue-saturation histogram, unit-norm zero-mean 8x8 intensity
    patch). The square root turns the histogram dot product into the Bhattacharyya coefficient.
    """
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1 = max(x1, 0), max(y1, 0)
    x2, y2 = min(x2, w), min(y2, h)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    crop = cv2.resize(image[y1:y2, x1:x2], (_CROP_SIZE, _CROP_SIZE), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(crop, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, list(_HIST_BINS), [0, 180, 0, 256]).ravel()
    hist = np.sqrt(hist / max(float(hist.sum()), 1e-9)).astype(np.float32)
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    patch = cv2.resize(gray, (_PATCH_SIZE, _PATCH_SIZE), interpolation=cv2.INTER_AREA)
    patch = patch.astype(np.float32).ravel()
    patch -= patch.mean()
    norm = float(np.linalg.norm(patch))
    patch = patch / norm if norm > 1e-6 else np.zeros_like(patch)
    return hist, patch


def appearance_distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """0 (identical) .. 1: Hellinger distance of the colour histograms blended with (1 - NCC)/2."""
    bc = float(np.dot(a[0], b[0])) / max(float(np.linalg.norm(a[0]) * np.linalg.norm(b[0])), 1e-9)
    colour = math.sqrt(max(0.0, 1.0 - min(bc, 1.0)))
    ncc = float(np.dot(a[1], b[1]))
    texture = (1.0 - max(-1.0, min(1.0, ncc))) / 2.0
    return _COLOUR_WEIGHT * colour + (1.0 - _COLOUR_WEIGHT) * texture


def _appearance_distances(a: list, b: list) -> np.ndarray:
    """appearance_distance for every pair of two lists of embeddings (None: NaN), at once.

    The histograms are unit vectors (square roots of distributions, or their renormalised
    average) and the patches unit or zero, so dot products are the whole computation."""
    out = np.full((len(a), len(b)), np.nan)
    ia = [i for i, e in enumerate(a) if e is not None]
    ib = [j for j, e in enumerate(b) if e is not None]
    if not ia or not ib:
        return out
    bc = np.stack([a[i][0] for i in ia]) @ np.stack([b[j][0] for j in ib]).T
    ncc = np.stack([a[i][1] for i in ia]) @ np.stack([b[j][1] for j in ib]).T
    colour = np.sqrt(np.clip(1.0 - np.minimum(bc, 1.0), 0.0, None))
    texture = (1.0 - np.clip(ncc, -1.0, 1.0)) / 2.0
    out[np.ix_(ia, ib)] = _COLOUR_WEIGHT * colour + (1.0 - _COLOUR_WEIGHT) * texture
    return out


class _MotionFilter:
    """Kalman filter, state (cx, cy, w, h, vcx, vcy, vw, vh), velocity damped on every step.

    Noise scales with the box size (as in SORT/DeepSORT) and is set high for velocity, because
    scope motion is jerky: the filter should follow a swing within a frame or two.
    """

    _POS_STD = 1.0 / 10.0      # process noise, fraction of the box size per step
    _VEL_STD = 1.0 / 16.0
    _MEAS_STD = 1.0 / 20.0     # detector jitter, fraction of the box size

    def __init__(self, box: np.ndarray, damping: float):
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        w, h = box[2] - box[0], box[3] - box[1]
        self.x = np.array([cx, cy, w, h, 0, 0, 0, 0], dtype=np.float64)
        s = max(w, h)
        self.P = np.diag(np.square([s / 10, s / 10, s / 10, s / 10, s / 2, s / 2, s / 10, s / 10]))
        self.damping = damping

    _H = np.eye(4, 8)
    _I8 = np.eye(8)

    def predict(self, steps: int) -> None:
        F = self._I8.copy()
        F[:4, 4:] = self._I8[:4, :4]
        F[4:, 4:] *= self.damping
        # Past a few dozen steps the damped velocity is gone and only the growing uncertainty
        # matters, which the capped loop already gives; this bounds the cost after long gaps.
        for _ in range(min(max(1, steps), 60)):
            s = max(self.x[2], self.x[3], 1.0)
            Q = np.diag(np.square([s * self._POS_STD] * 4 + [s * self._VEL_STD] * 4))
            self.x = F @ self.x
            self.P = F @ self.P @ F.T + Q
        self.x[2] = max(self.x[2], 1.0)
        self.x[3] = max(self.x[3], 1.0)

    def update(self, box: np.ndarray) -> None:
        z = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]])
        s = max(z[2], z[3], 1.0)
        R = np.diag(np.square([s * self._MEAS_STD] * 4))
        H = self._H
        S = H @ self.P @ H.T + R
        K = self.P @ H.T @ np.linalg.inv(S)
        self.x = self.x + K @ (z - H @ self.x)
        self.P = (self._I8 - K @ H) @ self.P
        self.x[2] = max(self.x[2], 1.0)
        self.x[3] = max(self.x[3], 1.0)

    @property
    def box(self) -> np.ndarray:
        cx, cy, w, h = self.x[:4]
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


class _TrackState:
    def __init__(self, provisional_id: int, box: np.ndarray, score: float, frame_index: int,
                 time_s: float, damping: float, appearance):
        self.id = provisional_id
        self.motion = _MotionFilter(box, damping)
        self.box = box
        self.score = score
        self.confirmed = False
        self.hits = 1
        self.missed = 0
        self.age = 1
        self.first_frame_index = self.last_frame_index = self.predicted_frame_index = frame_index
        self.first_seen_time = self.last_seen_time = time_s
        self.appearance = appearance
        self.detection_index: int | None = None
        self.reidentified = False
        # Where the other confirmed tracks were (id -> last matched box) when this one was lost:
        # the relative layout that re-identifies it when it comes back.
        self.layout_at_loss: dict[int, np.ndarray] = {}
        # The last box matched while the view was steady: a box caught halfway through a swing
        # would put the polyp where the scope happened to point, not where it sits in the scene.
        self.steady_box = box

    def predicted_box(self) -> np.ndarray:
        return self.motion.box

    def absorb_appearance(self, appearance) -> None:
        if appearance is None:
            return
        if self.appearance is None:
            self.appearance = appearance
            return
        hist = (1 - _APPEARANCE_UPDATE) * self.appearance[0] + _APPEARANCE_UPDATE * appearance[0]
        patch = (1 - _APPEARANCE_UPDATE) * self.appearance[1] + _APPEARANCE_UPDATE * appearance[1]
        hist /= max(float(np.linalg.norm(hist)), 1e-9)
        n = float(np.linalg.norm(patch))
        self.appearance = (hist, patch / n if n > 1e-6 else patch)

    def snapshot(self) -> Track:
        box = self.box if self.missed == 0 else self.predicted_box()
        return Track(
            id=self.id, box=tuple(float(v) for v in box), score=self.score, confirmed=self.confirmed,
            hits=self.hits, missed=self.missed, age=self.age,
            first_frame_index=self.first_frame_index, last_frame_index=self.last_frame_index,
            first_seen_time=self.first_seen_time, last_seen_time=self.last_seen_time,
            velocity=(float(self.motion.x[4]), float(self.motion.x[5])),
            detection_index=self.detection_index, reidentified=self.reidentified)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(f"Tracker: {message}")


class Tracker:
    """`tracker.update(detections, frame_index, time_s, image) -> list[Track]`, once per frame.

    Parameters (media time in seconds, distances in pixels of the frame):
        min_hits: matched frames before a track is confirmed and gets an id.
        max_missed_frames: updates a confirmed track coasts on its prediction before it is lost.
        max_missed_tentative_frames: updates a tentative track may miss before it is deleted.
        iou_threshold: least IoU between a predicted box and a detection for an overlap match.
        centre_gate: for boxes that do not overlap enough, the largest centre distance (in
            diagonals of the predicted box) still accepted as the same polyp; 0 disables it.
        min_gate_px: the least box diagonal the gates use, so a polyp a few pixels across
            (far away, or a sliver at the view's edge) is not lost to a pixel of jitter.
        min_score: detections below this are ignored.
        new_track_min_score: only detections at or above this start tracks or take part in the
            first association round; weaker ones (>= min_score) only keep tracks alive.
        reid_window_s: how long (media seconds since last seen) a lost track can be re-identified.
        reid_threshold: largest appearance distance (0..1) accepted as the same polyp when the
            appearance alone decides (one polyp back, nothing to compare its position with).
        layout_tolerance: re-identification and swing recovery by the relative layout: a track
            is matched where the common displacement of the scene (agreed by at least two
            polyps) puts it, within this many box diagonals; 0 disables it.
        appearance_weight: weight of the appearance distance added to the association cost, to
            keep ids apart when two polyps are close.
        velocity_damping: factor (0..1] applied to the predicted velocity on every step.
    """

    def __init__(self, *, min_hits: int = 3, max_missed_frames: int = 15,
                 max_missed_tentative_frames: int = 1, iou_threshold: float = 0.2,
                 centre_gate: float = 1.0, min_gate_px: float = 16.0, min_score: float = 0.1,
                 new_track_min_score: float = 0.4, reid_window_s: float = 10.0,
                 reid_threshold: float = 0.2, layout_tolerance: float = 2.0,
                 appearance_weight: float = 0.5, velocity_damping: float = 0.85):
        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
                and math.isfinite(float(v))

        _check(is_int(min_hits) and min_hits >= 1, f"min_hits must be an integer >= 1, got {min_hits!r}")
        _check(is_int(max_missed_frames) and max_missed_frames >= 0,
               f"max_missed_frames must be an integer >= 0, got {max_missed_frames!r}")
        _check(is_int(max_missed_tentative_frames) and max_missed_tentative_frames >= 0,
               f"max_missed_tentative_frames must be an integer >= 0, got {max_missed_tentative_frames!r}")
        _check(is_num(iou_threshold) and 0 < iou_threshold <= 1,
               f"iou_threshold must be a number in (0, 1], got {iou_threshold!r}")
        _check(is_num(centre_gate) and centre_gate >= 0,
               f"centre_gate must be a number >= 0 (box diagonals; 0 disables it), got {centre_gate!r}")
        _check(is_num(min_gate_px) and min_gate_px >= 0,
               f"min_gate_px must be a number of pixels >= 0, got {min_gate_px!r}")
        _check(is_num(min_score) and 0 <= min_score <= 1, f"min_score must be a number in [0, 1], got {min_score!r}")
        _check(is_num(new_track_min_score) and min_score <= new_track_min_score <= 1,
               f"new_track_min_score must be a number in [min_score={min_score}, 1], got {new_track_min_score!r}")
        _check(is_num(reid_window_s) and reid_window_s >= 0,
               f"reid_window_s must be a number of seconds >= 0 (0 disables re-identification), got {reid_window_s!r}")
        _check(is_num(reid_threshold) and 0 <= reid_threshold <= 1,
               f"reid_threshold must be an appearance distance in [0, 1], got {reid_threshold!r}")
        _check(is_num(layout_tolerance) and layout_tolerance >= 0,
               f"layout_tolerance must be a number >= 0 (box diagonals; 0 disables it), got {layout_tolerance!r}")
        _check(is_num(appearance_weight) and appearance_weight >= 0,
               f"appearance_weight must be a number >= 0, got {appearance_weight!r}")
        _check(is_num(velocity_damping) and 0 < velocity_damping <= 1,
               f"velocity_damping must be a number in (0, 1], got {velocity_damping!r}")
        self.min_hits = int(min_hits)
        self.max_missed_frames = int(max_missed_frames)
        self.max_missed_tentative_frames = int(max_missed_tentative_frames)
        self.iou_threshold = float(iou_threshold)
        self.centre_gate = float(centre_gate)
        self.min_gate_px = float(min_gate_px)
        self.min_score = float(min_score)
        self.new_track_min_score = float(new_track_min_score)
        self.reid_window_s = float(reid_window_s)
        self.reid_threshold = float(reid_threshold)
        self.layout_tolerance = float(layout_tolerance)
        self.appearance_weight = float(appearance_weight)
        self.velocity_damping = float(velocity_damping)

        self._active: list[_TrackState] = []     # tentative, matched and coasting tracks
        self._gallery: list[_TrackState] = []    # lost confirmed tracks waiting for re-identification
        self._next_id = 1
        self._next_provisional = -1
        self._last_frame_index: int | None = None
        self._warned_bad_box = False

    @property
    def remembered_ids(self) -> frozenset[int]:
        """Confirmed ids that may still appear (active or waiting for re-identification).

        Per-track state kept elsewhere (e.g. size smoothers) may be dropped for any other id.
        """
        return frozenset(t.id for t in self._active + self._gallery if t.confirmed)

    # -- the one verb ------------------------------------------------------------------------
    def update(self, detections: list[Detection], frame_index: int | Frame, time_s: float | None = None,
               image: np.ndarray | None = None) -> list[Track]:
        """Associate this frame's detections; return the active tracks (tentative and coasting
        ones included: filter on `confirmed` and `missed == 0` for what was seen on this frame).

        `frame_index` must increase from call to call (frames may be skipped); after a seek
        start a new Tracker. `time_s` is media time. `image` (RGB uint8 HxWx3) enables appearance
        re-identification. A `pipeline.types.Frame` may be passed instead of the index: its
        index, pts and image are used (`update(detections, frame)`).
        """
        if isinstance(frame_index, Frame):
            frame = frame_index
            frame_index, time_s = frame.index, frame.pts if time_s is None else time_s
            image = frame.image if image is None else image
        if time_s is None:
            raise ValueError("Tracker.update: time_s (media time in seconds) is required with a frame index")
        if self._last_frame_index is not None and frame_index <= self._last_frame_index:
            raise ValueError(f"Tracker.update: frame_index {frame_index} is not after the previous "
                             f"frame {self._last_frame_index} (start a new Tracker after a seek)")
        time_s = float(time_s)
        if not math.isfinite(time_s):
            raise ValueError(f"Tracker.update: time_s must be finite, got {time_s!r}")
        if image is not None and (image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8):
            raise ValueError(f"Tracker.update: image must be RGB uint8 HxWx3, got {image.dtype} {image.shape}")
        self._last_frame_index = frame_index

        det_index, boxes, scores = self._valid_detections(detections)
        appearances = [self._appearance(image, b) for b in boxes] if image is not None else [None] * len(boxes)

        for t in self._active:
            t.motion.predict(frame_index - t.predicted_frame_index)
            t.predicted_frame_index = frame_index
            t.detection_index = None
            t.reidentified = False
            t.age += 1

        strong = [i for i in range(len(boxes)) if scores[i] >= self.new_track_min_score]
        weak = [i for i in range(len(boxes)) if scores[i] < self.new_track_min_score]
        unmatched_tracks = list(range(len(self._active)))
        residuals: list[np.ndarray] = []       # detection centre - predicted centre, per match
        unmatched_strong: list[int] = []
        for round_dets in (strong, weak):
            pairs, leftover = self._associate(unmatched_tracks, round_dets, boxes, appearances)
            pairs += self._associate_after_scene_motion(unmatched_tracks, pairs, leftover, boxes, appearances,
                                                        residuals)
            matched_now = {ti for ti, _ in pairs}
            for ti, di in pairs:
                t = self._active[ti]
                pred = t.predicted_box()
                residuals.append((boxes[di][:2] + boxes[di][2:]) / 2 - (pred[:2] + pred[2:]) / 2)
                self._apply_match(t, boxes[di], scores[di], appearances[di], det_index[di], frame_index, time_s)
            unmatched_tracks = [ti for ti in unmatched_tracks if ti not in matched_now]
            matched_dets = {di for _, di in pairs}
            if round_dets is strong:
                unmatched_strong = [di for di in strong if di not in matched_dets]

        # The scene moved by the matched tracks' common displacement: the unmatched ones (out
        # of view, occluded) moved with it, so their predictions follow.
        if residuals:
            scene_shift = np.median(np.stack(residuals), axis=0)
            for ti in unmatched_tracks:
                self._active[ti].motion.x[:2] += scene_shift

        for ti in unmatched_tracks:
            t = self._active[ti]
            t.missed += 1
            if t.confirmed and t.missed == 1:
                t.layout_at_loss = {o.id: o.steady_box for o in self._active
                                    if o is not t and o.confirmed and o.missed <= 1}

        for di in unmatched_strong:
            t = _TrackState(self._next_provisional, boxes[di], scores[di], frame_index, time_s,
                            self.velocity_damping, appearances[di])
            self._next_provisional -= 1
            t.detection_index = det_index[di]
            self._active.append(t)

        # Confirm after the new tracks exist so a coasting track can hand its id over at once.
        confirming = [t for t in self._active if not t.confirmed and t.hits >= self.min_hits]
        if confirming:
            self._confirm(confirming, time_s)

        kept: list[_TrackState] = []
        for t in self._active:
            if t.confirmed and t.missed > self.max_missed_frames:
                if self.reid_window_s > 0:
                    self._gallery.append(t)
            elif not t.confirmed and t.missed > self.max_missed_tentative_frames:
                pass
            else:
                kept.append(t)
        self._active = kept
        self._gallery = [t for t in self._gallery if time_s - t.last_seen_time <= self.reid_window_s]
        return sorted((t.snapshot() for t in self._active), key=lambda s: (not s.confirmed, abs(s.id)))

    # -- internals ----------------------------------------------------------------------------
    def _valid_detections(self, detections):
        det_index, boxes, scores = [], [], []
        for i, d in enumerate(detections):
            box = np.asarray(d.box, dtype=np.float64)
            score = float(d.score)
            if box.shape != (4,) or not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1] \
                    or not math.isfinite(score):
                if not self._warned_bad_box:
                    log.warning("Tracker: ignoring invalid detection %r (boxes are finite x1<x2, y1<y2)", d)
                    self._warned_bad_box = True
                continue
            if score < self.min_score:
                continue
            det_index.append(i)
            boxes.append(box)
            scores.append(score)
        return det_index, boxes, scores

    @staticmethod
    def _appearance(image: np.ndarray, box: np.ndarray):
        """The box's appearance when it is a good view (whole, not tiny), else None."""
        h, w = image.shape[:2]
        if min(box[2] - box[0], box[3] - box[1]) < _MIN_APPEARANCE_SIDE_PX \
                or box[0] < _EDGE_MARGIN_PX or box[1] < _EDGE_MARGIN_PX \
                or box[2] > w - _EDGE_MARGIN_PX or box[3] > h - _EDGE_MARGIN_PX:
            return None
        return appearance_embedding(image, box)

    def _gate_scale(self, boxes: np.ndarray) -> np.ndarray:
        """Box diagonals, floored at min_gate_px."""
        return np.maximum(np.hypot(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]), max(self.min_gate_px, 1e-9))

    def _associate(self, track_ids: list[int], det_ids: list[int], boxes, appearances,
                   shift: np.ndarray | None = None):
        """Hungarian assignment on the gated cost; returns matched (track, det) pairs and the
        unmatched detection ids. `shift` moves every prediction (the scene's displacement)."""
        if not track_ids or not det_ids:
            return [], list(det_ids)
        pred = np.stack([self._active[ti].predicted_box() for ti in track_ids])
        if shift is not None:
            pred = pred + np.concatenate([shift, shift])
        dets = np.stack([boxes[di] for di in det_ids])
        iou = box_iou(pred, dets)
        cost = np.full(iou.shape, _INFEASIBLE)
        pc = (pred[:, :2] + pred[:, 2:]) / 2
        dc = (dets[:, :2] + dets[:, 2:]) / 2
        centre_dist = np.linalg.norm(pc[:, None, :] - dc[None, :, :], axis=2) / self._gate_scale(pred)[:, None]
        pred_size = np.sqrt((pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1]))
        det_size = np.sqrt((dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1]))
        size_ratio = np.maximum(pred_size[:, None] / det_size[None, :], det_size[None, :] / pred_size[:, None])
        overlap = iou >= self.iou_threshold
        cost[overlap] = 1.0 - iou[overlap]
        if self.centre_gate > 0:
            # Ranked after every overlap match: 1 + distance in diagonals.
            near = ~overlap & (centre_dist <= self.centre_gate) & (size_ratio <= _MAX_SIZE_RATIO)
            cost[near] = 1.0 + centre_dist[near]
        dist = _appearance_distances([self._active[ti].appearance for ti in track_ids],
                                     [appearances[di] for di in det_ids])
        cost = np.where((cost < _INFEASIBLE) & ~np.isnan(dist), cost + self.appearance_weight * dist, cost)
        rows, cols = linear_sum_assignment(cost)
        pairs = [(track_ids[r], det_ids[c]) for r, c in zip(rows, cols) if cost[r, c] < _INFEASIBLE]
        matched_dets = {d for _, d in pairs}
        return pairs, [di for di in det_ids if di not in matched_dets]

    def _associate_after_scene_motion(self, track_ids, pairs, det_ids, boxes, appearances, residuals):
        """Second chance for the tracks and detections left over: a scope swing moves every
        polyp by the same displacement, further than the motion model expects. The displacement
        comes from the tracks already matched on this frame, or, when none matched, from the
        layout itself: the shift under which at least two tracks land on detections."""
        matched = {ti for ti, _ in pairs}
        left = [ti for ti in track_ids if ti not in matched]
        if not left or not det_ids:
            return []
        known = list(residuals)
        for ti, di in pairs:
            pred = self._active[ti].predicted_box()
            known.append((boxes[di][:2] + boxes[di][2:]) / 2 - (pred[:2] + pred[2:]) / 2)
        if known:
            shift = np.median(np.stack(known), axis=0)
        elif self.layout_tolerance > 0 and len(left) >= 2 and len(det_ids) >= 2:
            pred = np.stack([self._active[ti].predicted_box() for ti in left])
            shift, inliers, _ = self._layout_shift(pred, np.stack([boxes[di] for di in det_ids]), [],
                                                   _MAX_SIZE_RATIO)
            if inliers < 2:
                return []
        else:
            return []
        more, _ = self._associate(left, det_ids, boxes, appearances, shift=shift)
        return more

    def _layout_shift(self, before: np.ndarray, after: np.ndarray, anchors: list[tuple[np.ndarray, np.ndarray]],
                      max_size_ratio: float):
        """The common displacement that best carries boxes `before` (N,4) onto boxes `after`
        (M,4), helped by `anchors` (pairs whose correspondence is known).

        Every pair proposes a displacement; the one that lands most boxes within
        layout_tolerance diagonals of a partner wins (ties: smaller residuals). Returns
        (shift, inliers, residual (N,M) in tolerances, inf where the sizes disagree).
        """
        bc = (before[:, :2] + before[:, 2:]) / 2
        ac = (after[:, :2] + after[:, 2:]) / 2
        size_b = np.sqrt((before[:, 2] - before[:, 0]) * (before[:, 3] - before[:, 1]))
        size_a = np.sqrt((after[:, 2] - after[:, 0]) * (after[:, 3] - after[:, 1]))
        ratio = np.maximum(size_b[:, None] / size_a[None, :], size_a[None, :] / size_b[:, None])
        tol = self.layout_tolerance * np.maximum(self._gate_scale(before)[:, None], self._gate_scale(after)[None, :])
        proposals = (ac[None, :, :] - bc[:, None, :])[ratio <= max_size_ratio]
        if anchors:
            a_before = np.stack([a for a, _ in anchors])
            a_after = np.stack([b for _, b in anchors])
            a_bc = (a_before[:, :2] + a_before[:, 2:]) / 2
            a_ac = (a_after[:, :2] + a_after[:, 2:]) / 2
            a_tol = self.layout_tolerance * np.maximum(self._gate_scale(a_before), self._gate_scale(a_after))
            proposals = np.concatenate([proposals, a_ac - a_bc])
        if len(proposals) == 0:
            return np.zeros(2), 0, np.full(ratio.shape, np.inf)
        # residual[h, i, j]: how far box j is from box i moved by proposal h, in tolerances
        offset = ac[None, None, :, :] - bc[None, :, None, :] - proposals[:, None, None, :]
        residual = np.linalg.norm(offset, axis=3) / tol[None]
        residual[:, ratio > max_size_ratio] = np.inf
        close = residual <= 1.0
        inliers = np.minimum(close.any(axis=2).sum(axis=1), close.any(axis=1).sum(axis=1))
        spread = np.minimum(residual, 1.0).min(axis=2).sum(axis=1)
        if anchors:
            a_res = np.linalg.norm(a_ac[None] - a_bc[None] - proposals[:, None, :], axis=2) / a_tol[None]
            inliers = inliers + (a_res <= 1.0).sum(axis=1)
            spread = spread + np.minimum(a_res, 1.0).sum(axis=1)
        best = int(np.lexsort((spread, -inliers))[0])
        return proposals[best], int(inliers[best]), residual[best]

    def _apply_match(self, t: _TrackState, box, score, appearance, det_index, frame_index, time_s):
        step = np.hypot(*((box[:2] + box[2:]) / 2 - (t.box[:2] + t.box[2:]) / 2))
        w, h = box[2] - box[0], box[3] - box[1]
        if step <= _STEADY_MOTION * self._gate_scale(box[None])[0] * max(1, frame_index - t.last_frame_index) \
                and max(w, h) <= _MAX_STEADY_ASPECT * min(w, h):
            t.steady_box = box
        t.motion.update(box)
        t.box = box
        t.score = score
        t.hits += 1
        t.missed = 0
        t.last_frame_index = frame_index
        t.last_seen_time = time_s
        t.detection_index = det_index
        t.absorb_appearance(appearance)

    def _confirm(self, confirming: list[_TrackState], time_s: float) -> None:
        """Confirm tracks; each takes back the id of the lost track it re-identifies, if any.

        Re-identification is one assignment over every track seen on this frame that has no id
        yet (not only those confirming now), so two polyps returning together cannot both claim
        the nearer lost id.
        """
        links, undecided = self._reidentify(time_s)
        for t in confirming:
            old = links.get(t)
            if old is None and undecided and t.hits < 2 * self.min_hits:
                # Lost polyps and other new tracks: those may be the layout that tells which
                # lost polyp this is once they are confirmed too; wait for them a little.
                continue
            t.confirmed = True
            if old is None:
                t.id = self._next_id
                self._next_id += 1
                continue
            t.id = old.id
            t.hits += old.hits
            t.age += old.age
            t.first_frame_index = old.first_frame_index
            t.first_seen_time = old.first_seen_time
            t.reidentified = True
            if t.appearance is None:
                t.appearance = old.appearance
            if old in self._gallery:
                self._gallery.remove(old)
            else:
                self._active.remove(old)

    def _reidentify(self, time_s: float) -> tuple[dict[_TrackState, _TrackState], bool]:
        """New (tentative, seen now) track -> the lost confirmed track it is; and whether
        other new tracks, still short of min_hits, may yet decide it (a layout in the making).

        With a layout (at least two polyps agree on where the scene moved since the loss,
        counting polyps that stayed in view or were already re-identified) a new track is the
        lost one its position fits within layout_tolerance; appearance breaks ties. Without
        one (a single polyp came back), the appearance alone decides, within reid_threshold.
        """
        if self.reid_window_s <= 0:
            return {}, False
        new = [t for t in self._active if not t.confirmed and t.missed == 0]
        lost = [c for c in self._gallery + self._active
                if c.confirmed and c.missed > 0 and time_s - c.last_seen_time <= self.reid_window_s]
        if not new or not lost:
            return {}, False
        undecided = self.layout_tolerance > 0 and any(t.hits < self.min_hits for t in new)
        seen_now = {t.id: t.box for t in self._active if t.confirmed and t.missed == 0}
        anchors = [(box, seen_now[i]) for c in lost for i, box in c.layout_at_loss.items() if i in seen_now]
        residual = np.full((len(new), len(lost)), np.inf)
        inliers = 0
        if self.layout_tolerance > 0:
            _, inliers, residual = self._layout_shift(np.stack([c.steady_box for c in lost]),
                                                      np.stack([t.box for t in new]), anchors,
                                                      _MAX_REID_SIZE_RATIO)
            residual = residual.T
        dist = _appearance_distances([t.appearance for t in new], [c.appearance for c in lost])
        known = ~np.isnan(dist)
        cost = np.full((len(new), len(lost)), _INFEASIBLE)
        by_look = known & (dist <= self.reid_threshold)
        cost[by_look] = 1.0 + self.appearance_weight + dist[by_look]
        if inliers >= 2:
            by_layout = residual <= 1.0
            cost[by_layout] = residual[by_layout] + self.appearance_weight * np.where(known, dist, 0.0)[by_layout]
        rows, cols = linear_sum_assignment(cost)
        return {new[r]: lost[c] for r, c in zip(rows, cols) if cost[r, c] < _INFEASIBLE}, undecided
