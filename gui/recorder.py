"""Recording what the viewer receives to H.264 MP4, raw or with the overlay burnt in.

Crash-safe: the file is a fragmented MP4 (pipeline.videowriter.H264Writer(fragmented=True)) with a
keyframe every second, written straight to its final name, so a recording survives the program
being killed up to its last second. Frames are offered from the pipeline's output thread and
encoded on the recorder's own thread; when the encoder falls behind, frames are dropped and
counted rather than ever holding up the video.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.types import FrameResult
from pipeline.errors import DataError
from pipeline.videowriter import H264Writer

log = logging.getLogger(__name__)

RECORD_MODES = ("annotated", "raw")


@dataclass
class RecordingSummary:
    path: Path
    mode: str
    frames_written: int
    frames_dropped: int
    error: str | None = None


def even_crop(image: np.ndarray) -> np.ndarray:
    """H.264 (yuv420p) needs even sides: drop a last odd row/column (a view, no copy)."""
    height, width = image.shape[:2]
    return image[:height - height % 2, :width - width % 2]


class Recorder:
    """`Recorder(path, mode="annotated", fps=30).offer(result)` from any thread; `stop()` to finish.

    `queue_seconds` of frames may wait for the encoder; beyond that frames are dropped (counted).
    Timestamps follow the frames' media time; a jump (a seek, a reconnect) continues the recording
    one frame later instead of leaving a gap or going backwards.
    """

    def __init__(self, path: str | Path, *, mode: str = "annotated", fps: float = 30.0,
                 synthetic: bool = False, crf: int = 20, queue_seconds: float = 2.0,
                 keyframe_interval_s: float = 1.0) -> None:
        if mode not in RECORD_MODES:
            raise ValueError(f"record mode must be one of {RECORD_MODES}, got {mode!r}")
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise DataError(f"{self.path}: recordings are MP4 files (give a path ending in .mp4)")
        if self.path.is_dir():
            raise DataError(f"{self.path}: is a directory, not a recording file name")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.synthetic = synthetic
        self.crf = crf
        self.keyframe_interval_s = keyframe_interval_s
        self.frames_written = 0
        self.frames_dropped = 0
        self.error: str | None = None
        self._queue: queue.Queue[FrameResult | None] = queue.Queue(maxsize=max(2, round(self.fps * queue_seconds)))
        self._writer: H264Writer | None = None
        self._pts_shift = 0.0
        self._last_pts: float | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="hagview-recorder", daemon=True)
        self._thread.start()

    @property
    def active(self) -> bool:
        return not self._stopping and self.error is None

    def offer(self, result: FrameResult) -> bool:
        """Queue a frame for encoding; never blocks. False when it was dropped."""
        if not self.active:
            return False
        try:
            self._queue.put_nowait(result)
            return True
        except queue.Full:
            self.frames_dropped += 1
            return False

    def stop(self, timeout: float = 10.0) -> RecordingSummary:
        """Encode what is queued, finish the file and return what was written (blocks: call it
        off the GUI thread)."""
        if not self._stopping:
            self._stopping = True
            self._queue.put(None)
        self._thread.join(timeout)
        return RecordingSummary(self.path, self.mode, self.frames_written, self.frames_dropped, self.error)

    # --- the encoder thread ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                result = self._queue.get()
                if result is None:
                    break
                self._write(result)
            if self._writer is not None:
                self._writer.close()
        except Exception as exc:    # shown in the window; what was written stays playable
            self.error = f"{self.path}: recording stopped: {exc}"
            log.error("%s", self.error)
            if self._writer is not None:
                self._writer.abort()

    def _write(self, result: FrameResult) -> None:
        image = even_crop(result.frame.image)
        if self.mode == "annotated":
            image = self._annotate(result, image)
        if self._writer is None:
            height, width = image.shape[:2]
            self._writer = H264Writer(self.path, self.fps, (width, height), crf=self.crf, fragmented=True,
                                      keyframe_interval_s=self.keyframe_interval_s)
            self._pts_shift = -result.frame.pts
        elif image.shape[:2] != (self._writer.size[1], self._writer.size[0]):
            raise DataError(f"the frame size changed to {image.shape[1]}x{image.shape[0]} "
                            f"(recording is {self._writer.size[0]}x{self._writer.size[1]})")
        pts = result.frame.pts + self._pts_shift
        step = 1.0 / self.fps
        if self._last_pts is not None and not (self._last_pts < pts <= self._last_pts + 1.0):
            self._pts_shift += self._last_pts + step - pts       # continue one frame later
            pts = self._last_pts + step
        self._writer.write(np.ascontiguousarray(image), pts)
        self._last_pts = pts
        self.frames_written += 1

    def _annotate(self, result: FrameResult, image: np.ndarray) -> np.ndarray:
        # The viewer's own vector overlay, drawn at full resolution (QPainter on a QImage is
        # allowed off the GUI thread), so the recording shows what the screen shows.
        from .video import qimage_to_rgb, render_annotated

        return even_crop(qimage_to_rgb(render_annotated(result, synthetic=self.synthetic)))
