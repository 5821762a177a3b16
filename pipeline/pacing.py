"""Releasing frames at their media time: the one clock that replay, paced sources and the demo
share (a frame with media time `pts` is due at t0 + (pts - pts0) / speed)."""
from __future__ import annotations

import time
from typing import Callable


class MediaClock:
    """`delay(pts, speed)` -> seconds to wait before the frame with that media time is due.

    The first frame (and the first after `resync()`: a seek, a pause, a new speed) is due at
    once and anchors the clock. `max_late_s`: a frame due longer ago than that (the reader
    stalled) re-anchors the clock instead, so the backlog is not released in a burst, as a camera
    would carry on. `max_wait_s`: a longer wait (a jump forward in media time) is cut to that and
    the next frame re-anchors, so a gap in a recording does not freeze the picture.
    """

    def __init__(self, *, max_late_s: float | None = None, max_wait_s: float | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.max_late_s = max_late_s
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._t0: float | None = None
        self._pts0 = 0.0

    def resync(self) -> None:
        self._t0 = None

    def delay(self, pts: float, speed: float = 1.0) -> float:
        now = self._clock()
        if self._t0 is None:
            self._t0, self._pts0 = now, pts
        wait = self._t0 + (pts - self._pts0) / speed - now
        if self.max_late_s is not None and wait < -self.max_late_s:
            self._t0, self._pts0, wait = now, pts, 0.0
        if self.max_wait_s is not None and wait > self.max_wait_s:
            self._t0, wait = None, self.max_wait_s
        return wait
