"""Burnt-in overlays for exported video and snapshots (the viewer draws its own vectors).

Each confirmed track: its box coloured by size class, a label with the id, the smoothed size
with its interval and the class the interval admits (`track_label`, the one label the viewer, its
track panel and the burnt-in video all print, in the one `track_colour`); a coasting track (not
seen on this frame) is drawn dashed-thin.
Every frame carries the models' mark (`pipeline.provenance.model_mark`: synthetic-trained or
research model, not for clinical use), so an exported clip can never be mistaken for a
clinically valid result.
"""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.sizeclass import TRICLASS_NAMES

from .polyps import PolypHistory
from .provenance import mark_text
from .smoothing import SIZE_CLAIMS
from .types import SizeEstimate, TrackReport

# RGB, chosen to stay apart on pink/red mucosa: green, amber, magenta; cyan while the interval
# straddles a class boundary; grey before a size exists.
BOUNDARY_COLOUR = (90, 210, 255)
CLASS_COLOURS: dict[str | None, tuple[int, int, int]] = {
    "diminutive": (60, 220, 90),
    "small": (255, 190, 40),
    "large": (255, 60, 200),
    None: (200, 200, 200),
    **{claim: BOUNDARY_COLOUR for claim in SIZE_CLAIMS.values() if claim not in TRICLASS_NAMES},
}
assert set(SIZE_CLAIMS.values()) <= set(CLASS_COLOURS)


def track_colour(track: TrackReport | PolypHistory) -> tuple[int, int, int]:
    """The colour of a track's box, label and panel row: its class, grey before a size exists."""
    return CLASS_COLOURS[track.estimate.size_class if track.estimate is not None else None]


def size_text(est: SizeEstimate, dash: str = "-") -> str:
    """"6.5 mm [4.8-8.0] diminutive or small": size, interval and the class they admit, from one
    estimate (so they cannot disagree); `dash` for fonts that have an en dash."""
    return f"{est.size_mm:.1f} mm [{est.low_mm:.1f}{dash}{est.high_mm:.1f}] {est.size_class}"


def track_label(track: TrackReport | PolypHistory, dash: str = "-", gap: str = " ") -> str:
    """"#3 6.5 mm [4.8-8.0] diminutive or small" ("#3 sizing..." before a size exists): the
    label of a track's box (burnt in and in the viewer) and of its panel row; `dash` and `gap`
    are typography only."""
    est = track.estimate
    return f"#{track.track_id}{gap}{'sizing...' if est is None else size_text(est, dash)}"


def _text(image: np.ndarray, text: str, org: tuple[int, int], scale: float, colour, thickness: int,
          background=(0, 0, 0)) -> None:
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    if w > image.shape[1] - 4:      # small frames: shrink the text to fit rather than cut it
        scale *= (image.shape[1] - 4) / w
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x, y = org
    x = max(0, min(x, image.shape[1] - w - 2))
    y = max(h + 2, min(y, image.shape[0] - base - 2))
    cv2.rectangle(image, (x - 1, y - h - 2), (x + w + 1, y + base), background, -1)
    cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)


def draw_overlay(image: np.ndarray, tracks: list[TrackReport], *, synthetic: bool | str = False,
                 line_width: int = 0, copy: bool = True) -> np.ndarray:
    """The frame (RGB uint8) with the tracks drawn; a new array unless `copy=False`.
    synthetic: the models' mark (model_info["mark"]), or True for the synthetic-only mark."""
    out = image.copy() if copy else image
    height, width = out.shape[:2]
    scale = max(0.35, min(width, height) / 900.0)
    thick = line_width or max(1, round(min(width, height) / 360))
    for report in tracks:
        if not report.confirmed:
            continue
        colour = track_colour(report)
        x1, y1, x2, y2 = (int(round(v)) for v in report.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick if report.missed == 0 else max(1, thick // 2),
                      cv2.LINE_AA)
        _text(out, track_label(report), (x1, y1 - 4), scale, colour, max(1, thick // 2))
    if mark_text(synthetic):
        # Bottom right: endoscopy towers print their own text on the left of the black border.
        _text(out, mark_text(synthetic), (width, height - 6), scale * 0.9, (255, 255, 255), max(1, thick // 2),
              background=(160, 0, 0))
    return out
