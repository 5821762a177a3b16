"""The pipeline runtime: the analysis stages, the live/replay pipeline and the offline runner.

Graph (docs/design.md): capture -> preprocess -> detect -> track -> size -> smooth -> outputs.

- Live and replay (`LivePipeline`): the capture thread offers every frame to the first
  analysis slot and then, at once, sends it out (`on_result`) paired with the newest overlay
  already computed for a frame at or before it (`FrameResult.overlay_frame_index`, so the
  overlay's age is known). The analysis edges are latest-wins slots of capacity one: a slow
  stage makes frames skip analysis (counted as drops per edge) but never delays the video.
- Offline (`run_offline`): the same stages on blocking bounded queues, one thread each, plus an
  output stage; no frame is lost, results come out in frame order, and decoding, inference and
  encoding overlap. With `every=N` only every Nth frame is analysed; the others go out with
  the newest overlay, as in live use.
"""
from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.errors import ConfigError, HagviewError, SourceError

from .config import RunConfig, load_run_config, section_kwargs
from .graph import EdgeClosed, FpsMeter, LatencyStats, Stage, StageGraph, call_at_priority, chain
from .quality import QualityAssessor
from .sizing import CONCURRENT_BACKENDS, TrackSizingStage, sizing_policy
from .smoothing import TrackSizer
from .sources import open_source
from .sources.base import ReconnectingSource, SourceStatus, VideoSource
from .tracker import Track, Tracker
from .types import Detection, Frame, FrameResult, TrackReport

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets" / "bundles"
DEFAULT_SIZER = ASSETS / "sizer"
DEFAULT_DETECTOR = ASSETS / "detector"
GROUND_TRUTH_BOXES = "ground-truth"    # boxes= value: use the source's own ground truth (demo)

__all__ = ["LivePipeline", "SourceStatus", "Analysis", "Work", "run_offline", "run_sequential",
           "build_analysis", "load_run_config", "default_bundle", "share_cores_between_threads",
           "GROUND_TRUTH_BOXES"]


def share_cores_between_threads() -> None:
    """Process settings for running the pipeline's threads (`hagview`, `hagview-annotate` and the
    benchmarks that stand for them), called once by an entry point:
    - a 1 ms interpreter switch interval (CPython's default is 5 ms): a thread coming back from
      inference, decoding or painting waits at most that long for the GIL while another runs
      Python (tracking, smoothing), instead of up to 5 ms;
    - OpenCV without its own worker pool: the stages already run in parallel, and on a 2-core
      machine cv2's helpers only take cores from them (a 1080p resize: 1.7 ms on one thread,
      2.0 ms split over two busy cores).
    """
    import cv2

    sys.setswitchinterval(0.001)
    cv2.setNumThreads(1)


def freeze_loaded_objects() -> None:
    """Collect garbage once and move every object alive now (modules, models, the GUI) out of the
    cyclic garbage collector's reach (`gc.freeze`). Called by the viewer after loading a pipeline,
    on its control thread, while no video plays: without it a full collection in the middle of
    playback walks every object of the imported libraries while holding the interpreter lock
    (measured on the 2-core machine of docs/results.md: 76,000 objects, 28 ms; with torch
    loaded 216,000 objects, 110-125 ms, every thread stopped for three to four frames)."""
    gc.collect()
    gc.freeze()


def default_bundle(kind: str) -> Path | None:
    """The committed demo bundle of `kind` ("sizer" | "detector") when it is present."""
    path = DEFAULT_SIZER if kind == "sizer" else DEFAULT_DETECTOR
    return path if (path / "bundle.json").is_file() else None


# ---------------------------------------------------------------------------------------------
# What travels through the graph
# ---------------------------------------------------------------------------------------------

@dataclass
class Work:
    """One frame on its way through the analysis stages."""
    frame: Frame
    generation: int = 0                  # bumped by a seek: older work belongs to another stream
    analyse: bool = True                 # False: passes through (offline --every N)
    fov_mask: np.ndarray | None = None
    detections: list[Detection] = field(default_factory=list)
    tracks: list[Track] = field(default_factory=list)
    frame_sizes: dict[int, float] = field(default_factory=dict)
    reports: list[TrackReport] | None = None

    @property
    def stamps(self) -> dict[str, float]:
        return self.frame.stamps


