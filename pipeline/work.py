"""The work item: one frame on its way through the analysis stages, with everything a stage
hands to the next. A stage reads what earlier stages wrote here and never another stage's own
state, so stages on different threads share nothing but the item they pass along."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .tracker import Track
from .types import Detection, Frame, TrackReport


@dataclass
class Work:
    """One frame on its way through preprocess -> detect -> track -> size -> smooth."""
    frame: Frame
    generation: int = 0                  # bumped by a seek: older work belongs to another stream
    analyse: bool = True                 # False: passes through (offline --every N)
    fov_mask: np.ndarray | None = None
    detections: list[Detection] = field(default_factory=list)
    tracks: list[Track] = field(default_factory=list)
    # Confirmed ids the tracker still remembers after this frame: later stages drop their own
    # per-track state for every other id (None: the frame was not tracked).
    remembered_ids: frozenset[int] | None = None
    frame_sizes: dict[int, float] = field(default_factory=dict)
    reports: list[TrackReport] | None = None

    @property
    def stamps(self) -> dict[str, float]:
        return self.frame.stamps
