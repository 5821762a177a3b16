"""Calibrated size intervals: how far a track's size estimate may be from the true size.

A track's estimate after n sized frames (pipeline.smoothing) errs mostly by the sizer's own
error, which all frames of one polyp share (the same polyp, similar views, the same network): it
does not shrink like 1/sqrt(n), however many frames come. So the interval is calibrated at the
track level, on held-out polyps, as a function of the frames seen:

- score: the absolute log-ratio |log(track estimate / true size)| at every frame where a size is
  shown, with the number of sized frames n behind that estimate;
- per bucket of n (`FRAME_EDGES`), the split-conformal quantile of the scores at each level: the
  ceil(level * (m + 1))-th smallest of m tracks, each track weighing 1 in total (its frames in
  the bucket share that weight, because they are not independent);
- a bucket with fewer than `MIN_TRACKS` tracks, or too few for a level, takes the value of the
  bucket before it (fewer frames, wider); then every bucket is raised to the widest of the
  buckets after it, so the half-width never grows with n, and beyond the last bucket with data
  it stays at that bucket's value (the floor): it never claims precision it was not shown.

The half-width h(n) applies in log space: the interval is size / e^h .. size * e^h.
Tables are kept per way of finding the boxes (`given`: ground-truth boxes; `detector`: the
boxes of a named detector bundle), since a detector's boxes cut crops differently.

Not MAPIE: MAPIE calibrates a scikit-learn regressor on exchangeable rows; here the score is the
residual of a streaming per-track estimate, grouped by track and indexed by frames seen, and the
grouped conformal quantile is a few lines of numpy that a wrapper would only hide.

`bundle.json` keeps the result under `calibration` (see `SizeCalibration.to_dict`), with the data
it was measured on; `attach_calibration` writes it, `interval_for` gives the pipeline the table
for its level and boxes. Made by `python -m trainer.calibrate`.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.errors import BundleError, ConfigError, DataError

log = logging.getLogger(__name__)

CALIBRATION_KEY = "calibration"
FORMAT = "track-log-ratio-conformal/1"
LEVELS = (0.5, 0.8, 0.9, 0.95)
FRAME_EDGES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
MIN_TRACKS = 10
BOX_SOURCES = ("given", "detector")


def conformal_quantile(scores: np.ndarray, weights: np.ndarray, level: float) -> float:
    """The split-conformal quantile of `scores` whose `weights` sum to the number of units m:
    the smallest score whose cumulative weight reaches level * (m + 1); inf when m is too small."""
    order = np.argsort(scores, kind="stable")
    cum = np.cumsum(weights[order])
    target = level * (cum[-1] + 1.0)
    if target > cum[-1] + 1e-9:
        return math.inf
    return float(scores[order][np.searchsorted(cum, target - 1e-9)])


def fit_halfwidths(tracks: Sequence[tuple[Sequence[int], Sequence[float]]], *, levels: Sequence[float] = LEVELS,
                   edges: Sequence[int] = FRAME_EDGES, min_tracks: int = MIN_TRACKS) -> tuple[np.ndarray, np.ndarray]:
    """(half-widths in log-mm, shape buckets x levels; tracks per bucket) from per-track
    (sized frames n, |log(estimate / truth)|) sequences, as the module doc describes.
    Raises DataError when even the first bucket has too few tracks."""
    edges_arr = np.asarray(edges)
    table = np.full((len(edges), len(levels)), np.nan)
    counts = np.zeros(len(edges), dtype=np.int64)
    buckets: list[tuple[list, list]] = [([], []) for _ in edges]
    for frames, scores in tracks:
        frames = np.asarray(frames, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float64)
        which = np.searchsorted(edges_arr, frames, side="right") - 1
        for b in np.unique(which[which >= 0]):
            picked = scores[which == b]
            buckets[b][0].append(picked)
            buckets[b][1].append(np.full(len(picked), 1.0 / len(picked)))   # one track weighs 1
    for b, (scores, weights) in enumerate(buckets):
        counts[b] = len(scores)
        if counts[b] >= min_tracks:
            s, w = np.concatenate(scores), np.concatenate(weights)
            table[b] = [conformal_quantile(s, w, level) for level in levels]
    for b in range(len(edges)):
        missing = ~np.isfinite(table[b])
        if missing.any():
            if b == 0:
                short = [f"{levels[i]:g}" for i in np.flatnonzero(missing)]
                raise DataError(f"calibration: {counts[0]} tracks with a first size; level(s) {', '.join(short)} "
                                f"need at least {max(min_tracks, math.ceil(1 / (1 - max(levels))) - 1)}")
            table[b, missing] = table[b - 1, missing]
    table = np.maximum.accumulate(table[::-1], axis=0)[::-1]     # never wider with more frames
    # A level filled from fewer frames can fall below a lower level computed from more tracks:
    # never a narrower interval at a higher level.
    order = np.argsort(levels, kind="stable")
    table[:, order] = np.maximum.accumulate(table[:, order], axis=1)
    return table, counts


@dataclass(frozen=True)
class TrackInterval:
    """One level's half-width by sized frames, for one way of finding boxes, with the words that
    say what it was calibrated on (shown by the viewer and the reports)."""
    level: float
    edges: tuple[int, ...]
    halfwidths: tuple[float, ...]
    note: str

    def halfwidth(self, frames: int) -> float:
        """Log-mm half-width of the interval around an estimate made from `frames` sized frames."""
        b = max(0, int(np.searchsorted(self.edges, max(1, frames), side="right")) - 1)
        return self.halfwidths[b]


@dataclass(frozen=True)
class SizeCalibration:
    """What `bundle.json`'s `calibration` block holds (see `to_dict`)."""
    levels: tuple[float, ...]
    edges: tuple[int, ...]
    tables: dict[str, dict[str, Any]]      # box source -> {"halfwidth_log", "tracks", "polyps", "detector"}
    data: dict[str, Any]                   # what it was measured on: {"synthetic": bool, "description", ...}
    smoother: dict[str, Any] = field(default_factory=dict)   # SizeSmoother settings of the measurement
    created: dict[str, Any] = field(default_factory=dict)    # date, git commit, command

    @property
    def synthetic(self) -> bool:
        return bool(self.data.get("synthetic"))

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "score": "|log(track size estimate / true size)| by sized frames",
                "levels": list(self.levels), "frames_edges": list(self.edges),
                "tables": {k: {**v, "halfwidth_log": [[round(float(x), 6) for x in row] for row in v["halfwidth_log"]]}
                           for k, v in self.tables.items()},
                "data": self.data, "smoother": self.smoother, "created": self.created}

    @classmethod
    def from_dict(cls, block: Any, where: str) -> "SizeCalibration":
        """Validate a `calibration` block; BundleError naming `where` and the key on any problem."""
        def need(condition: bool, problem: str) -> None:
            if not condition:
                raise BundleError(f"{where}: calibration: {problem}")

        need(isinstance(block, dict), "must be an object")
        need(block.get("format") == FORMAT, f"format {block.get('format')!r} is not {FORMAT!r}")
        levels, edges = block.get("levels"), block.get("frames_edges")
        need(isinstance(levels, list) and levels and all(isinstance(v, (int, float)) and 0 < v < 1 for v in levels)
             and levels == sorted(set(levels)), "levels must be increasing numbers in (0, 1)")
        need(isinstance(edges, list) and edges and all(isinstance(v, int) and not isinstance(v, bool) for v in edges)
             and edges[0] == 1 and all(a < b for a, b in zip(edges, edges[1:])),
             "frames_edges must be increasing integers starting at 1")
        tables = block.get("tables")
        need(isinstance(tables, dict) and tables and set(tables) <= set(BOX_SOURCES),
             f"tables must map some of {', '.join(BOX_SOURCES)} to a table")
        for name, table in tables.items():
            need(isinstance(table, dict), f"tables.{name} must be an object")
            rows = table.get("halfwidth_log")
            need(isinstance(rows, list) and len(rows) == len(edges)
                 and all(isinstance(r, list) and len(r) == len(levels) for r in rows),
                 f"tables.{name}.halfwidth_log must be {len(edges)} rows of {len(levels)} numbers")
            arr = np.asarray(rows, dtype=np.float64)
            need(bool(np.all(np.isfinite(arr)) and np.all(arr >= 0)), f"tables.{name}.halfwidth_log must be >= 0")
            need(bool(np.all(np.diff(arr, axis=0) <= 1e-9)), f"tables.{name}.halfwidth_log grows with frames")
        need(isinstance(block.get("data"), dict) and isinstance(block["data"].get("synthetic"), bool),
             "data must be an object with synthetic: true/false")
        return cls(levels=tuple(float(v) for v in levels), edges=tuple(edges), tables=dict(tables),
                   data=dict(block["data"]), smoother=dict(block.get("smoother") or {}),
                   created=dict(block.get("created") or {}))

    def interval(self, level: float, given_boxes: bool, detector_hash: str | None = None) -> TrackInterval:
        """The table for `level` (one of `levels`) and the boxes the pipeline uses; with
        `detector_hash` (the content hash of the detector in use), the note says when the
        detector table was measured with another detector."""
        matches = [i for i, v in enumerate(self.levels) if abs(v - level) < 1e-9]
        if not matches:
            raise ConfigError(f"smooth.confidence_level {level:g} is not a level the sizer bundle's calibration "
                              f"supports ({', '.join(f'{v:g}' for v in self.levels)})")
        wanted = "given" if given_boxes else "detector"
        source = wanted if wanted in self.tables else next(iter(self.tables))
        table = self.tables[source]
        what = "synthetic data" if self.synthetic else str(self.data.get("description") or "held-out data")
        boxes = "given boxes" if source == "given" else "detector boxes"
        note = f"{level:.0%} interval calibrated on {what} ({boxes}, {table.get('polyps', '?')} polyps)"
        measured_with = (table.get("detector") or {}).get("content_hash")
        if source == "detector" and detector_hash and measured_with and measured_with != detector_hash:
            log.warning("the sizer's interval was calibrated with another detector's boxes; "
                        "re-run python -m trainer.calibrate with this detector")
            note += ", measured with another detector"
        column = [float(row[matches[0]]) for row in table["halfwidth_log"]]
        return TrackInterval(level=float(level), edges=self.edges, halfwidths=tuple(column), note=note)


