"""Data that travels between pipeline stages, the annotator and the viewer.

Images are always RGB uint8, HxWx3, C-contiguous. Boxes are float (x1, y1, x2, y2) in pixels of
the frame they belong to. Times: `pts` is media time in seconds (from the container), stamps are
`time.perf_counter()` values taken when a stage finished with the frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class GroundTruthBox:
    polyp_id: int
    box: tuple[float, float, float, float]
    diameter_mm: float
    distance_mm: float = float("nan")
    visible_fraction: float = 1.0


@dataclass
class Frame:
    index: int                 # 0-based position in the source
    pts: float                 # media time in seconds
    image: np.ndarray          # RGB uint8 HxWx3
    stamps: dict[str, float] = field(default_factory=dict)   # stage name -> perf_counter()
    ground_truth: list[GroundTruthBox] | None = None         # demo / synthetic sources only

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        return self.image.shape[1], self.image.shape[0]


@dataclass
class Detection:
    box: tuple[float, float, float, float]
    score: float


@dataclass
class SizeEstimate:
    """A track's smoothed size: median-like estimate with an uncertainty interval, in mm."""
    size_mm: float
    low_mm: float
    high_mm: float
    size_class: str            # one of pipeline.sizeclass.TRICLASS_NAMES (shown with hysteresis)
    frames_used: int = 0


@dataclass
class TrackReport:
    """One track as it stands on one frame."""
    track_id: int
    box: tuple[float, float, float, float]
    score: float
    confirmed: bool
    frame_size_mm: float | None        # this frame's sizer output (None: not sized this frame)
    estimate: SizeEstimate | None      # smoothed over the track so far
    quality: float                     # 0..1: border cut, blur, confidence folded together
    missed: int = 0                    # frames since last matched detection (0: seen now)


@dataclass
class FrameResult:
    """What outputs receive: the frame, and the newest overlay available when it was emitted."""
    frame: Frame
    tracks: list[TrackReport]
    overlay_frame_index: int           # frame the overlay was computed on (<= frame.index live)
    display: Any = None                # the live consumer's prepared form of the frame (the
                                       # viewer: its display-sized pixels), see LivePipeline

    @property
    def overlay_age_frames(self) -> int:
        return self.frame.index - self.overlay_frame_index