# ---------------------------------------------------------------------------------------------
# The analysis stages
# ---------------------------------------------------------------------------------------------

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


class Analysis:
    """The stateful per-frame work of preprocess, detect, track, size and smooth.

    `detector`: an object with `detect(image, fov_mask) -> list[Detection]` (pipeline.detecting),
    or None when `boxes` gives them. `sizer`: a TrackSizingStage or None (tracking only).
    """

    def __init__(self, config: RunConfig, *, detector=None, boxes: BoxProvider | None = None,
                 sizer: TrackSizingStage | None = None) -> None:
        if detector is None and boxes is None:
            raise ConfigError("nothing finds polyps: give a detector bundle or boxes")
        self.config = config
        self.detector = detector
        self.boxes = boxes
        self.sizer = sizer
        quality = section_kwargs(config.quality)
        if sizer is not None:    # the border test looks at the crop the sizer actually sees
            quality["box_grow"] = sizer.spec.box_grow
        self.quality = QualityAssessor(**quality)
        self.score_threshold = config.detect.score_threshold
        self.generation = 0
        self._fov_mask: np.ndarray | None = None
        self._fov_age = 0
        self._new_state()

    def _new_state(self) -> None:
        self.tracker = Tracker(**section_kwargs(self.config.track))
        self.smoothers = TrackSizer(**section_kwargs(self.config.smooth))
        self._last_reports: list[TrackReport] = []
        if self.sizer is not None:
            self.sizer.reset()

    def reset(self, generation: int | None = None) -> None:
        """Start over (after a seek): new tracker and smoothers, FOV estimated again."""
        if generation is not None:
            self.generation = generation
        self._new_state()
        self._fov_mask, self._fov_age = None, 0

    # --- stages --------------------------------------------------------------------------
    def _skip(self, work: Work) -> bool:
        return not work.analyse or work.generation != self.generation

    def preprocess(self, work: Work) -> Work:
        if self._skip(work) or not self.config.preprocess.fov_masking:
            return work
        image = work.frame.image
        stale = self._fov_mask is None or self._fov_mask.shape != image.shape[:2] \
            or self._fov_age >= self.config.preprocess.fov_refresh_frames
        if stale:
            from pipeline.fov import estimate_fov_mask
            self._fov_mask, self._fov_age = estimate_fov_mask(image), 0
        self._fov_age += 1
        work.fov_mask = self._fov_mask
        return work

    def detect(self, work: Work) -> Work:
        if self._skip(work):
            return work
        if self.boxes is not None:
            found = self.boxes.detections(work.frame)
        else:
            found = self.detector.detect(work.frame.image, work.fov_mask)
        threshold = self.score_threshold
        found = [d for d in found if d.score >= threshold]
        found.sort(key=lambda d: -d.score)
        work.detections = found[:self.config.detect.max_detections]
        return work

    def track(self, work: Work) -> Work:
        if self._skip(work):
            return work
        frame = work.frame
        work.tracks = self.tracker.update(work.detections, frame.index, frame.pts, frame.image)
        return work

    def size(self, work: Work) -> Work:
        if self._skip(work) or self.sizer is None:
            return work
        seen = [(t.id, t.box) for t in work.tracks if t.confirmed and t.missed == 0]
        if seen:
            work.frame_sizes = self.sizer.size(work.frame.image, seen, work.frame.index, work.fov_mask)
        return work

    def smooth(self, work: Work) -> Work:
        if self._skip(work):
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
        self.smoothers.retain(self.tracker.remembered_ids)
        if self.sizer is not None:
            self.sizer.scheduler.forget(self.tracker.remembered_ids)
        work.reports = reports
        return work

    def stages(self) -> list[Stage]:
        """The analysis stages. Detect and size are stateless per frame, so offline graphs may
        run them on several workers (`detect.workers`, `size.workers`); the rest keep order."""
        detect_workers = self.config.detect.workers if self.detector is not None and \
            getattr(self.detector.engine, "name", "") in CONCURRENT_BACKENDS else 1
        size_workers = self.config.size.workers if self.sizer is not None and self.sizer.concurrent_safe else 1
        return [Stage("preprocess", self.preprocess), Stage("detect", self.detect, workers=detect_workers),
                Stage("track", self.track), Stage("size", self.size, workers=size_workers),
                Stage("smooth", self.smooth)]

    def offline_threads(self, output: Stage) -> list[Stage]:
        """The stages and `output` grouped onto threads for `run_offline`.

        Detection (with the preprocessing that feeds it) gets a thread of its own; tracking,
        sizing, smoothing and the output share a second one, so the two threads use two cores
        with one hand-off per frame between them. A hand-off costs a queue, a wake-up and a GIL
        hand-over, as much as a stage that takes a fraction of a millisecond: on the 2-core
        machine of docs/results.md §4, one thread per stage ran at 0.71x the detector's rate
        alone, these two at 0.78x. A stage given several workers (`detect.workers`, `size.workers`, for a
        heavy model) keeps its own threads.
        """
        preprocess, detect, track, size, smooth = self.stages()
        front = [chain([preprocess, detect])] if detect.workers == 1 else [preprocess, detect]
        back = [chain([track, size, smooth, output])] if size.workers == 1 else [track, size, chain([smooth, output])]
        return front + back

    def analyse(self, work: Work) -> Work:
        """All stages in one call (the sequential baseline and tests)."""
        for stage in self.stages():
            work = stage.process(work)
            work.stamps[stage.name] = time.perf_counter()
        return work


