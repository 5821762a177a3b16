"""Snapshots: the frame as a PNG without and with the overlay, and the tracks shown as JSON
(each as frames.jsonl records it).

Written off the GUI thread (PNG encoding of a 1080p frame takes tens of milliseconds), each file
under a temporary name and renamed when complete; an existing snapshot is never overwritten.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.types import FrameResult
from pipeline.errors import DataError
from pipeline.fsutil import atomic_path, write_json_atomic
from pipeline.polyps import track_record
from pipeline.provenance import mark_text

from .video import render_annotated, wrap_rgb


@dataclass
class SnapshotFiles:
    raw: Path           # the frame as received (clean video)
    annotated: Path     # with the overlay drawn at full resolution
    tracks: Path        # JSON: frame index, media time, the tracks with their sizes


def _free_stem(directory: Path, stem: str) -> str:
    candidate, n = stem, 1
    while any((directory / f"{candidate}{suffix}").exists() for suffix in ("-raw.png", "-overlay.png", ".json")):
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def _save_png(image, path: Path) -> None:
    with atomic_path(path) as tmp:
        if not image.save(str(tmp), "PNG"):
            raise DataError(f"{path}: could not write the PNG")


def save_snapshot(result: FrameResult, directory: str | Path, *, synthetic: bool = False,
                  selected_id: int | None = None, source: str = "", models: dict | None = None) -> SnapshotFiles:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    frame = result.frame
    stem = _free_stem(directory, f"hagview-{time.strftime('%Y%m%d-%H%M%S')}-f{frame.index:06d}")
    files = SnapshotFiles(directory / f"{stem}-raw.png", directory / f"{stem}-overlay.png", directory / f"{stem}.json")
    _save_png(wrap_rgb(frame.image), files.raw)
    _save_png(render_annotated(result, synthetic=synthetic, selected_id=selected_id), files.annotated)
    # The record frames.jsonl has (pipeline.polyps.track_record); "track_id" as snapshots named it.
    tracks = [{"track_id": report.track_id, **track_record(report)} for report in result.tracks if report.confirmed]
    write_json_atomic(files.tracks, {
        "source": source, "frame_index": frame.index, "time_s": round(frame.pts, 6),
        "overlay_frame_index": result.overlay_frame_index, "width": frame.size[0], "height": frame.size[1],
        "model_mark": mark_text(synthetic), "models": models or {}, "tracks": tracks,
        "raw_png": files.raw.name, "overlay_png": files.annotated.name})
    return files
