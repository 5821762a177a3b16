"""Network streams (rtsp, udp, srt, http(s), rtmp, tcp) through PyAV, with time-outs.

FFmpeg blocks forever on a dead stream unless told otherwise, so three layers bound every wait:
protocol options (`rw_timeout`/`timeout` in microseconds), PyAV's `timeout=(open, read)`, which
installs an interrupt callback that aborts a blocking open or read, and `interrupt()`, which
makes that callback fire at once when the pipeline stops. Losing the stream is handled by
`ReconnectingSource` (see `open_network`).
"""
from __future__ import annotations

import logging
import threading
import time
from urllib.parse import urlsplit

import av

from trainer.errors import SourceError

from ..types import Frame
from .base import ReconnectingSource, StateCallback, VideoSource
from .file import _ffmpeg_reason, frame_to_rgb

log = logging.getLogger(__name__)

NETWORK_SCHEMES = ("rtsp", "rtsps", "udp", "rtp", "srt", "http", "https", "rtmp", "tcp")


def redact(url: str) -> str:
    """The URL without a password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return parts._replace(netloc=netloc).geturl()
    return url


def stream_options(url: str, read_timeout_s: float, rtsp_transport: str = "tcp") -> dict[str, str]:
    """FFmpeg options that bound every network wait and keep latency low, per protocol."""
    scheme = urlsplit(url).scheme.lower()
    micro = str(int(read_timeout_s * 1_000_000))
    options = {"fflags": "nobuffer", "flags": "low_delay"}
    if scheme in ("rtsp", "rtsps"):
        options.update({"rtsp_transport": rtsp_transport, "timeout": micro})
    elif scheme in ("http", "https"):
        options.update({"rw_timeout": micro, "timeout": micro, "reconnect": "0"})
    elif scheme in ("udp", "rtp"):
        options.update({"timeout": micro, "overrun_nonfatal": "1", "fifo_size": "50000"})
    elif scheme == "srt":
        options.update({"rw_timeout": micro, "timeout": micro})
    else:
        options.update({"rw_timeout": micro})
    return options


class NetworkSource(VideoSource):
    """One connection to a stream; raises SourceError when it cannot open or the read times out."""

    is_live = True

    def __init__(self, url: str, *, open_timeout_s: float = 5.0, read_timeout_s: float = 2.0,
                 rtsp_transport: str = "tcp", extra_options: dict[str, str] | None = None) -> None:
        super().__init__()
        self.url = url
        self.name = redact(url)
        self._interrupted = threading.Event()
        options = stream_options(url, read_timeout_s, rtsp_transport)
        options.update(extra_options or {})
        try:
            self._container = av.open(url, mode="r", options=options, timeout=(open_timeout_s, read_timeout_s))
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise SourceError(f"{self.name}: cannot open stream ({_ffmpeg_reason(exc)})") from None
        if not self._container.streams.video:
            self._container.close()
            raise SourceError(f"{self.name}: stream has no video")
        self._stream = self._container.streams.video[0]
        # Slice threads only: frame threads add a frame of delay per thread.
        self._stream.codec_context.thread_type = "SLICE"
        self._packets = self._container.demux(self._stream)
        self._pending: list[av.VideoFrame] = []
        self._start = time.perf_counter()
        self._first_pts: float | None = None
        self._index = 0
        self._closed = False
        self._ended = False

    @property
    def fps(self) -> float | None:
        rate = self._stream.average_rate or self._stream.guessed_rate
        return float(rate) if rate else None

    @property
    def size(self) -> tuple[int, int]:
        return self._stream.codec_context.width, self._stream.codec_context.height

    def read(self) -> Frame | None:
        while not self._pending:
            if self._closed or self._interrupted.is_set():
                return None
            if self._ended:
                return None
            try:
                packet = next(self._packets)
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


def open_network(url: str, *, open_timeout_s: float = 5.0, read_timeout_s: float = 2.0,
                 rtsp_transport: str = "tcp", no_signal_after_s: float = 2.0,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 8.0,
                 on_state: StateCallback | None = None, connect_now: bool = True) -> ReconnectingSource:
    """A stream that reconnects by itself. The first connection is made at once (a wrong URL
    fails here with SourceError) unless `connect_now` is False."""
    def opener() -> VideoSource:
        return NetworkSource(url, open_timeout_s=open_timeout_s, read_timeout_s=read_timeout_s,
                             rtsp_transport=rtsp_transport)
    source = ReconnectingSource(opener, redact(url), no_signal_after_s=no_signal_after_s,
                                backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s,
                                on_state=on_state)
    if connect_now:
        source.open()
    return source
