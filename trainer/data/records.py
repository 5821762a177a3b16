"""What every dataset reader yields: frames with boxes, per-box sizing samples, and what was skipped.

Readers for REAL-Colon, SUN and CSV manifests all produce a `DatasetIndex`, so the rest of the
trainer never knows which layout the data came from.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

Box = tuple[float, float, float, float]

log = logging.getLogger("hagview.data")

# Warnings name each skipped file; past this many per reader the rest are summarised in one line.
MAX_SKIP_WARNINGS = 25


@dataclass(frozen=True, slots=True)
class BoxAnnotation:
    box: Box            # (x1, y1, x2, y2) pixels
    polyp_id: str
    # Pascal VOC's flag: a box nobody should be held to finding (trainer.synth.difficulty).
    # The detector ignores it in training and the metrics count it neither as hit nor miss.
    difficult: bool = False


@dataclass(frozen=True, slots=True)
class FrameRecord:
    image_path: str
    video: str
    frame_index: int
    image_size: tuple[int, int] | None      # (width, height) when known
    boxes: tuple[BoxAnnotation, ...]        # empty: a negative frame
    # The continuous sub-sequence of `video` the frame belongs to ("" = the whole video is one
    # clip). A SUN case holds several recordings whose image numbers restart: each is a clip for
    # tracking and detection delays, while the case stays one video for splits.
    clip: str = ""
    # The data set (and centre) the frame comes from, e.g. "kvasir_seg", "polypgen/C3": for
    # per-source sampling weights, per-data-set metrics and centre-grouped folds. `video` is
    # the group whose frames must stay in one fold (a video, a patient, a sequence).
    source: str = ""


@dataclass(frozen=True, slots=True)
class SampleRecord:
    """One polyp box on one frame: what the sizer trains on."""
    image_path: str
    video: str
    frame_index: int
    box: Box
    polyp_id: str
    size_mm: float
    image_size: tuple[int, int] | None


class Skip(NamedTuple):
    file: str
    reason: str


@dataclass
class DatasetIndex:
    frames: list[FrameRecord] = field(default_factory=list)
    samples: list[SampleRecord] = field(default_factory=list)
    polyp_sizes: dict[str, float] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)
    # Things used as they are but worth a look (e.g. official boxes that disagree with masks).
    warnings: list[Skip] = field(default_factory=list)
    # Sampling weight per data set (`trainer.data.detection.source_key`), from `data.sources`.
    source_weights: dict[str, float] = field(default_factory=dict)

    def samples_by_polyp(self) -> dict[str, list[SampleRecord]]:
        out: dict[str, list[SampleRecord]] = {}
        for s in self.samples:
            out.setdefault(s.polyp_id, []).append(s)
        return out

    def skip_counts(self) -> Counter:
        """Skips grouped by the kind of problem (the reason up to its first ':')."""
        return Counter(s.reason.split(":")[0] for s in self.skipped)

    def summary(self) -> str:
        negatives = sum(1 for f in self.frames if not f.boxes)
        text = (f"{len(self.frames)} frames ({negatives} negative), {len(self.samples)} samples, "
                f"{len(self.polyp_sizes)} polyps with sizes")
        if self.skipped:
            text += f", {len(self.skipped)} skipped"
        return text


class SkipLog:
    """Collects skips for one reader run and logs a warning naming each file and reason."""

    def __init__(self, source: str):
        self.source = source
        self.skips: list[Skip] = []

    def add(self, file, reason: str) -> None:
        skip = Skip(str(file), reason)
        self.skips.append(skip)
        if len(self.skips) <= MAX_SKIP_WARNINGS:
            log.warning("%s: skipped %s: %s", self.source, skip.file, reason)

    def finish(self) -> list[Skip]:
        extra = len(self.skips) - MAX_SKIP_WARNINGS
        if extra > 0:
            log.warning("%s: ... and %d more skipped (see DatasetIndex.skipped)", self.source, extra)
        return self.skips


_NUMBER = r"(\d+(?:[.,]\d+)?)"
_EXACT = re.compile(rf"^{_NUMBER}\s*(?:mm)?$")
# "15mm-" (SUN's way of writing "15 mm or more"), ">=15", "≥15 mm", "15+"
_LOWER_BOUND = re.compile(rf"^(?:>=?|≥)?\s*{_NUMBER}\s*(?:mm)?\s*(?:-|\+|or more)?$")


def parse_size_mm(text, *, accept_lower_bound: bool = True) -> float:
    """Polyp size in mm from table text: `6`, `6.5`, `6mm`, `6 mm`, `6,5 mm`.

    A lower bound such as SUN's `15mm-` (15 mm or more) is taken as its bound when
    `accept_lower_bound`: the size class stays right and the regression target is conservative.
    An upper bound (`<5`), a range, an empty cell or anything else raises ValueError whose
    message says what was wrong, for the reader to turn into a skip.
    """
    raw = "" if text is None else str(text)
    s = raw.strip().lower()
    if not s:
        raise ValueError("size is empty")
    m = _EXACT.match(s)
    if m is None and accept_lower_bound and not s.startswith("<"):
        m = _LOWER_BOUND.match(s)
    if m is None:
        raise ValueError(f"size {raw.strip()!r} is not a number of mm")
    value = float(m.group(1).replace(",", "."))
    if not value > 0:
        raise ValueError(f"size {raw.strip()!r} is not positive")
    return value


def polyp_sizes(rows: Iterable[tuple[str, str]], *, accept_lower_bound: bool = True
                ) -> tuple[dict[str, float], dict[str, str]]:
    """(sizes in mm, reasons) from a size table's (polyp id, size cell) rows.

    A polyp whose size does not parse, or that is listed twice with two different sizes, is left
    out of `sizes` and its reason is in the second dict, for the reader to report its frames.
    """
    sizes: dict[str, float] = {}
    bad: dict[str, str] = {}
    for polyp, cell in rows:
        try:
            size = parse_size_mm(cell, accept_lower_bound=accept_lower_bound)
        except ValueError as exc:
            bad[polyp] = str(exc)
            continue
        if polyp in sizes and sizes[polyp] != size:
            bad[polyp] = f"listed twice: {sizes[polyp]:g} mm and {size:g} mm"
        sizes[polyp] = size
    for polyp in bad:
        sizes.pop(polyp, None)
    return sizes, bad


def check_box(box: Box, image_size: tuple[int, int] | None) -> tuple[Box | None, str]:
    """Validate a box against its image: returns (box, "") or (None, reason).

    Annotators' boxes often overshoot the frame by a few pixels; a box is clipped to the image
    when at least half of its area lies inside, and rejected when more lies outside (that is
    a wrong box or a wrong image, not a rounding slip). Boxes under 2 px wide or high are rejected.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(v == v and abs(v) != float("inf") for v in (x1, y1, x2, y2)):
        return None, f"box {box} has a non-finite coordinate"
    if x2 <= x1 or y2 <= y1:
        return None, f"box {_fmt(box)} has x2 <= x1 or y2 <= y1"
    if image_size is not None:
        w, h = image_size
        cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
        inside = max(cx2 - cx1, 0.0) * max(cy2 - cy1, 0.0)
        if inside < 0.5 * (x2 - x1) * (y2 - y1):
            return None, f"box {_fmt(box)} is outside the {w}x{h} image"
        x1, y1, x2, y2 = cx1, cy1, cx2, cy2
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None, f"box {_fmt(box)} is smaller than 2 px"
    return (x1, y1, x2, y2), ""


def _fmt(box) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in box) + ")"


def trailing_int(stem: str) -> int | None:
    """Frame number at the end of a file stem (`001-001_152` -> 152, `image_0007` -> 7)."""
    m = re.search(r"(\d+)$", stem)
    return int(m.group(1)) if m else None


def frame_sort_key(path: Path):
    """Frame files in frame-number order (`x_2` before `x_10`), then by name."""
    n = trailing_int(path.stem)
    return (n if n is not None else -1, path.name)


def finish_index(index: DatasetIndex, skips: SkipLog, *, sizes: dict[str, float],
                 unsized: dict[str, int], bad_sizes: dict[str, str], size_file, not_listed: str) -> DatasetIndex:
    """Close a reader's index: report polyps whose boxes had no usable size, keep the sizes of
    the polyps that have samples, and hand over the skip log."""
    for polyp, count in sorted(unsized.items()):
        why = bad_sizes.get(polyp, not_listed)
        skips.add(size_file, f"polyp without size: {polyp} ({why}); "
                             f"{count} box{'es' if count != 1 else ''} not used for sizing")
    used = {s.polyp_id for s in index.samples}
    index.polyp_sizes = {p: v for p, v in sizes.items() if p in used}
    index.skipped = skips.finish()
    return index