def _bundle_info(bundle, path) -> dict[str, Any]:
    provenance = getattr(bundle, "provenance", {}) or {}
    return {"path": str(path), "name": Path(path).name,
            "architecture": getattr(bundle, "architecture", None),
            "synthetic": bool(getattr(bundle, "synthetic_training_data", False)),
            "clinical_use": bool(provenance.get("clinical_use", False))}


def build_analysis(config: RunConfig, *, sizer: str | Path | None = None, detector: str | Path | None = None,
                   boxes: str | Path | None = None, backend: str = "auto",
                   offline: bool = False) -> tuple[Analysis, dict[str, Any]]:
    """Load the models (or given boxes) named; returns the Analysis and `model_info`.

    `offline`: the analysis runs in `run_offline`, where stages and workers already occupy the
    cores, so engines get one thread each unless `runtime.inference_threads` says otherwise
    (oversubscribed thread pools would fight each other).

    model_info: {"sizer": {...} | None, "detector": {...} | None, "boxes": str | None,
    "synthetic": bool (any model trained on synthetic data), "backend": engine names}.
    """
    threads = config.runtime.inference_threads or (1 if offline else None)
    info: dict[str, Any] = {"sizer": None, "detector": None, "boxes": None, "synthetic": False, "backend": None}
    backends = []
    sizing = None
    if sizer is not None:
        policy = sizing_policy(config)
        sizing = TrackSizingStage.from_bundle(sizer, backend=backend, threads=threads, policy=policy)
        info["sizer"] = _bundle_info(sizing.bundle, sizer)
        backends.append(sizing.engine.name)
    found = None
    provider = None
    if boxes is not None:
        provider = BoxProvider(boxes)
        info["boxes"] = str(boxes)
    elif detector is not None:
        from .detecting import PolypDetector
        # Decode down to what the tracker can still use, so the viewer's live threshold
        # (applied in the detect stage) can go lower than the configured one.
        floor = min(config.detect.score_threshold, config.track.min_score)
        found = PolypDetector(detector, score_threshold=floor, max_detections=config.detect.max_detections,
                              backend=backend, threads=threads)
        info["detector"] = _bundle_info(found.bundle, detector)
        backends.append(found.engine.name)
    info["synthetic"] = any(m and m["synthetic"] for m in (info["sizer"], info["detector"]))
    info["backend"] = "+".join(dict.fromkeys(backends)) or None
    return Analysis(config, detector=found, boxes=provider, sizer=sizing), info


# ---------------------------------------------------------------------------------------------
# Offline
# ---------------------------------------------------------------------------------------------