def uncalibrated_note(level: float) -> str:
    return f"{level:.0%} interval NOT calibrated (the sizer bundle has no calibration)"


def capped_note(note: str, size_range: tuple[float, float]) -> str:
    """`note` plus what the sizer's range does to the interval ends (pipeline.smoothing clips
    them there: the sizer cannot read beyond it, so an end at the cap is a bound, not a value)."""
    lo, hi = size_range
    return f"{note}; ends capped at the sizer's {lo:g}-{hi:g} mm range (an end at {hi:g} mm means {hi:g} mm or more)"


def bundle_calibration(bundle) -> SizeCalibration | None:
    """The calibration of a loaded sizer bundle (pipeline.bundle.Bundle), None when it has none."""
    block = bundle.manifest.get(CALIBRATION_KEY)
    return None if block is None else SizeCalibration.from_dict(block, str(bundle.path / "bundle.json"))


def interval_for(sizer, *, given_boxes: bool, level: float, detector=None) -> TrackInterval | None:
    """The interval a pipeline shows with `sizer` (a TrackSizingStage, or None) and `detector`
    (a PolypDetector, or None), or None when the sizer's bundle carries no calibration."""
    bundle = getattr(sizer, "bundle", None)
    calibration = None if bundle is None else bundle_calibration(bundle)
    detector_bundle = getattr(detector, "bundle", None)
    detector_hash = None if detector_bundle is None else detector_bundle.content_hash
    return None if calibration is None else calibration.interval(level, given_boxes, detector_hash)


def attach_calibration(bundle_dir: str | Path, calibration: SizeCalibration) -> None:
    """Write `calibration` into the bundle's bundle.json (replacing one there), atomically; the
    model files and their hashes are untouched. The bundle is loaded again to check it."""
    from pipeline.bundle import MANIFEST_NAME, load_bundle
    from pipeline.fsutil import write_json_atomic

    bundle = load_bundle(bundle_dir)
    if bundle.kind != "sizer":
        raise BundleError(f"{bundle.path}: a {bundle.kind} bundle; only sizer bundles are calibrated")
    manifest = json.loads((bundle.path / MANIFEST_NAME).read_text(encoding="utf-8"))
    manifest[CALIBRATION_KEY] = calibration.to_dict()
    write_json_atomic(bundle.path / MANIFEST_NAME, manifest)
    load_bundle(bundle.path)


def validate_block(manifest: Mapping[str, Any], manifest_path) -> None:
    """For pipeline.bundle's loader: a present calibration block must be valid."""
    if CALIBRATION_KEY in manifest:
        SizeCalibration.from_dict(manifest[CALIBRATION_KEY], str(manifest_path))
