"""Network streams (rtsp, udp, srt, http(s), rtmp, tcp) through PyAV, with time-outs.

FFmpeg blocks forever on a dead stream unless told otherwise, so three layers bound every wait:
protocol options (`rw_timeout`/`timeout` in microseconds), PyAV's `timeout=(open, read)`, which
installs an interrupt callback that aborts a blocking open or read, and `interrupt()`, which
makes that callback fire at once when the pipeline stops. Losing the stream is handled by
`ReconnectingSource` (see `open_network`).
"""
from __future__ import annotations

import logging
from urllib.parse import urlsplit

from pipeline.errors import SourceError

from .base import ReconnectingSource, StateCallback, VideoSource
from .live_av import LiveAVSource

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
    # analyzeduration: the stream's parameters from 0.5 s of it (FFmpeg's default probing kept an
    # RTSP open, and so each reconnect, waiting about 1 s longer; measured in bench_reconnect).
    options = {"fflags": "nobuffer", "flags": "low_delay", "analyzeduration": "500000"}
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


class NetworkSource(LiveAVSource):
    """One connection to a stream; raises SourceError when it cannot open or the read times out."""

    def __init__(self, url: str, *, open_timeout_s: float = 5.0, read_timeout_s: float = 2.0,
                 rtsp_transport: str = "tcp", extra_options: dict[str, str] | None = None) -> None:
        options = stream_options(url, read_timeout_s, rtsp_transport)
        options.update(extra_options or {})
        try:
            super().__init__(url, redact(url), options=options, open_timeout_s=open_timeout_s,
                             read_timeout_s=read_timeout_s, what="stream")
        except SourceError as exc:
            if "Protocol not found" not in str(exc):
                raise
            scheme = urlsplit(url).scheme.lower()    # e.g. srt: PyAV's wheels are built without libsrt
            raise SourceError(f"{redact(url)}: the FFmpeg inside PyAV cannot read {scheme}:// streams "
                              f"(built without that protocol)") from None
        self.url = url


def open_network(url: str, *, open_timeout_s: float = 5.0, read_timeout_s: float = 2.0,
                 rtsp_transport: str = "tcp", no_signal_after_s: float = 1.0,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 2.0,
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
