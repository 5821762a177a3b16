"""The analysis stages: preprocess -> detect -> track -> size -> smooth.

Each stage is one object that owns its state and has `process(work) -> work` and
`reset(generation)`. In the live graph every stage runs on its own thread, so a stage touches
only its own state and the work item: what a later stage needs from an earlier one (the FOV
mask, the tracks, the ids the tracker still remembers) travels on the `Work`. `reset` runs while
the graph holds every stage idle (`StageGraph.flush`), so it never races `process`.

`Analysis` is the set of stages of one stream (and what the offline runner groups onto threads).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError

from .calibration import capped_note, interval_for, uncalibrated_note
from .config import RunConfig, section_kwargs
from .fov import BorderWatch, estimate_fov_mask
from .graph import Stage, chain
from .quality import QualityAssessor
from .sizing import CONCURRENT_BACKENDS, TrackSizingStage
from .smoothing import TrackSizer, size_range
from .tracker import Tracker
from .types import Detection, Frame, TrackReport
from .work import Work

log = logging.getLogger(__name__)

GROUND_TRUTH_BOXES = "ground-truth"    # boxes= value: use the source's own ground truth (demo)

STAGE_NAMES = ("preprocess", "detect", "track", "size", "smooth")


class BoxProvider:
    """Detections from a file (synthetic ground-truth JSON or MOTChallenge text) or from the
    source's own ground truth: tracking and sizing on given boxes (the paper's setting)."""

    def __init__(self, spec: str | Path, period: int | None = None) -> None:
        self.spec = str(spec)
        self.period = period       # the boxes repeat every `period` frames (a looped recording)
        self.frames = None
        if self.spec != GROUND_TRUTH_BOXES:
            from .mot import read_boxes
            self.frames = read_boxes(spec)
            if not self.frames:
                log.warning("%s: no boxes in the file", spec)

    def detections(self, frame: Frame) -> list[Detection]:
        if self.frames is None:
            return [Detection(box=tuple(g.box), score=1.0) for g in (frame.ground_truth or [])]
        index = frame.index % self.period if self.period else frame.index
        return [Detection(box=tuple(m.box), score=float(m.score)) for m in self.frames.get(index, ())]


class AnalysisStage:
    """What every stage shares: its name and the stream generation it works on. Work of an
    older generation (queued before a seek) or not to be analysed passes through untouched."""

    name = ""

    def __init__(self) -> None:
        self.generation = 0

    def skip(self, work: Work) -> bool:
        return not work.analyse or work.generation != self.generation

    def reset(self, generation: int | None = None) -> None:
        if generation is not None:
            self.generation = generation

    def process(self, work: Work) -> Work:
        raise NotImplementedError


class PreprocessStage(AnalysisStage):
    """The FOV mask, handed to the later stages on the work item. Estimated again on a scene
    change: when the border region of the picture changes (`scene_watch`, pipeline.fov.BorderWatch:
    another scope or input, a blank frame), the frame size changes, after a reset, and at the
    latest every `refresh_frames` analysed frames."""

    name = "preprocess"

    def __init__(self, fov_masking: bool, refresh_frames: int, scene_watch: bool = True) -> None:
        super().__init__()
        self.fov_masking = fov_masking
        self.refresh_frames = refresh_frames
        self._mask: np.ndarray | None = None
        self._age = 0
        self._watch = BorderWatch() if scene_watch else None
        self.estimates = 0

    def reset(self, generation: int | None = None) -> None:
        super().reset(generation)
        self._mask, self._age = None, 0

    def process(self, work: Work) -> Work:
        if self.skip(work) or not self.fov_masking:
            return work
        image = work.frame.image
        watch = self._watch
        if self._mask is None or self._mask.shape != image.shape[:2] or self._age >= self.refresh_frames \
                or (watch is not None and watch.changed(image)):
            self._mask, self._age = estimate_fov_mask(image), 0
            if watch is not None:
                watch.reset(image, self._mask)
            self.estimates += 1
        self._age += 1
        work.fov_mask = self._mask
        return work


class DetectStage(AnalysisStage):
    """Boxes from the detector (or given boxes) at or above `score_threshold`, best first.

    `score_threshold` is a control the viewer sets from its thread: one float, read once per frame."""

    name = "detect"

    def __init__(self, detector, boxes: BoxProvider | None, score_threshold: float, max_detections: int) -> None:
        super().__init__()
        self.detector = detector
        self.boxes = boxes
        self.score_threshold = score_threshold
        self.max_detections = max_detections

    def process(self, work: Work) -> Work:
        if self.skip(work):
            return work
        if self.boxes is not None:
            found = self.boxes.detections(work.frame)
        else:
            found = self.detector.detect(work.frame.image, work.fov_mask)
        threshold = self.score_threshold
        found = [d for d in found if d.score >= threshold]
        found.sort(key=lambda d: -d.score)
        work.detections = found[:self.max_detections]
        return work

    @property
    def workers_allowed(self) -> bool:
        """Whether several frames may be detected at once (TensorRT contexts are single-stream)."""
        return self.detector is not None and getattr(self.detector.engine, "name", "") in CONCURRENT_BACKENDS


class TrackStage(AnalysisStage):
    """The tracker. Puts the tracks and the ids it still remembers on the work item."""

    name = "track"

    def __init__(self, track_config) -> None:
        super().__init__()
        self._kwargs = section_kwargs(track_config)
        self.tracker = Tracker(**self._kwargs)

    def reset(self, generation: int | None = None) -> None:
        super().reset(generation)
        self.tracker = Tracker(**self._kwargs)

    def process(self, work: Work) -> Work:
        if self.skip(work):
            return work
        frame = work.frame
        work.tracks = self.tracker.update(work.detections, frame.index, frame.pts, frame.image)
        work.remembered_ids = self.tracker.remembered_ids
        return work


class SizeStage(AnalysisStage):
    """The sizer on the confirmed tracks seen on this frame (its scheduler decides which)."""

    name = "size"

    def __init__(self, sizer: TrackSizingStage | None) -> None:
        super().__init__()
        self.sizer = sizer

    def reset(self, generation: int | None = None) -> None:
        super().reset(generation)
        if self.sizer is not None:
            self.sizer.reset()

    def process(self, work: Work) -> Work:
        if self.skip(work) or self.sizer is None:
            return work
        if work.remembered_ids is not None:
            self.sizer.forget(work.remembered_ids)
        seen = [(t.id, t.box) for t in work.tracks if t.confirmed and t.missed == 0]
        if seen:
            work.frame_sizes = self.sizer.size(work.frame.image, seen, work.frame.index, work.fov_mask)
        return work


class SmoothStage(AnalysisStage):
    """Quality per box, the smoothed size per track, and the track reports of the frame."""

    name = "smooth"

    def __init__(self, quality: QualityAssessor, smooth_config, interval=None,
                 diminutive_max_mm: float | None = None, clamp_mm: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.quality = quality
        self._kwargs = section_kwargs(smooth_config)
        if diminutive_max_mm is not None:    # the sizer bundle's decision threshold
            self._kwargs["diminutive_max_mm"] = float(diminutive_max_mm)
        if clamp_mm is not None:             # the sizer bundle's size range
            self._kwargs["clamp_mm"] = size_range(clamp_mm)
        self._interval = interval
        self.smoothers = TrackSizer(interval, **self._kwargs)

    def reset(self, generation: int | None = None) -> None:
        super().reset(generation)
        self.smoothers = TrackSizer(self._interval, **self._kwargs)

    def process(self, work: Work) -> Work:
        if self.skip(work):
            if work.generation == self.generation:
                work.reports = None     # not analysed: the output uses the newest overlay
            return work
        confirmed = [t for t in work.tracks if t.confirmed]
        seen = [t for t in confirmed if t.missed == 0]
        quality = {}
        if seen:
            q = self.quality.assess(work.frame.image, [t.box for t in seen], [t.score for t in seen], work.fov_mask)
            quality = {t.id: (float(q.image_quality[i]), float(q.combined[i])) for i, t in enumerate(seen)}
        reports = []
        for t in confirmed:
            size_mm = work.frame_sizes.get(t.id)
            image_quality, combined = quality.get(t.id, (0.0, 0.0))
            if size_mm is not None:
                estimate = self.smoothers.add(t.id, size_mm, confidence=t.score, quality=image_quality)
            else:
                estimate = self.smoothers.estimate(t.id)
            reports.append(TrackReport(track_id=t.id, box=t.box, score=t.score, confirmed=True,
                                       frame_size_mm=size_mm, estimate=estimate, quality=combined,
                                       missed=t.missed))
        if work.remembered_ids is not None:
            self.smoothers.retain(work.remembered_ids)
        work.reports = reports
        return work


class Analysis:
    """The stages of one stream: preprocess, detect, track, size and smooth.

    `detector`: an object with `detect(image, fov_mask) -> list[Detection]` (pipeline.detecting),
    or None when `boxes` gives them. `sizer`: a TrackSizingStage or None (tracking only).
    """

    def __init__(self, config: RunConfig, *, detector=None, boxes: BoxProvider | None = None,
                 sizer: TrackSizingStage | None = None) -> None:
        if detector is None and boxes is None:
            raise ConfigError("nothing finds polyps: give a detector bundle or boxes")
        self.config = config
        self.sizer = sizer
        quality = section_kwargs(config.quality)
        if sizer is not None:    # the border test looks at the crop the sizer actually sees
            quality["box_grow"] = sizer.spec.box_grow
        # The size interval: calibrated for the sizer with boxes found this way, when the bundle says how.
        self.interval = interval_for(sizer, given_boxes=boxes is not None, level=config.smooth.confidence_level,
                                     detector=detector)
        clamp_mm = getattr(sizer, "clamp_mm", None)
        self.interval_note = "" if sizer is None else capped_note(
            self.interval.note if self.interval else uncalibrated_note(config.smooth.confidence_level),
            size_range(clamp_mm))
        self.preprocess = PreprocessStage(config.preprocess.fov_masking, config.preprocess.fov_refresh_frames,
                                          config.preprocess.fov_scene_watch)
        self.detect = DetectStage(detector, boxes, config.detect.score_threshold, config.detect.max_detections)
        self.track = TrackStage(config.track)
        self.size = SizeStage(sizer)
        self.smooth = SmoothStage(QualityAssessor(**quality), config.smooth, self.interval,
                                  getattr(sizer, "diminutive_max_mm", None), clamp_mm)
        self.generation = 0
        self.reset()

    @property
    def parts(self) -> tuple[AnalysisStage, ...]:
        return self.preprocess, self.detect, self.track, self.size, self.smooth

    @property
    def detector(self):
        return self.detect.detector

    @property
    def boxes(self) -> BoxProvider | None:
        return self.detect.boxes

    @boxes.setter
    def boxes(self, provider: BoxProvider) -> None:
        """Other given boxes (a benchmark's looped recording); the detect stage reads them per frame."""
        self.detect.boxes = provider

    @property
    def quality(self) -> QualityAssessor:
        return self.smooth.quality

    @property
    def score_threshold(self) -> float:
        return self.detect.score_threshold

    @score_threshold.setter
    def score_threshold(self, value: float) -> None:
        self.detect.score_threshold = float(value)

    def reset(self, generation: int | None = None) -> None:
        """Start over (a new stream, or after a seek): every stage drops its state. Call it only
        while no stage runs (before a graph starts, or through `StageGraph.flush`)."""
        if generation is not None:
            self.generation = generation
        for stage in self.parts:
            stage.reset(self.generation)

    def stages(self) -> list[Stage]:
        """The stages for a StageGraph. Detect and size keep no order-dependent state, so offline
        graphs may run them on several workers (`detect.workers`, `size.workers`); the rest keep order."""
        detect_workers = self.config.detect.workers if self.detect.workers_allowed else 1
        size_workers = self.config.size.workers if self.sizer is not None and self.sizer.concurrent_safe else 1
        workers = {"detect": detect_workers, "size": size_workers}
        return [Stage(s.name, s.process, workers=workers.get(s.name, 1)) for s in self.parts]

    def offline_threads(self, output: Stage) -> list[Stage]:
        """The stages and `output` grouped onto threads for `run_offline`.

        Detection (with the preprocessing that feeds it) gets a thread of its own; tracking,
        sizing, smoothing and the output share a second one, so the two threads use two cores
        with one hand-off per frame between them. A hand-off costs a queue, a wake-up and a GIL
        hand-over, as much as a stage that takes a fraction of a millisecond (docs/results.md §4:
        one thread per stage ran at 0.71x the detector's rate alone, these two at 0.78x). A stage
        given several workers (`detect.workers`, `size.workers`) keeps its own threads.
        """
        preprocess, detect, track, size, smooth = self.stages()
        front = [chain([preprocess, detect])] if detect.workers == 1 else [preprocess, detect]
        back = [chain([track, size, smooth, output])] if size.workers == 1 else [track, size, chain([smooth, output])]
        return front + back

    def analyse(self, work: Work) -> Work:
        """All stages in one call (the sequential baseline and tests)."""
        for stage in self.parts:
            work = stage.process(work)
            work.stamps[stage.name] = time.perf_counter()
        return work
