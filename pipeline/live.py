"""The live graph: capture, replay and the viewer's feed (`LivePipeline`).

Topology (`LivePipeline.flows()` lists it as built, with each edge's policy and capacity):

    capture --(the sink's policy)--> display    every frame, at once, from the capture thread
       |
       +--latest(1)--> preprocess --latest(1)--> detect --latest(1)--> track --latest(1)-->
                       size --latest(1)--> smooth --publish--> overlay join (newest-at-or-before, 16)
    overlay join --newest at or before the frame--> display

`display` is a `DisplaySink` the consumer plugs in: the viewer's hands each frame to the GUI
thread through a latest-wins slot of capacity one (gui.bridge); `on_result=` makes a sink that
calls back on the capture thread (a direct call, nothing waits).

The video path never waits for the analysis: each frame goes out paired with the newest overlay
already computed for a frame at or before it (`FrameResult.overlay_frame_index`). The analysis
edges are latest-wins slots of capacity one: a slow stage makes frames skip analysis (counted as
drops per edge) but never delays the video.

Scheduling is separate from the topology (`LiveScheduling`): the analysis threads' priority and
the display gate, which the consumer of the display path (the viewer) holds closed from a frame's
arrival to its paint.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.errors import SourceError, describe_error

from .config import RunConfig, load_run_config
from .graph import EdgeClosed, FpsMeter, LatencyStats, OverlayJoin, StageGraph, call_at_priority
from .loading import build_analysis
from .pacing import MediaClock
from .sources import open_source
from .sources.base import ReconnectingSource, SourceStatus, VideoSource
from .stages import GROUND_TRUTH_BOXES
from .types import Frame, FrameResult, TrackReport
from .work import Work

log = logging.getLogger(__name__)

OVERLAYS_KEPT = 16      # live frames go out before their own analysis ends: keep a few overlays
MAX_REPLAY_WAIT_S = 1.0  # a longer gap in a replayed file's media time is not waited out


@dataclass(frozen=True)
class Flow:
    """One edge of the live graph: from, to, what happens when `target` is slow, how much waits."""
    source: str
    target: str
    policy: str        # "call" (same thread), "latest", "blocking", "newest-at-or-before"
    capacity: int      # items that can wait on the edge (0: none, it is a direct call)


@dataclass(frozen=True)
class LiveScheduling:
    """How the live graph's threads share the machine (not which stages feed which).

    `analysis_priority`: the analysis threads' priority against the capture and display threads
    (graph.STAGE_PRIORITIES; None: the run config's `runtime.analysis_priority`).
    `display_gate`: cleared by the capture thread as each frame arrives and set by the display
    consumer once that frame is on screen; meanwhile the analysis threads start no stage (at most
    `graph.GATE_WAIT_S` each), so the display path does not queue for the interpreter lock behind
    tracking or smoothing."""
    analysis_priority: str | None = None
    display_gate: threading.Event | None = None


class DisplaySink:
    """The display end of the live graph, supplied by its consumer; both methods run on the
    capture thread and must return quickly.

    `prepare(frame)`: the consumer's own work on a frame that does not depend on the analysis
    (the viewer scales it to its video area); what it returns comes back as `FrameResult.display`.
    For a file replayed at its media time it runs while the decoded frame waits for that time, as
    a player renders ahead; otherwise (live sources, steps, "as fast as possible") right after the
    frame arrives, so there it is part of the display delay.
    `deliver(result)`: the frame with the newest overlay at or before it, at once.
    `policy`/`capacity`: how frames wait between the capture thread and whoever shows them (the
    edge `flows()` lists); "call"/0 when `deliver` itself is the consumer."""

    name = "display"
    policy = "call"
    capacity = 0

    def prepare(self, frame: Frame) -> Any:
        return None

    def deliver(self, result: FrameResult) -> None:
        raise NotImplementedError


class CallbackSink(DisplaySink):
    """`on_result(FrameResult)` called on the capture thread (tests, benchmarks, embedding)."""

    def __init__(self, on_result: Callable[[FrameResult], None],
                 prepare: Callable[[Frame], Any] | None = None) -> None:
        self.on_result = on_result
        self._prepare = prepare

    def prepare(self, frame: Frame) -> Any:
        return None if self._prepare is None else self._prepare(frame)

    def deliver(self, result: FrameResult) -> None:
        self.on_result(result)


class LivePipeline:
    """Live capture and replay, driven by the viewer (docs/design.md, "Pipeline runtime").

    Every captured frame goes to the `display` sink (`DisplaySink`), on the capture thread right
    after the frame arrives; `on_result(FrameResult)` instead of a sink is the same as
    `display=CallbackSink(on_result)`. `on_state(SourceStatus)` is called (on a pipeline thread)
    when the source state changes. `scheduling`: thread priorities and the display gate
    (`LiveScheduling`); not given, the run config's priority and no gate.

    `source`: "demo", "/dev/videoN", "N", a file path, a stream URL, or an opened VideoSource.
    The constructor opens the source and loads the models: it raises SourceError, BundleError,
    ConfigError or BackendUnavailable (one line) and may take up to `source.open_timeout_s`
    for devices and streams, so a GUI constructs it off its event thread.
    `boxes`: given boxes instead of a detector (a .gt.json / MOTChallenge file, or
    "ground-truth" for the demo's own); "demo" without a detector uses its ground truth.
    Files replay at their media time x `set_speed()`; at the end the state is "ended" and
    the pipeline waits (paused) for a seek. After a seek the tracker and smoothers start over.
    """

    def __init__(self, source: "str | VideoSource" = "demo", config: RunConfig | None = None, sizer: str | Path | None = None,
                 detector: str | Path | None = None, backend: str = "auto",
                 on_result: Callable[[FrameResult], None] | None = None,
                 on_state: Callable[[SourceStatus], None] | None = None, *,
                 boxes: str | Path | None = None, display: DisplaySink | None = None,
                 scheduling: LiveScheduling | None = None) -> None:
        if display is not None and on_result is not None:
            raise ValueError("LivePipeline: give a display sink or on_result, not both")
        self.config = config or load_run_config(None)
        self.display = display if display is not None else CallbackSink(on_result or (lambda result: None))
        scheduling = scheduling or LiveScheduling()
        self.scheduling = replace(scheduling, analysis_priority=scheduling.analysis_priority
                                  or self.config.runtime.analysis_priority)
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
                self.scheduling.analysis_priority, build_analysis, self.config, sizer=sizer,
                detector=detector, boxes=boxes, backend=backend)
        except BaseException:
            self.source.close()
            raise
        self.backend_name = self.model_info["backend"] or "none"
        self.latency = LatencyStats(self.config.runtime.stats_window)
        # The topology. capture -> analysis: latest-wins slots of capacity one on every edge,
        # so the analysis skips frames rather than falling behind; smooth -> overlay join.
        self.graph = StageGraph(self.analysis.stages(), sink=self._publish, policy="latest",
                                latency=self.latency, on_error=self._analysis_failed,
                                priority=self.scheduling.analysis_priority, gate=self.scheduling.display_gate)
        self.overlays: OverlayJoin[list[TrackReport]] = OverlayJoin("overlay", keep=OVERLAYS_KEPT)
        # capture -> display: the sink is called on the capture thread (`_emit`); how frames wait
        # behind it is the sink's own edge (its policy and capacity).
        self._clock = MediaClock(max_wait_s=MAX_REPLAY_WAIT_S)
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
        if getattr(self.source, "state", "playing") in ("", "playing"):
            # A live source still waiting for its device keeps saying so until its first frame.
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
            self._clock.resync()
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
            self._clock.resync()
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
            "overlay_join": self.overlays.stats(),
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

    def flows(self) -> list[Flow]:
        """The live graph's edges as built (docs/design.md draws them)."""
        names = [stage.name for stage in self.graph.stages]
        display = self.display
        flows = [Flow("capture", display.name, display.policy, display.capacity)]
        for source, edge in zip(["capture"] + names, self.graph.edges):
            flows.append(Flow(source, edge.name.removeprefix("in:"), edge.policy, edge.capacity))
        flows.append(Flow(names[-1], self.overlays.name, self.overlays.policy, self.overlays.capacity))
        flows.append(Flow(self.overlays.name, display.name, "call", 0))
        return flows

    # --- threads ---------------------------------------------------------------------------
    def _capture_loop(self) -> None:
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
                    wait = self._clock.delay(frame.pts, speed)
                    if wait > 0 and self._stop.wait(wait):
                        break
                frame.stamps["capture"] = time.perf_counter()
                gate = self.scheduling.display_gate
                if gate is not None:
                    gate.clear()      # the consumer sets it when the frame is shown
                self.fps_in.tick()
                self.graph.feed(Work(frame=frame, generation=self._generation))
                self._emit(frame, display if paced else self._prepare(frame))
                if self._state.state in ("ended", "paused", "error") and not self._paused and self.error is None:
                    self._set_state("playing")
        except EdgeClosed:
            pass
        except Exception as exc:    # the viewer shows the message; the program keeps running
            log.debug("capture failed", exc_info=True)
            self._fail(describe_error(exc))

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
        self.overlays.clear()
        self._clock.resync()

    def _prepare(self, frame: Frame) -> Any:
        try:
            return self.display.prepare(frame)
        except Exception:   # a consumer bug must not stop the video
            log.exception("prepare callback failed")
            return None

    def _emit(self, frame: Frame, display: Any = None) -> None:
        """The video path: this frame with the newest overlay at or before it, at once."""
        overlay = self.overlays.newest_for(self._generation, frame.index)
        index, reports = overlay if overlay is not None else (frame.index, [])
        if overlay is not None:
            self._overlay_age_frames.append(frame.index - index)
        frame.stamps["output"] = time.perf_counter()
        self.latency.add("display_path", frame.stamps["output"] - frame.stamps["capture"])
        try:
            self.display.deliver(FrameResult(frame=frame, tracks=reports, overlay_frame_index=index,
                                             display=display))
        except Exception:   # a consumer bug must not stop the video
            log.exception("display sink failed")
        self.latency.add("on_result", time.perf_counter() - frame.stamps["output"])
        self.frames_out += 1
        self.fps_out.tick()

    def _publish(self, work: Work) -> None:
        if work.reports is None or work.generation != self._generation:
            return
        ready = time.perf_counter()
        self.overlays.publish(work.generation, work.frame.index, work.reports)
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
        self._fail(f"analysis stopped: {describe_error(exc)}")
