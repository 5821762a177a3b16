"""Live input through PyAV, shared by capture devices and network streams.

Every wait is bounded (PyAV's `timeout=(open, read)` installs an interrupt callback that aborts
a blocking open or read; `interrupt()` makes it fire at once when the pipeline stops), decoding
uses slice threads only (frame threads add a frame of delay per thread), timestamps count from
the first frame, and a damaged packet is skipped and counted rather than ending the stream.
"""
from __future__ import annotations

import threading
import time

import av

from pipeline.errors import SourceError

from ..types import Frame
from .base import VideoSource
from .file import _ffmpeg_reason, frame_to_rgb


class LiveAVSource(VideoSource):
    """One open live input; raises SourceError when it cannot open or a read fails."""

    is_live = True

    def __init__(self, target: str, name: str, *, options: dict[str, str], open_timeout_s: float,
                 read_timeout_s: float, av_format: str | None = None, what: str = "stream") -> None:
        super().__init__()
        self.name = name
        self._interrupted = threading.Event()
        self._closed = False
        self._ended = False
        try:
            self._container = av.open(target, format=av_format, options=options,
                                      timeout=(open_timeout_s, read_timeout_s))
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise SourceError(f"{name}: cannot open {what} ({_ffmpeg_reason(exc)})") from None
        if not self._container.streams.video:
            self._container.close()
            raise SourceError(f"{name}: {what} has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.codec_context.thread_type = "SLICE"
        self._read_timeout_s = read_timeout_s
        self._packets = self._container.demux(self._stream)
        self._pending: list[av.VideoFrame] = []
        self._start = time.perf_counter()
        self._first_pts: float | None = None
        self._index = 0

    @property
    def fps(self) -> float | None:
        rate = self._stream.average_rate or self._stream.guessed_rate
        return float(rate) if rate else None

    @property
    def size(self) -> tuple[int, int]:
        return self._stream.codec_context.width, self._stream.codec_context.height

    def read(self) -> Frame | None:
        while not self._pending:
            if self._closed or self._interrupted.is_set() or self._ended:
                return None
            asked = time.perf_counter()
            try:
                packet = next(self._packets)
                if time.perf_counter() - asked >= self._read_timeout_s:
                    # Only a read that ran into the time-out blocks this long; what comes out then is
                    # what the demuxer still held (MPEG-TS flushes its last packet), seconds old.
                    raise SourceError(f"{self.name}: no data for {self._read_timeout_s:g} s")
            except StopIteration:
                packet = None     # the sender finished: flush the frames the decoder holds
                self._ended = True
            except (av.error.FFmpegError, OSError) as exc:
                if self._interrupted.is_set():
                    return None
                raise SourceError(f"{self.name}: read failed ({_ffmpeg_reason(exc)})") from None
            try:
                self._pending = list(self._stream.codec_context.decode(
                    packet if packet is not None and packet.size else None))
            except av.error.EOFError:
                self._pending = []
            except (av.error.FFmpegError, ValueError):
                self.counters["corrupt_packets"] += 1
        av_frame = self._pending.pop(0)
        seconds = av_frame.time
        if seconds is None:
            seconds = time.perf_counter() - self._start
        if self._first_pts is None:
            self._first_pts = seconds
        frame = Frame(index=self._index, pts=max(0.0, seconds - self._first_pts), image=frame_to_rgb(av_frame))
        self._index += 1
        self.counters["frames"] += 1
        return frame

    def interrupt(self) -> None:
        self._interrupted.set()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._container.close()
