"""Which ground-truth polyp boxes are "difficult" (Pascal VOC's flag), defined once.

A box is difficult when less than half of the polyp is in view (cut by the field-of-view
border, hidden behind a fold) or when its short side is under 5% of the frame width (a polyp
far down the lumen: a few blurred pixels, 16 px on a 320 px frame, 32 px on 640 px). Such
boxes are what an endoscopist would not hold a detector to, and too small to size anyway.
The synthetic writer stores the flag in its VOC XML and gt.json; training treats a difficult
box as an ignore region and the metrics count it neither as a hit nor a miss (VOC), so the
same boxes are excused in training, validation and tests.
"""
from __future__ import annotations

from collections.abc import Sequence

MIN_VISIBLE_FRACTION = 0.5        # at least half the polyp in view
MIN_SHORT_SIDE_FRACTION = 0.05    # box short side, as a fraction of the frame width


def is_difficult_box(box: Sequence[float], visible_fraction: float, frame_width: int) -> bool:
    """True when a polyp box (x1, y1, x2, y2 in frame pixels) is hard to see (module docstring)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    short_side = min(x2 - x1, y2 - y1)
    return bool(visible_fraction < MIN_VISIBLE_FRACTION
                or short_side < MIN_SHORT_SIDE_FRACTION * float(frame_width))
