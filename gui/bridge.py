"""Between the pipeline's threads and the GUI thread.

- Frames: the viewer is the live graph's display sink (`ViewerSink`, one per opened source);
  the pipeline calls its `prepare` and then its `deliver` on the capture thread. `prepare`
  scales the frame to the video area (cv2 without the GIL, in bands shared with a helper thread:
  gui.video.scale_for_display) into one of four reused buffers; for a replayed file the pipeline
  calls it while the decoded frame waits for its media time, for a live source as the frame
  arrives. `deliver` offers the frame to the recorder (a non-blocking put), leaves it in the
  graph's latest-wins slot (pipeline.graph `LatestSlot`, the edge display -> GUI thread) and,
  when the slot was empty, announces it with `frame_ready` (delivered on the GUI thread as a
  queued signal). The GUI takes the newest frame without waiting on the slot; there is never
  more than one notification waiting, so a slow paint skips frames (the slot's drops) instead
  of piling them up. One thread hop from decoder to paint: a display thread in between cost a
  wake-up and a GIL hand-over per frame.
- The display gate (scheduling, given to the pipeline in its `LiveScheduling`): from a frame's
  arrival until the GUI reports it painted (`frame_shown`), the analysis threads start no stage
  and the capture thread waits (at most `DISPLAY_WAIT_S`) before reading the next frame, so the
  paint never queues for the interpreter lock behind Python work that can wait a few
  milliseconds.
- After loading a pipeline, everything alive is frozen out of the garbage collector's reach
  (`freeze_loaded_objects`), so no full collection stops every thread during playback.
- Commands (open, pause, seek, speed, threshold, snapshot, stopping a recording): run one at a
  time on a control thread, because some of them wait (opening a device, loading models, a seek
  that decodes, finishing an MP4); failures come back as `command_failed(message)`.
- Statistics: polled on a thread of their own and delivered with `stats_ready`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PyQt6.QtCore import QObject, pyqtSignal

from pipeline.graph import LatestSlot
from pipeline.live import DisplaySink, LiveScheduling
from pipeline.runtime import LivePipeline, freeze_loaded_objects
from pipeline.sources.base import SourceStatus, VideoSource
from pipeline.types import Frame, FrameResult
from pipeline.errors import HagviewError, describe_error

from .recorder import Recorder, RecordingSummary
from .snapshot import save_snapshot
from .video import ARRIVAL_STAMP, display_size, scale_for_display

log = logging.getLogger(__name__)

DISPLAY_WAIT_S = 0.010     # the longest the capture thread waits for its frame to be painted
DISPLAY_BUFFERS = 4        # reused display-sized frames


@dataclass
class SourceInfo:
    """What the window needs to know about an opened source."""
    spec: str
    duration: float | None        # seconds for files; None for live sources
    fps: float | None
    seekable: bool
    live: bool
    backend: str
    model_info: dict[str, Any]


class ViewerSink(DisplaySink):
    """The viewer's end of one opened source's live graph: frames of a replaced source (an
    older `session`) are dropped. Looks the bridge's methods up per call, so a test can watch
    them."""

    def __init__(self, bridge: "PipelineBridge", session: int) -> None:
        self.bridge = bridge
        self.session = session
        self.policy = bridge.frames.policy
        self.capacity = bridge.frames.capacity

    def prepare(self, frame: Frame) -> np.ndarray | None:
        return self.bridge._prepare(self.session, frame)

    def deliver(self, result: FrameResult) -> None:
        self.bridge._on_result(self.session, result)


class PipelineBridge(QObject):
    frame_ready = pyqtSignal()                 # take_result() has a new frame
    state_changed = pyqtSignal(str, str)       # SourceStatus state, message
    opened = pyqtSignal(object)                # SourceInfo
    stats_ready = pyqtSignal(object)           # LivePipeline.stats() dict
    command_failed = pyqtSignal(str)           # one-line message
    notice = pyqtSignal(str)                   # done: snapshot written, recording finished

    def __init__(self, *, config=None, sizer: str | Path | None = None, detector: str | Path | None = None,
                 backend: str = "auto", boxes: str | Path | None = None, stats_interval_s: float = 0.5,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.config = config
        self.sizer = sizer
        self.detector = detector
        self.backend = backend
        self.boxes = boxes
        self.stats_interval_s = stats_interval_s
        self.pipeline: LivePipeline | None = None
        self.info: SourceInfo | None = None
        self.recorder: Recorder | None = None
        self._control = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hagview-control")
        # Takes bands of each frame's display scaling beside the capture thread.
        self._scaler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hagview-scale")
        # Held while a frame is put, taken or its buffer looked at, so that the session check
        # and the put, and the take and `_painting`, happen as one (lock order: this, then the
        # slot's own).
        self._lock = threading.Lock()
        self.frames: LatestSlot[FrameResult] = LatestSlot("display")     # capture -> GUI thread
        self.scale_ms: deque[float] = deque(maxlen=3000)    # display scaling per frame (wall time: two threads)
        self.display_area: Callable[[], tuple[int, int]] | None = None   # the video area, device pixels
        self.display_idle = threading.Event()    # clear from a frame's arrival to its paint
        self.display_idle.set()
        # Display-sized frames are written into reused buffers (a fresh 4-6 MB array per frame
        # costs page faults): one on screen, one being painted, one waiting, one being written.
        self._buffers: list[np.ndarray] = []
        self._shown: np.ndarray | None = None
        self._painting: np.ndarray | None = None
        self._session = 0
        self._closing = threading.Event()
        self._stats_thread = threading.Thread(target=self._stats_loop, name="hagview-stats", daemon=True)
        self._stats_thread.start()

    # --- frames (capture thread -> GUI thread) -----------------------------------------------
    def _prepare(self, session: int, frame: Frame) -> np.ndarray | None:
        """The frame scaled to the video area (None: it fits as it is, or scaling failed and the
        GUI scales it). For a replayed file this runs before the frame's media time."""
        if session != self._session:
            return None
        try:
            area = self.display_area() if self.display_area is not None else (0, 0)
            started = time.perf_counter()
            display = scale_for_display(frame.image, area, self._free_buffer(frame.image, area), helper=self._scaler)
            self.scale_ms.append((time.perf_counter() - started) * 1e3)
        except Exception:
            log.debug("display scaling failed", exc_info=True)
            return None
        return None if display is frame.image else display

    def _on_result(self, session: int, result: FrameResult) -> None:
        if session != self._session or self._closing.is_set():
            self.display_idle.set()
            return                                   # a pipeline being replaced or stopped
        result.frame.stamps[ARRIVAL_STAMP] = time.perf_counter()
        recorder = self.recorder
        if recorder is not None:
            recorder.offer(result)
        with self._lock:
            if session != self._session:
                self.display_idle.set()
                return
            # Tell the GUI only when the slot was empty: otherwise a notification is still on
            # its way and will take this newer frame (the replaced one counts as a drop).
            notify = self.frames.put(result)
        if notify:
            self.frame_ready.emit()
        # Off the interpreter lock until the GUI has painted it: reading the next frame now
        # would only compete with the paint (the next frame is a frame period away).
        self.display_idle.wait(DISPLAY_WAIT_S)

    def _free_buffer(self, image: np.ndarray, area: tuple[int, int]) -> np.ndarray | None:
        """A display buffer that is not on screen, being painted or waiting to be (None: the
        frame fits as it is, or all are in use and scaling allocates a fresh one)."""
        width, height = display_size((image.shape[1], image.shape[0]), area)
        if (width, height) == (image.shape[1], image.shape[0]):
            return None
        if not self._buffers or self._buffers[0].shape != (height, width, 3):
            self._buffers = [np.empty((height, width, 3), np.uint8) for _ in range(DISPLAY_BUFFERS)]
        with self._lock:
            waiting = self.frames.peek()
            busy = [self._shown, self._painting, waiting.display if waiting is not None else None]
        return next((b for b in self._buffers if not any(b is other for other in busy)), None)

    def take_result(self) -> FrameResult | None:
        """The newest result since the last call (`display`: its frame scaled for the video
        area, or None), or None. Nothing to paint opens the display gate again."""
        with self._lock:
            latest = self.frames.get(timeout=0)
            if latest is not None:
                self._painting = latest.display
        if latest is None:
            self.display_idle.set()
        return latest

    @property
    def gui_skipped(self) -> int:
        """Frames replaced before the GUI took them."""
        return self.frames.drops

    def frame_shown(self, display: Any = None) -> None:
        """The GUI thread has painted the frame from `take_result` (`display`: its scaled
        pixels, kept on screen until the next one): the analysis may go on."""
        with self._lock:
            self._shown, self._painting = display, None
        self.display_idle.set()

    def _on_state(self, session: int, status: SourceStatus) -> None:
        if session == self._session:
            self.state_changed.emit(status.state, status.message)

    # --- commands ---------------------------------------------------------------------------
    def _submit(self, what: str, work: Callable[[], Any]) -> Future:
        def run():
            try:
                return work()
            except (HagviewError, ValueError, OSError) as exc:
                self.command_failed.emit(f"{what}: {exc}")
            except Exception as exc:    # the window shows it; the program keeps running
                log.debug("%s failed", what, exc_info=True)
                self.command_failed.emit(f"{what}: {describe_error(exc)}")
            return None
        return self._control.submit(run)

    def open(self, source: str | VideoSource) -> Future:
        """Stop the current pipeline (if any) and start one on `source` (a spec, or a source
        already opened); errors go to the window as the "error" state, the program keeps running."""
        spec = source if isinstance(source, str) else source.name

        def work():
            self._stop_pipeline()
            self._session += 1
            session = self._session
            self.state_changed.emit("reconnecting", f"opening {spec}")
            try:
                pipe = LivePipeline(source, config=self.config, sizer=self.sizer, detector=self.detector,
                                    backend=self.backend, boxes=self.boxes, display=ViewerSink(self, session),
                                    scheduling=LiveScheduling(display_gate=self.display_idle),
                                    on_state=lambda s: self._on_state(session, s))
            except Exception as exc:
                log.debug("opening %s failed", spec, exc_info=True)
                self.state_changed.emit("error", describe_error(exc) if isinstance(exc, HagviewError)
                                        else f"{spec}: {describe_error(exc)}")
                return
            freeze_loaded_objects()
            src = pipe.source
            self.info = SourceInfo(spec=spec, duration=pipe.duration, fps=src.fps, seekable=src.seekable,
                                   live=src.is_live, backend=pipe.backend_name, model_info=pipe.model_info)
            self.pipeline = pipe
            self.opened.emit(self.info)
            pipe.start()
        return self._submit(f"open {spec}", work)

    def _call(self, what: str, method: str, *args) -> Future:
        def work():
            pipe = self.pipeline
            if pipe is None:
                raise HagviewError("no source is open")
            getattr(pipe, method)(*args)
        return self._submit(what, work)

    def pause(self) -> Future:
        return self._call("pause", "pause")

    def resume(self) -> Future:
        return self._call("play", "resume")

    def step(self) -> Future:
        return self._call("step", "step")

    def seek(self, seconds: float) -> Future:
        return self._call("seek", "seek", max(0.0, float(seconds)))

    def set_speed(self, factor: float | None) -> Future:
        return self._call("speed", "set_speed", factor)

    def set_score_threshold(self, threshold: float) -> Future:
        return self._call("confidence threshold", "set_score_threshold", float(threshold))

    def snapshot(self, result: FrameResult, directory: str | Path, *, synthetic: bool,
                 selected_id: int | None) -> Future:
        def work():
            info = self.info
            files = save_snapshot(result, directory, synthetic=synthetic, selected_id=selected_id,
                                  source=info.spec if info else "", models=info.model_info if info else None)
            self.notice.emit(f"snapshot: {files.raw.name}, {files.annotated.name} in {files.raw.parent}")
            return files
        return self._submit("snapshot", work)

    # --- recording --------------------------------------------------------------------------
    def start_recording(self, path: str | Path, *, mode: str, synthetic: bool) -> Recorder:
        """Start recording the frames from now on (raises for a bad path or mode)."""
        if self.recorder is not None:
            raise HagviewError(f"already recording to {self.recorder.path}")
        fps = self.info.fps if self.info is not None else None
        self.recorder = Recorder(path, mode=mode, fps=fps or 30.0, synthetic=synthetic)
        return self.recorder

    def stop_recording(self) -> Future | None:
        recorder, self.recorder = self.recorder, None
        if recorder is None:
            return None

        def work() -> RecordingSummary:
            summary = recorder.stop()
            if summary.error:
                raise HagviewError(summary.error)
            dropped = f", {summary.frames_dropped} dropped" if summary.frames_dropped else ""
            self.notice.emit(f"recording: {summary.frames_written} frames{dropped} -> {summary.path}")
            return summary
        return self._submit("recording", work)

    # --- statistics -------------------------------------------------------------------------
    def _stats_loop(self) -> None:
        while not self._closing.wait(self.stats_interval_s):
            pipe = self.pipeline
            if pipe is None:
                continue
            self.display_idle.wait(DISPLAY_WAIT_S)     # between a paint and the next arrival
            try:
                stats = pipe.stats()
            except Exception:       # counters change under our feet; the next poll will do
                log.debug("stats failed", exc_info=True)
                continue
            stats.setdefault("drops", {})["gui"] = self.gui_skipped
            recorder = self.recorder
            if recorder is not None:
                stats["recording"] = {"path": str(recorder.path), "frames": recorder.frames_written,
                                      "dropped": recorder.frames_dropped, "error": recorder.error}
            self.stats_ready.emit(stats)

    # --- shutting down ----------------------------------------------------------------------
    def _stop_pipeline(self) -> None:
        pipe, self.pipeline = self.pipeline, None
        self._session += 1
        if pipe is not None:
            pipe.stop()
        with self._lock:
            self.frames.clear()
        self.display_idle.set()

    def shutdown(self, timeout: float = 15.0) -> RecordingSummary | None:
        """Finish a recording, stop the pipeline and the threads (blocks; at exit only).
        Returns what the recording that was running wrote (None if none was)."""
        self._closing.set()
        recording = self.stop_recording()
        done = self._control.submit(self._stop_pipeline)
        summary = None
        try:
            summary = recording.result(timeout) if recording is not None else None
            done.result(timeout)
        except Exception:
            log.warning("the pipeline did not stop cleanly", exc_info=True)
        self._control.shutdown(wait=False, cancel_futures=True)
        self._scaler.shutdown(wait=False, cancel_futures=True)
        return summary