class OfflineRun:
    """Counters of one offline run (filled while it runs)."""

    def __init__(self) -> None:
        self.frames_in = 0
        self.frames_out = 0
        self.stats: dict[str, Any] = {}


def run_offline(source: VideoSource, analysis: Analysis, on_result: Callable[[FrameResult], None], *,
                every: int = 1, queue_capacity: int = 8, on_frame_done: Callable[[], None] | None = None,
                stop: threading.Event | None = None) -> dict[str, Any]:
    """Analyse every frame of `source` (or every `every`-th) on blocking queues; returns stats.

    `on_result` receives one FrameResult per frame, in frame order, on the output thread. An
    error in any stage (or the source) stops the run and is raised here.
    """
    if every < 1:
        raise ConfigError(f"every must be >= 1, got {every}")
    analysis.reset()      # a new stream: no track or size history carries over from another one
    newest: list[TrackReport] = []
    newest_index = -1

    def output(work: Work) -> Work:
        nonlocal newest, newest_index
        if work.reports is not None:
            newest, newest_index = work.reports, work.frame.index
        on_result(FrameResult(frame=work.frame, tracks=newest, overlay_frame_index=max(newest_index, 0)
                              if newest_index >= 0 else work.frame.index))
        if on_frame_done is not None:
            on_frame_done()
        return work

    stages = analysis.offline_threads(Stage("output", output))
    failure: list[BaseException] = []
    graph = StageGraph(stages, sink=lambda work: None, policy="blocking", capacity=queue_capacity,
                       on_error=failure.append)
    graph.start()
    read_latency = graph.latency
    stop = stop or threading.Event()
    frames_in = 0
    try:
        while not stop.is_set() and graph.error is None:
            started = time.perf_counter()
            frame = source.read()
            if frame is None:
                break
            frame.stamps["capture"] = now = time.perf_counter()
            read_latency.add("capture", now - started)
            work = Work(frame=frame, generation=analysis.generation, analyse=frames_in % every == 0)
            frames_in += 1
            if not graph.feed(work):
                break
    except BaseException:
        graph.stop()
        graph.join(5.0)
        raise
    graph.close_input()
    while graph.running:
        graph.join(0.2)
        if stop.is_set():
            graph.stop()
    if failure:
        raise failure[0]
    if stop.is_set():
        raise KeyboardInterrupt
    stats = graph.stats()
    stats["frames_read"] = frames_in
    stats["source"] = dict(source.counters)
    if analysis.sizer is not None:
        stats["sizer"] = analysis.sizer.stats()
    return stats


def run_sequential(source: VideoSource, analysis: Analysis, on_result: Callable[[FrameResult], None]) -> int:
    """The same work in one plain loop (the baseline of scripts/bench_pipeline.py). Returns frames."""
    analysis.reset()
    n = 0
    for frame in source:
        frame.stamps["capture"] = time.perf_counter()
        work = analysis.analyse(Work(frame=frame, generation=analysis.generation))
        on_result(FrameResult(frame=frame, tracks=work.reports or [], overlay_frame_index=frame.index))
        n += 1
    return n


# ---------------------------------------------------------------------------------------------
# Live and replay
# ---------------------------------------------------------------------------------------------

