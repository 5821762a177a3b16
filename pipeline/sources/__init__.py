"""Video sources: files, capture devices, network streams and the synthetic demo.

`open_source(spec, config)` picks the kind from the spec: "demo"; "/dev/videoN", "N" or
"v4l2:..." (capture device); "rtsp://", "udp://", "srt://", "http(s)://", ... (network
stream); anything else is a file path. Live kinds come back wrapped in `ReconnectingSource`;
with `live=True` (the viewer) an absent capture device is waited for instead of failing.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from pipeline.errors import SourceError

from .base import ReconnectingSource, SourceAbsent, SourceStatus, StateCallback, VideoSource
from .capture import is_capture_spec, open_capture
from .file import FileSource
from .network import NETWORK_SCHEMES, open_network

__all__ = ["open_source", "source_kind", "VideoSource", "FileSource", "ReconnectingSource",
           "SourceStatus", "SourceError", "SourceAbsent"]


def source_kind(spec: str) -> str:
    """"demo" | "capture" | "network" | "file"."""
    spec = str(spec)
    if spec == "demo":
        return "demo"
    if is_capture_spec(spec):
        return "capture"
    scheme = urlsplit(spec).scheme.lower()
    if scheme in NETWORK_SCHEMES:
        return "network"
    if "://" in spec:
        raise SourceError(f"{spec}: unsupported stream scheme {scheme!r} (known: {', '.join(NETWORK_SCHEMES)})")
    return "file"


def open_source(spec: str, config=None, *, live: bool = True, on_state: StateCallback | None = None) -> VideoSource:
    """Open a source from its spec; `config` is a `pipeline.config.SourceConfig` (defaults if None).

    `live=False` is offline work: files decode with frame threads, the demo is not paced, and
    an absent capture device is an error. Raises SourceError (one line, naming the source)
    when it cannot be opened.
    """
    if config is None:
        from ..config import SourceConfig
        config = SourceConfig()
    kind = source_kind(spec)
    if kind == "demo":
        from .demo import DemoSource
        return DemoSource(preset=config.demo_preset, seed=config.demo_seed, paced=live,
                          loop=config.demo_loop and live)
    if kind == "capture":
        return open_capture(spec, width=config.width, height=config.height, fps=config.fps,
                            pixel_format=config.pixel_format, buffers=config.buffers,
                            backend=config.capture_backend, open_timeout_s=config.open_timeout_s,
                            read_timeout_s=config.read_timeout_s, no_signal_after_s=config.no_signal_after_s,
                            backoff_initial_s=config.reconnect_initial_s, backoff_max_s=config.reconnect_max_s,
                            on_state=on_state, wait_for_device=live)
    if kind == "network":
        return open_network(spec, open_timeout_s=config.open_timeout_s, read_timeout_s=config.read_timeout_s,
                            rtsp_transport=config.rtsp_transport, no_signal_after_s=config.no_signal_after_s,
                            backoff_initial_s=config.reconnect_initial_s, backoff_max_s=config.reconnect_max_s,
                            on_state=on_state)
    return FileSource(spec, threaded=config.threaded_decoding and not live)
