"""Progress for long work: items done, rate and time left, on one refreshed stderr line."""
from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "--:--"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """`with Progress(total, 'frames') as p: p.update(1)` prints `label 120/900 frames 58.1 fps ETA 00:13`.

    Output is throttled to `interval` seconds; on a terminal the line is rewritten in place,
    elsewhere (CI logs) a new line is printed each time. `enabled=False` silences it.
    """

    def __init__(self, total: int | None, unit: str = "items", label: str = "", *,
                 stream: TextIO | None = None, interval: float = 0.5, enabled: bool = True,
                 rate_unit: str | None = None):
        self.total = total
        self.unit = unit
        self.label = label
        self.stream = stream or sys.stderr
        self.interval = interval
        self.enabled = enabled
        self.rate_unit = rate_unit or f"{unit}/s"
        self.done = 0
        self.extra = ""
        self._start = time.perf_counter()
        self._last = 0.0
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self._start
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        parts = [self.label] if self.label else []
        if self.total:
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            parts.append(f"{self.done}/{self.total} {self.unit}")
            parts.append(f"{rate:.1f} {self.rate_unit}")
            parts.append(f"ETA {format_seconds(left)}")
        else:
            parts.append(f"{self.done} {self.unit}")
            parts.append(f"{rate:.1f} {self.rate_unit}")
        if self.extra:
            parts.append(self.extra)
        return " ".join(parts)

    def update(self, n: int = 1, extra: str | None = None) -> None:
        self.done += n
        if extra is not None:
            self.extra = extra
        now = time.perf_counter()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            self._emit()

    def _emit(self, final: bool = False) -> None:
        text = self.line()
        if self._tty:
            self.stream.write("\r" + text + ("\n" if final else "\x1b[K"))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._emit(final=True)
            self.enabled = False
