"""What every video source offers, and the reconnect logic shared by live sources.

A source hands out `pipeline.types.Frame`s one at a time (`read()`, None at the end). Live
sources (capture devices, network streams) are wrapped in `ReconnectingSource`, which turns a
lost signal into "no signal" / "reconnecting" states and carries on with the next frame index
once the opener succeeds again, so the program never has to restart.
"""
from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterator

from pipeline.errors import SourceError

from ..pacing import MediaClock
from ..types import Frame

log = logging.getLogger(__name__)

SOURCE_STATES = ("playing", "paused", "no signal", "reconnecting", "ended", "error")


@dataclass(frozen=True)
class SourceStatus:
    """A source's state as the viewer shows it; `message` says why (empty when playing)."""
    state: str
    message: str = ""

    def __post_init__(self):
        if self.state not in SOURCE_STATES:
            raise ValueError(f"unknown source state {self.state!r}; expected one of {SOURCE_STATES}")


StateCallback = Callable[[SourceStatus], None]


class SourceAbsent(SourceError):
    """The device is not there at all (no /dev/videoN): a live viewer waits for it to appear."""


class VideoSource(ABC):
    """One video input. `read()` returns the next frame, or None when the source has ended."""

    name: str = "source"
    is_live: bool = False        # frames arrive in real time (device, stream, paced demo)
    seekable: bool = False

    def __init__(self) -> None:
        # Counted, never raised: a few damaged packets should not end an hour-long procedure.
        self.counters: dict[str, int] = {"frames": 0, "corrupt_packets": 0}

    @abstractmethod
    def read(self) -> Frame | None:
        """The next frame (RGB uint8), or None at the end; raises SourceError when unreadable."""

    def close(self) -> None:
        """Release the device/file; safe to call twice."""

    def interrupt(self) -> None:
        """Ask a blocking `read()` (network, device, reconnect back-off) to give up soon."""

    @property
    def fps(self) -> float | None:
        """Nominal frame rate (None when unknown)."""
        return None

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) of the frames, once known."""
        return None

    @property
    def duration(self) -> float | None:
        """Length in seconds for files; None for live sources."""
        return None

    @property
    def num_frames(self) -> int | None:
        """Frame count when the container states it (files), else None."""
        return None

    def seek(self, seconds: float) -> None:
        raise SourceError(f"{self.name}: this source cannot seek")

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self.read()
            if frame is None:
                return
            yield frame

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ReconnectingSource(VideoSource):
    """Wrap a live source so that lost frames lead to a reconnect, never to the end of the run.

    `opener()` returns a freshly opened source (or raises). When a read fails, times out or the
    stream ends, the inner source is closed and the opener is retried with exponential back-off
    (`backoff_initial_s` doubling up to `backoff_max_s`). "no signal" is reported once
    `no_signal_after_s` have passed without a frame, by a watchdog thread, so it comes on time
    even while a read or an open blocks (up to their own, longer, time-outs), or at once when a
    read times out; every attempt reports "reconnecting", and the first frame after a
    successful reopen reports "playing". A device that is absent (`SourceAbsent`) is "no signal:
    waiting for <name>" and is looked for again every `backoff_initial_s`, without growing
    back-off (looking costs nothing, and the tower is switched on in any order). Frame indices
    and pts continue from where they stopped, so downstream stages see one uninterrupted stream.
    """

    is_live = True

    def __init__(self, opener: Callable[[], VideoSource], name: str, *,
                 no_signal_after_s: float = 1.0, backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 2.0, max_attempts: int | None = None,
                 on_state: StateCallback | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        if no_signal_after_s <= 0 or backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise ValueError("reconnect timings must be positive and backoff_max_s >= backoff_initial_s")
        self._opener = opener
        self.name = name
        self.no_signal_after_s = no_signal_after_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.max_attempts = max_attempts
        self.on_state = on_state
        self._clock = clock
        self._inner: VideoSource | None = None
        self._stop = threading.Event()
        self._next_index = 0
        self._pts_offset = 0.0
        self._last_pts = -1.0
        self._last_frame_time = clock()
        self._signal_lost_reported = False
        self._absent = False
        self._state = ""
        # The watchdog and the reading thread both report; one lock keeps the last report the
        # true one (a "no signal" decided just before a frame arrived cannot land after its "playing").
        self._state_lock = threading.RLock()
        self._watchdog: threading.Thread | None = None
        self.counters.update({"reconnects": 0, "open_failures": 0})

    # --- state -------------------------------------------------------------------------
    def _report(self, state: str, message: str = "") -> None:
        with self._state_lock:
            self._state = state
            if state != "playing":
                log.info("%s: %s%s", self.name, state, f" ({message})" if message else "")
            if self.on_state is not None:
                self.on_state(SourceStatus(state, message))

    @property
    def state(self) -> str:
        return self._state

    # --- VideoSource -------------------------------------------------------------------
    @property
    def fps(self) -> float | None:
        return self._inner.fps if self._inner is not None else self._fps

    @property
    def size(self) -> tuple[int, int] | None:
        return self._inner.size if self._inner is not None else None

    def open(self, wait_if_absent: bool = False) -> None:
        """Open now (first connection); raises SourceError if the very first open fails, except
        that with `wait_if_absent` an absent device is reported as "no signal: waiting for ..."
        and `read()` keeps looking for it."""
        try:
            self._inner = self._opener()
        except SourceAbsent:
            if not wait_if_absent:
                raise
            self.counters["open_failures"] += 1
            self._last_frame_time = self._clock()
            self._enter_absent()
            self._start_watchdog()
            return
        self._last_frame_time = self._clock()
        self._report("playing")
        self._start_watchdog()

    def interrupt(self) -> None:
        self._stop.set()
        if self._inner is not None:
            self._inner.interrupt()

    def close(self) -> None:
        self._stop.set()
        if self._inner is not None:
            self._inner.close()
            self._inner = None

    def read(self) -> Frame | None:
        self._start_watchdog()
        attempts = 0
        backoff = self.backoff_initial_s
        while not self._stop.is_set():
            if self._inner is None:
                self._check_no_signal("no frames")
                attempts += 1
                if self.max_attempts is not None and attempts > self.max_attempts:
                    self._report("error", f"gave up after {self.max_attempts} reconnect attempts")
                    raise SourceError(f"{self.name}: gave up after {self.max_attempts} reconnect attempts")
                if not self._absent:     # while a device is absent the state stays "waiting for"
                    self._report("reconnecting", f"attempt {attempts}")
                try:
                    self._inner = self._opener()
                    self.counters["reconnects"] += 1
                    self._absent = False
                except SourceAbsent:
                    self.counters["open_failures"] += 1
                    if not self._absent:
                        self._enter_absent()
                    self._stop.wait(self.backoff_initial_s)
                    continue
                except SourceError as exc:
                    self._absent = False
                    self.counters["open_failures"] += 1
                    self._check_no_signal(str(exc))
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.backoff_max_s)
                    continue
            try:
                frame = self._inner.read()
                reason, timed_out = "stream ended", False
            except SourceError as exc:
                # Inner sources raise after waiting their read time-out: frames have stopped.
                frame, reason, timed_out = None, str(exc), True
            if frame is None:
                if self._stop.is_set():
                    break
                self._drop_inner(reason, signal_lost=timed_out)
                continue
            self._fps = self._inner.fps or self._fps
            return self._renumber(frame)
        return None

    # --- helpers -----------------------------------------------------------------------
    def _enter_absent(self) -> None:
        with self._state_lock:
            self._absent = self._signal_lost_reported = True
            self._report("no signal", f"waiting for {self.name}")

    def _start_watchdog(self) -> None:
        if self._watchdog is None and not self._stop.is_set():
            self._watchdog = threading.Thread(target=self._watch, name=f"no-signal {self.name}", daemon=True)
            self._watchdog.start()

    def _watch(self) -> None:
        """Report "no signal" `no_signal_after_s` after the last frame, whatever the reader is
        blocked in (a read or an open waits up to its own, longer, time-out)."""
        while True:
            wait = self._last_frame_time + self.no_signal_after_s - self._clock()
            if wait > 0:
                if self._stop.wait(wait):
                    return
                continue
            self._check_no_signal(f"no frames for {self.no_signal_after_s:g} s")
            if self._stop.wait(self.no_signal_after_s):
                return

    def _drop_inner(self, reason: str, signal_lost: bool = False) -> None:
        log.warning("%s: lost the stream (%s)", self.name, reason)
        try:
            self._inner.close()
        finally:
            self._inner = None
        # The next frame's pts continues after the last one, one nominal frame later.
        self._pts_offset = self._last_pts + 1.0 / (self._fps or 30.0)
        self._pts_base = None
        self._check_no_signal(reason, now=signal_lost)

    def _check_no_signal(self, reason: str, now: bool = False) -> None:
        with self._state_lock:
            if self._signal_lost_reported:
                return
            if now or self._clock() - self._last_frame_time >= self.no_signal_after_s:
                self._signal_lost_reported = True
                self._report("no signal", reason)

    _pts_base: float | None = None
    _fps: float | None = None

    def _renumber(self, frame: Frame) -> Frame:
        if self._pts_base is None:
            self._pts_base = frame.pts
        frame.index = self._next_index
        frame.pts = max(self._pts_offset + (frame.pts - self._pts_base), self._last_pts + 1e-6)
        self._next_index += 1
        self._last_pts = frame.pts
        self._last_frame_time = self._clock()
        self.counters["frames"] += 1
        if self._state != "playing":
            with self._state_lock:
                self._signal_lost_reported = False
                self._report("playing")
        return frame


class PacedSource(VideoSource):
    """Release another source's frames in real time by their pts (x `speed`), like a camera.

    For rehearsing live behaviour with recorded video (benchmarks, tests); wrap a
    `ReconnectingSource` over a file opener to loop a recording indefinitely.
    """

    is_live = True

    def __init__(self, inner: VideoSource, speed: float = 1.0, clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__()
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed!r}")
        self.inner = inner
        self.name = inner.name
        self.speed = speed
        self.counters = inner.counters
        # Behind by more than 0.25 s (the reader stalled): carry on in real time, no burst of late frames.
        self._media_clock = MediaClock(max_late_s=0.25, clock=clock)
        self._stop = threading.Event()

    @property
    def fps(self) -> float | None:
        return self.inner.fps

    @property
    def size(self) -> tuple[int, int] | None:
        return self.inner.size

    def read(self) -> Frame | None:
        frame = self.inner.read()
        if frame is None:
            return None
        wait = self._media_clock.delay(frame.pts, self.speed)
        if wait > 0 and self._stop.wait(wait):
            return None
        return frame

    def interrupt(self) -> None:
        self._stop.set()
        self.inner.interrupt()

    def close(self) -> None:
        self.inner.close()
