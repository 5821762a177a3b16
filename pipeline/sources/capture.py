"""Capture devices (V4L2: `/dev/videoN` or an index) with an explicit, checked format.

Drivers otherwise hand back their default size and frame rate, and a deep buffer queue hands
back stale frames, so width, height, frame rate and pixel format (MJPG or YUYV) are always
requested explicitly, and what the driver actually delivers is checked against the request.

Two backends:
- "pyav" (default): FFmpeg's v4l2 demuxer with `video_size`, `framerate`, `input_format`; reads
  are bounded by PyAV's read time-out, so a pulled cable surfaces within `read_timeout_s`.
  FFmpeg does not expose the driver buffer count; the pipeline reads continuously into a
  latest-wins slot, so frames never wait in user space.
- "opencv": cv2.VideoCapture(CAP_V4L2) with CAP_PROP_BUFFERSIZE (a small driver queue), FOURCC,
  size and fps, for drivers FFmpeg's demuxer handles badly.
Losing the device is handled by `ReconnectingSource` (see `open_capture`).
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np

from pipeline.errors import SourceError

from ..types import Frame
from .base import ReconnectingSource, SourceAbsent, StateCallback, VideoSource
from .live_av import LiveAVSource

log = logging.getLogger(__name__)

_FOURCC = {"mjpeg": "MJPG", "yuyv422": "YUYV"}


def device_path(spec: str | int) -> str:
    """'0' or 0 -> '/dev/video0'; '/dev/videoN' stays as it is."""
    text = str(spec)
    if re.fullmatch(r"\d+", text):
        return f"/dev/video{text}"
    return text


def is_capture_spec(spec: str) -> bool:
    return bool(re.fullmatch(r"\d+", spec)) or spec.startswith("/dev/video") or spec.startswith("v4l2:")


class PyAVCapture(LiveAVSource):
    """One open V4L2 device through FFmpeg; raises SourceError when it cannot open or read."""

    def __init__(self, device: str, *, width: int = 1920, height: int = 1080, fps: float = 30.0,
                 pixel_format: str = "mjpeg", open_timeout_s: float = 5.0, read_timeout_s: float = 2.0) -> None:
        if not Path(device).exists():
            raise SourceAbsent(f"{device}: no such capture device")
        options = {}
        if width and height:
            options["video_size"] = f"{width}x{height}"
        if fps:
            options["framerate"] = f"{fps:g}"
        if pixel_format:
            options["input_format"] = pixel_format
        self.requested = (width, height, fps, pixel_format)
        super().__init__(device, device, options=options, open_timeout_s=open_timeout_s,
                         read_timeout_s=read_timeout_s, av_format="v4l2",
                         what=f"capture device with {options}")
        delivered = self.size
        if width and height and delivered != (width, height):
            log.warning("%s: asked for %dx%d, the driver delivers %dx%d", device, width, height, *delivered)


class OpenCVCapture(VideoSource):
    """One open V4L2 device through OpenCV, with a small driver buffer queue."""

    is_live = True

    def __init__(self, device: str, *, width: int = 1920, height: int = 1080, fps: float = 30.0,
                 pixel_format: str = "mjpeg", buffers: int = 2, read_timeout_s: float = 2.0) -> None:
        super().__init__()
        import cv2

        self._cv2 = cv2
        self.name = device
        if not Path(device).exists():
            raise SourceAbsent(f"{device}: no such capture device")
        cap = cv2.VideoCapture(device, cv2.CAP_V4L2)
        if not cap.isOpened():
            raise SourceError(f"{device}: OpenCV cannot open the capture device")
        fourcc = _FOURCC.get(pixel_format)
        if fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*fourcc))
        if width and height:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        if fps:
            cap.set(cv2.CAP_PROP_FPS, fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, buffers)
        if hasattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC"):
            cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_timeout_s * 1000.0)
        got = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        if width and height and got != (width, height):
            log.warning("%s: asked for %dx%d, the driver delivers %dx%d", device, width, height, *got)
        self._cap = cap
        self._fps = cap.get(cv2.CAP_PROP_FPS) or None
        self._size = got
        self._index = 0
        self._start = time.perf_counter()

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def read(self) -> Frame | None:
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            raise SourceError(f"{self.name}: no frames (the device stopped delivering)")
        image = np.ascontiguousarray(bgr[:, :, ::-1])
        frame = Frame(index=self._index, pts=time.perf_counter() - self._start, image=image)
        self._index += 1
        self.counters["frames"] += 1
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def open_capture(spec: str | int, *, width: int = 1920, height: int = 1080, fps: float = 30.0,
                 pixel_format: str = "mjpeg", buffers: int = 2, backend: str = "pyav",
                 open_timeout_s: float = 5.0, read_timeout_s: float = 2.0,
                 no_signal_after_s: float = 1.0, backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 2.0, on_state: StateCallback | None = None,
                 connect_now: bool = True, wait_for_device: bool = False) -> ReconnectingSource:
    """A capture device that reconnects by itself after the signal is lost.

    The first open happens now (`connect_now`): a device that is there but cannot be opened
    fails here with SourceError. An absent device fails too, unless `wait_for_device` (the
    viewer): then the source reports "no signal: waiting for /dev/videoN" and connects when the
    device appears.
    """
    device = device_path(spec[5:] if isinstance(spec, str) and spec.startswith("v4l2:") else spec)
    if backend not in ("pyav", "opencv"):
        raise SourceError(f"{device}: unknown capture backend {backend!r} (pyav or opencv)")

    def opener() -> VideoSource:
        if backend == "opencv":
            return OpenCVCapture(device, width=width, height=height, fps=fps, pixel_format=pixel_format,
                                 buffers=buffers, read_timeout_s=read_timeout_s)
        return PyAVCapture(device, width=width, height=height, fps=fps, pixel_format=pixel_format,
                           open_timeout_s=open_timeout_s, read_timeout_s=read_timeout_s)

    source = ReconnectingSource(opener, device, no_signal_after_s=no_signal_after_s,
                                backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s,
                                on_state=on_state)
    if connect_now:
        source.open(wait_if_absent=wait_for_device)
    return source