class _OverlayBoard:
    """The newest overlays (a few), so each output frame gets the newest one at or before it."""

    def __init__(self, keep: int = 16) -> None:
        self._items: deque[tuple[int, int, list[TrackReport], float]] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def publish(self, generation: int, frame_index: int, reports: list[TrackReport], ready: float) -> None:
        with self._lock:
            self._items.append((generation, frame_index, reports, ready))

    def newest_for(self, generation: int, frame_index: int) -> tuple[int, list[TrackReport]] | None:
        with self._lock:
            for gen, index, reports, _ in reversed(self._items):
                if gen == generation and index <= frame_index:
                    return index, reports
        return None

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class LivePipeline:
    """Live capture and replay, driven by the viewer (docs/design.md, "Pipeline runtime").

    Callbacks run on pipeline threads: `on_result(FrameResult)` for every captured frame, on
    the capture thread right after the frame arrives (it must return quickly: hand the frame
    to another thread, as the viewer does by posting it to the GUI thread), and
    `on_state(SourceStatus)` when the source state changes.

    `source`: "demo", "/dev/videoN", "N", a file path, a stream URL, or an opened VideoSource.
    The constructor opens the source and loads the models: it raises SourceError, BundleError,
    ConfigError or BackendUnavailable (one line) and may take up to `source.open_timeout_s`
    for devices and streams, so a GUI constructs it off its event thread.
    `boxes`: given boxes instead of a detector (a .gt.json / MOTChallenge file, or
    "ground-truth" for the demo's own); "demo" without a detector uses its ground truth.
    Files replay at their media time x `set_speed()`; at the end the state is "ended" and
    the pipeline waits (paused) for a seek. After a seek the tracker and smoothers start over.

    `display_gate`: for a consumer that shows the frames (the viewer). The capture thread clears
    it as each frame arrives, before handing it on; the consumer sets it once that frame is on
    screen. Meanwhile the analysis threads start no stage (`StageGraph` gate, at most
    `graph.GATE_WAIT_S` each), so the display path does not queue for the interpreter lock behind
    tracking or smoothing; it has the cores by `runtime.analysis_priority` already.

    `prepare(frame)`: the consumer's own work on a frame that does not depend on the analysis
    (the viewer scales it to its video area); what it returns comes back as `FrameResult.display`.
    It runs on the capture thread: for a file replayed at its media time, while the decoded frame
    waits for that time, as a player renders ahead; otherwise (live sources, steps, "as fast as
    possible") right after the frame arrives, so there it is part of the display delay.
    """

    def __init__(self, source: "str | VideoSource" = "demo", config: RunConfig | None = None, sizer: str | Path | None = None,
                 detector: str | Path | None = None, backend: str = "auto",
                 on_result: Callable[[FrameResult], None] | None = None,
                 on_state: Callable[[SourceStatus], None] | None = None, *,
                 boxes: str | Path | None = None, display_gate: threading.Event | None = None,
                 prepare: Callable[[Frame], Any] | None = None) -> None:
        self.config = config or load_run_config(None)
        self.prepare = prepare
        self.on_result = on_result or (lambda result: None)
        self.on_state = on_state or (lambda status: None)
        self._state = SourceStatus("paused", "not started")
        # Everything a callback reads exists before the source opens: a reconnecting source
        # (network stream, capture device) reports its state from inside open_source.
        self._control = threading.Condition()
        self._paused = False
        self._steps = 0
        self._seek_to: float | None = None
        self._speed: float | None = 1.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._generation = 0
        if isinstance(source, VideoSource):     # an already opened source (benchmarks, embedding)
            self.source_spec = source.name
            self.source = source
            if isinstance(source, ReconnectingSource):
                source.on_state = self._source_state
        else:
            self.source_spec = str(source)
            self.source = open_source(self.source_spec, self.config.source, live=True,
                                      on_state=self._source_state)
        try:
            if boxes is None and detector is None and getattr(self.source, "name", "") == "demo":
                # The demo without a detector bundle shows tracking and sizing on its own
                # ground-truth boxes rather than nothing.
                log.warning("demo: no detector bundle, using the generator's ground-truth boxes")
                boxes = GROUND_TRUTH_BOXES
            # Loaded at the analysis threads' priority, so that an engine's own worker threads
            # (made with its session) run at it too.
            self.analysis, self.model_info = call_at_priority(
                self.config.runtime.analysis_priority, build_analysis, self.config, sizer=sizer,
                detector=detector, boxes=boxes, backend=backend)
        except BaseException:
            self.source.close()
            raise
        self.backend_name = self.model_info["backend"] or "none"
        self.latency = LatencyStats(self.config.runtime.stats_window)
        self.graph = StageGraph(self.analysis.stages(), sink=self._publish, policy="latest",
                                latency=self.latency, on_error=self._analysis_failed,
                                priority=self.config.runtime.analysis_priority, gate=display_gate)
        self._display_gate = display_gate
        self._board = _OverlayBoard()
        self.fps_in = FpsMeter()
        self.fps_out = FpsMeter()
        self._overlay_age_frames: deque[int] = deque(maxlen=self.config.runtime.stats_window)
        self.frames_out = 0
        self.frames_discarded_paused = 0
        self.error: str | None = None
        self._started = False

    # --- public API ------------------------------------------------------------------------
    @property
    def duration(self) -> float | None:
        return None if self.source.is_live else self.source.duration

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.graph.start()
        t = threading.Thread(target=self._capture_loop, name="pipeline-capture", daemon=True)
        self._threads.append(t)
        t.start()
        self._set_state("playing")

    def stop(self) -> None:
        self._stop.set()
        self.source.interrupt()
        with self._control:
            self._control.notify_all()
        self.graph.stop()
        for t in self._threads:
            t.join(5.0)
        self.graph.join(5.0)
        self.source.close()

    def pause(self) -> None:
        with self._control:
            self._paused = True
            self._control.notify_all()
        self._set_state("paused")

    def resume(self) -> None:
        with self._control:
            self._paused = False
            self._steps = 0
            self._resync = True
            self._control.notify_all()
        self._set_state("playing")

    def step(self) -> None:
        """While paused: show the next frame (and analyse it)."""
        with self._control:
            self._paused = True
            self._steps += 1
            self._control.notify_all()

    def seek(self, seconds: float) -> None:
        if not self.source.seekable:
            raise SourceError(f"{self.source.name}: this source cannot seek")
        with self._control:
            self._seek_to = float(seconds)
            self._control.notify_all()

    def set_speed(self, factor: float | None) -> None:
        """Replay speed (1.0 = real time); None = as fast as possible. Live sources ignore it."""
        if factor is not None and not factor > 0:
            raise ValueError(f"speed must be > 0 or None, got {factor!r}")
        with self._control:
            self._speed = factor
            self._resync = True
            self._control.notify_all()

    def set_score_threshold(self, threshold: float) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"score threshold must be in [0, 1], got {threshold!r}")
        self.analysis.score_threshold = float(threshold)

    def stats(self) -> dict[str, Any]:
        graph = self.graph.stats()
        ages = np.array(list(self._overlay_age_frames), dtype=np.float64)   # list(): one atomic copy
        latency = self.latency.summary()
        out = {
            "fps_in": self.fps_in.fps, "fps_out": self.fps_out.fps,
            "average_fps_in": self.fps_in.average_fps, "average_fps_out": self.fps_out.average_fps,
            "frames_in": self.fps_in.count, "frames_out": self.frames_out,
            "frames_discarded_paused": self.frames_discarded_paused,
            "frames_analysed": graph["frames_out"],
            "latency": latency,
            "annotation_delay": latency.get("annotation_delay"),
            "drops": graph["drops"],
            "edges": graph["edges"],
            "overlay_age_frames": {"p50": float(np.percentile(ages, 50)) if ages.size else None,
                                   "max": float(ages.max()) if ages.size else None},
            "source": dict(self.source.counters),
            "state": self._state.state,
            "backend": self.backend_name,
        }
        if self.analysis.sizer is not None:
            out["sizer"] = self.analysis.sizer.stats()
        return out

    @property
    def state(self) -> SourceStatus:
        return self._state

    # --- threads ---------------------------------------------------------------------------
    _resync = True

    def _capture_loop(self) -> None:
        t0 = pts0 = 0.0
        try:
            while not self._stop.is_set():
                emit_one = False
                with self._control:
                    if self._seek_to is not None:
                        self._do_seek(self._seek_to)
                        self._seek_to = None
                        emit_one = self._paused     # show where the seek landed
                    while self._paused and self._steps == 0 and not emit_one and self._seek_to is None \
                            and not self._stop.is_set() and not self.source.is_live:
                        self._control.wait(0.2)
                    if self._stop.is_set():
                        break
                    if self._seek_to is not None:
                        continue
                    if self._paused and self._steps > 0:
                        self._steps -= 1
                        emit_one = True
                    # A live source keeps being read while paused and its frames are dropped, so
                    # the driver never queues stale frames and playing resumes with fresh ones.
                    discard = self._paused and not emit_one and self.source.is_live
                    speed = self._speed
                started = time.perf_counter()
                frame = self.source.read()
                if frame is None:
                    if not self._stop.is_set():
                        self._set_state("ended", "end of the video" if not self.source.is_live else "source ended")
                        if self.source.seekable:
                            with self._control:
                                self._paused = True
                            continue
                    break
                now = time.perf_counter()
                self.latency.add("capture", now - started)
                if discard:
                    self.frames_discarded_paused += 1
                    continue
                paced = not self.source.is_live and speed is not None and not emit_one
                if paced:
                    # Replay: release the frame at its media time (scaled by the speed), prepared
                    # for display before that.
                    display = self._prepare(frame)
                    now = time.perf_counter()
                    if self._resync:
                        t0, pts0, self._resync = now, frame.pts, False
                    wait = t0 + (frame.pts - pts0) / speed - now
                    if wait > 0 and self._stop.wait(min(wait, 1.0)):
                        break
                    if wait > 1.0:
                        self._resync = True
                frame.stamps["capture"] = time.perf_counter()
                if self._display_gate is not None:
                    self._display_gate.clear()      # the consumer sets it when the frame is shown
                self.fps_in.tick()
                self.graph.feed(Work(frame=frame, generation=self._generation))
                self._emit(frame, display if paced else self._prepare(frame))
                if self._state.state in ("ended", "paused", "error") and not self._paused and self.error is None:
                    self._set_state("playing")
        except EdgeClosed:
            pass
        except HagviewError as exc:
            self._fail(str(exc))
        except Exception as exc:    # the viewer shows the message; the program keeps running
            log.debug("capture failed", exc_info=True)
            self._fail(f"{type(exc).__name__}: {exc}")

    def _do_seek(self, seconds: float) -> None:
        try:
            self.source.seek(seconds)
        except SourceError as exc:     # a failed seek is shown, the video carries on from where it was
            log.warning("%s", exc)
            self._set_state("error", str(exc))
            return
        self._generation += 1
        generation = self._generation
        self.graph.flush(reset=lambda: self.analysis.reset(generation))
        self._board.clear()
        self._resync = True

    def _prepare(self, frame: Frame) -> Any:
        if self.prepare is None:
            return None
        try:
            return self.prepare(frame)
        except Exception:   # a consumer bug must not stop the video
            log.exception("prepare callback failed")
            return None

    def _emit(self, frame: Frame, display: Any = None) -> None:
        """The video path: this frame with the newest overlay at or before it, at once."""
        overlay = self._board.newest_for(self._generation, frame.index)
        index, reports = overlay if overlay is not None else (frame.index, [])
        if overlay is not None:
            self._overlay_age_frames.append(frame.index - index)
        frame.stamps["output"] = time.perf_counter()
        self.latency.add("display_path", frame.stamps["output"] - frame.stamps["capture"])
        try:
            self.on_result(FrameResult(frame=frame, tracks=reports, overlay_frame_index=index, display=display))
        except Exception:   # a consumer bug must not stop the video
            log.exception("on_result callback failed")
        self.latency.add("on_result", time.perf_counter() - frame.stamps["output"])
        self.frames_out += 1
        self.fps_out.tick()

    def _publish(self, work: Work) -> None:
        if work.reports is None or work.generation != self._generation:
            return
        ready = time.perf_counter()
        self._board.publish(work.generation, work.frame.index, work.reports, ready)
        self.latency.add("annotation_delay", ready - work.frame.stamps["capture"])

    # --- states ----------------------------------------------------------------------------
    def _source_state(self, status: SourceStatus) -> None:
        if status.state == "playing" and self._paused:
            status = SourceStatus("paused")
        self._set_state(status.state, status.message)

    def _set_state(self, state: str, message: str = "") -> None:
        status = SourceStatus(state, message)
        if status == self._state:
            return
        self._state = status
        try:
            self.on_state(status)
        except Exception:
            log.exception("on_state callback failed")

    def _fail(self, message: str) -> None:
        self.error = message
        log.error("%s", message)
        self._set_state("error", message)

    def _analysis_failed(self, exc: BaseException) -> None:
        self._fail(f"analysis stopped: {exc}" if isinstance(exc, HagviewError) else
                   f"analysis stopped: {type(exc).__name__}: {exc}")
