"""SUN-SEG reader: SUN's frames re-packed as `<Dataset>/[Seen|Unseen/]Frame/caseN_M/*.jpg` with
COCO-like boxes in `Detection/bbox_annotation.json` (GewelsJI/VPS, docs/DATA_DESCRIPTION.md).

The JSON holds `images` (`id`, `width`, `height`, `case_name`, `file_name` without `.jpg`) and
`annotation` (or COCO's `annotations`) entries (`id` or `image_id`, `bbox`). Its box format was
first documented as `[min_x, min_y, max_x, max_y]` and later as `[min_x, min_y, width, height]`,
with the same example: the reader detects which one a file uses (boxes that cannot be corners, or
that cannot be sizes inside the image) and says so in `DatasetIndex.warnings` and the log;
`box_format=` forces one.

A clip folder `caseN_M` is part of SUN case N, one polyp and one video (so its clips never
cross folds); frames are ordered and indexed across the case as in `sun.read_sun`, and
`FrameRecord.clip` names the SUN recording a frame belongs to (a clip folder can hold several).
Sizes come from a size table as for SUN (SUN-SEG's INFO_POSITIVE_CASES.md table works as it is).
Frames missing from the JSON are skipped, never taken as negatives: SUN-SEG's frames show polyps.
"""
from __future__ import annotations

import fnmatch
import json
import logging
from pathlib import Path

from pipeline.errors import DataError
from pipeline.progress import Progress
from .images import verified_jpeg_size
from .records import (BoxAnnotation, DatasetIndex, FrameRecord, SampleRecord, Skip, SkipLog,
                      check_box, finish_index)
from .sun import (IMAGE_SUFFIXES, SEARCH_DEPTH, polyp_id, read_size_table, resolve_size_table,
                  sun_frame_name, walk_limited)

log = logging.getLogger("hagview.data")

BOX_FORMATS = ("auto", "xyxy", "xywh")
BOX_FILE = Path("Detection") / "bbox_annotation.json"
# How far past the image edge an [x, y, w, h] box may reach before it counts as not fitting.
FIT_TOLERANCE_PX = 1.0


def detect_box_format(boxes: list[tuple[list[float], tuple[int, int] | None]]) -> tuple[str, str]:
    """("xyxy" or "xywh", why) for a file's boxes given as (bbox, (width, height) or None).

    A box with x2 <= x1 or y2 <= y1 cannot be corners; one whose x + w or y + h reaches past the
    image (by more than FIT_TOLERANCE_PX) cannot be [x, y, w, h]. Raises ValueError when the
    boxes contradict both readings, or when every box fits both (the file cannot tell).
    """
    not_corners = not_sizes = 0
    for (a, b, c, d), size in boxes:
        if c <= a or d <= b:
            not_corners += 1
        if c <= 0 or d <= 0 or (size is not None and (a + c > size[0] + FIT_TOLERANCE_PX
                                                      or b + d > size[1] + FIT_TOLERANCE_PX)):
            not_sizes += 1
    n = len(boxes)
    if not_corners and not not_sizes:
        return "xywh", (f"boxes read as [x, y, w, h]: {not_corners} of {n} have x2 <= x1 or "
                        f"y2 <= y1 as [x1, y1, x2, y2]")
    if not_sizes and not not_corners:
        return "xyxy", (f"boxes read as [x1, y1, x2, y2]: {not_sizes} of {n} reach past the "
                        f"image as [x, y, w, h]")
    if not_corners and not_sizes:
        raise ValueError(f"boxes fit neither format: {not_corners} of {n} cannot be [x1, y1, x2, y2] "
                         f"and {not_sizes} cannot be [x, y, w, h]")
    raise ValueError(f"every one of the {n} boxes fits both [x1, y1, x2, y2] and [x, y, w, h]; "
                     f"pass box_format='xyxy' or 'xywh'")


def read_sun_seg(root, case_pattern: str = "case*", size_table=None, *, box_format: str = "auto",
                 negatives: bool = True, verify_images: bool = True,
                 accept_lower_bound: bool = True, progress: bool = False) -> DatasetIndex:
    """Index a SUN-SEG tree (any of its Dataset folders, or the folder above them).

    case_pattern: clip folders under each `Frame/` (`case*`). size_table: as for `read_sun`.
    box_format: "auto" (detect per JSON file), "xyxy" or "xywh". negatives: keep frames whose
    JSON entry has no box (SUN-SEG's positive part has none). See `read_realcolon` for
    `verify_images` and the policy on broken frames; boxes are clipped to [0, W] x [0, H].
    """
    if box_format not in BOX_FORMATS:
        raise DataError(f"box_format {box_format!r} is not one of {', '.join(BOX_FORMATS)}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: SUN-SEG root does not exist or is not a directory")
    skips = SkipLog(f"SUN-SEG {root}")
    frame_dirs = [d / n for d, names, _, _ in walk_limited(root) for n in names if n == "Frame"]
    clips = [(f, f / n) for f in sorted(frame_dirs) for n in sorted(p.name for p in f.iterdir() if p.is_dir())
             if fnmatch.fnmatch(n, case_pattern)]
    if not clips:
        raise DataError(f"{root}: no Frame/{case_pattern} clip folders within {SEARCH_DEPTH} folder "
                        f"levels below it (is this a SUN-SEG tree?)")
    table_path = resolve_size_table(root, size_table)
    notes: list[Skip] = []
    sizes, bad_sizes = read_size_table(table_path, skips, accept_lower_bound, notes)

    box_files: dict[Path, dict | None] = {}
    clips_of: dict[Path, set[str]] = {}         # box file -> the clip folders read with it
    per_case: dict[str, list[tuple[Path, dict | None, Path | None]]] = {}
    for frame_dir, clip_dir in clips:
        box_path = next((p / BOX_FILE for p in (frame_dir.parent, frame_dir.parent.parent)
                         if (p / BOX_FILE).is_file()), None)
        if box_path is not None and box_path not in box_files:
            box_files[box_path] = _read_box_file(box_path, box_format, skips, notes)
        entries = box_files.get(box_path) if box_path is not None else None
        images = sorted(p for p in clip_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if box_path is None:
            skips.add(clip_dir, f"no box file: {len(images)} frames of {clip_dir.name} skipped "
                                f"(no {BOX_FILE.as_posix()} next to {frame_dir})")
            continue
        if entries is None:
            continue            # unreadable JSON: reported once with its file
        case = polyp_id(clip_dir.name)
        per_case.setdefault(case, []).extend((p, entries, box_path) for p in images)
        clips_of.setdefault(box_path, set()).add(clip_dir.name)
    _report_missing_images(box_files, clips_of, per_case, skips)

    index = DatasetIndex(warnings=notes)
    unsized: dict[str, int] = {}
    total = sum(len(v) for v in per_case.values())
    with Progress(total, "frames", "reading SUN-SEG", enabled=progress) as bar:
        for case in sorted(per_case):
            ordered = _unique_frames(per_case[case], skips)
            bar.update(len(per_case[case]) - len(ordered))
            for frame_index, (image_path, entries, box_path) in enumerate(ordered):
                bar.update(1)
                frame = _frame(image_path, case, frame_index, entries.get(image_path.stem), box_path,
                               negatives, verify_images, skips)
                if frame is None:
                    continue
                index.frames.append(frame)
                for ann in frame.boxes:
                    size = sizes.get(case)
                    if size is None:
                        unsized[case] = unsized.get(case, 0) + 1
                        continue
                    index.samples.append(SampleRecord(frame.image_path, case, frame_index, ann.box,
                                                      case, size, frame.image_size))
    finish_index(index, skips, sizes=sizes, unsized=unsized, bad_sizes=bad_sizes,
                 size_file=table_path, not_listed="not in the size table")
    if not index.samples:
        raise DataError(f"{root}: no usable samples (no polyp box of a case with a known size; "
                        f"{len(index.skipped)} skipped)")
    log.info("SUN-SEG %s: %s", root, index.summary())
    return index


def _report_missing_images(box_files: dict, clips_of: dict, per_case: dict, skips: SkipLog) -> None:
    """Entries of a box file, for the clip folders read with it, whose image is not on disk."""
    on_disk = {(box_path, p.stem) for items in per_case.values() for p, _, box_path in items}
    for box_path, entries in box_files.items():
        for stem, (_, _, case_name) in sorted((entries or {}).items()):
            if case_name in clips_of.get(box_path, ()) and (box_path, stem) not in on_disk:
                skips.add(box_path, f"image missing: {stem}.jpg ({case_name}) is not on disk")


def _unique_frames(items: list, skips: SkipLog) -> list:
    """A case's frames in SUN order; a frame file found twice (two copies of a clip folder)
    is reported and kept once, so frame indices stay unique."""
    ordered = sorted(items, key=lambda item: (sun_frame_name(item[0].name).order, str(item[0])))
    kept = []
    for item in ordered:
        if kept and kept[-1][0].name == item[0].name:
            skips.add(item[0], f"duplicate frame: {item[0].name} is also {kept[-1][0]} (kept)")
            continue
        kept.append(item)
    return kept


def _frame(image_path: Path, case: str, frame_index: int, entry, box_path: Path, negatives: bool,
           verify_images: bool, skips: SkipLog) -> FrameRecord | None:
    if entry is None:
        skips.add(image_path, f"no box entry: {image_path.stem} is not in {box_path}")
        return None
    image_size, raw_boxes, _ = entry
    if raw_boxes is None:
        return None             # a broken box entry, already reported
    if not raw_boxes and not negatives:
        return None
    if raw_boxes and verify_images:
        image_size = verified_jpeg_size(image_path, image_size, box_path.name, skips)
        if image_size is None:
            return None
    boxes = []
    for raw in raw_boxes:
        box, problem = check_box(raw, image_size)
        if box is None:
            skips.add(box_path, f"{problem} ({image_path.name}; frame skipped)")
            return None
        boxes.append(BoxAnnotation(box, case))
    return FrameRecord(str(image_path), case, frame_index, image_size, tuple(boxes),
                       clip=sun_frame_name(image_path.name).clip)


def _read_box_file(path: Path, box_format: str, skips: SkipLog, notes: list) -> dict | None:
    """{file stem: ((width, height) or None, [xyxy boxes] or None when broken, case_name)} from a
    bbox_annotation.json, or None (reported) when the file cannot be used. The box format it
    detects is noted in `notes` and logged."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        skips.add(path, f"unreadable box file: {exc}")
        return None
    images = doc.get("images") if isinstance(doc, dict) else None
    annotations = (doc.get("annotation", doc.get("annotations")) if isinstance(doc, dict) else None)
    if not isinstance(images, list) or not isinstance(annotations, list):
        skips.add(path, "unreadable box file: no 'images' and 'annotation' lists")
        return None
    by_id: dict[str, tuple[str, tuple[int, int] | None, str]] = {}
    for n, img in enumerate(images, start=1):
        name = img.get("file_name") if isinstance(img, dict) else None
        if not isinstance(name, str) or "id" not in img:
            skips.add(path, f"missing field: images[{n}] has no id or file_name")
            continue
        stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else Path(name).name
        try:
            size = (int(img["width"]), int(img["height"]))
        except (KeyError, TypeError, ValueError):
            size = None
        by_id[str(img["id"])] = (stem, size if size and size[0] > 0 and size[1] > 0 else None,
                                 str(img.get("case_name", "")))

    raw: dict[str, list[list[float]]] = {}
    for n, ann in enumerate(annotations, start=1):
        key = ann.get("image_id", ann.get("id")) if isinstance(ann, dict) else None
        bbox = ann.get("bbox") if isinstance(ann, dict) else None
        if key is None or str(key) not in by_id:
            skips.add(path, f"missing field: annotation[{n}] names no image of the file ({key!r})")
            continue
        try:
            values = [float(v) for v in bbox]
        except (TypeError, ValueError):
            values = []
        if len(values) != 4:
            skips.add(path, f"bad field: annotation[{n}] bbox {bbox!r} is not 4 numbers")
            raw.setdefault(str(key), []).append(None)      # the frame cannot be used
            continue
        raw.setdefault(str(key), []).append(values)

    boxes = [(b, by_id[k][1]) for k, bs in raw.items() for b in bs if b is not None]
    fmt = box_format
    if fmt == "auto" and boxes:
        try:
            fmt, why = detect_box_format(boxes)
        except ValueError as exc:
            raise DataError(f"{path}: {exc}") from None
        notes.append(Skip(str(path), why))
        log.info("%s: %s", path, why)
    entries: dict = {}
    for key, (stem, size, case_name) in by_id.items():
        bs = raw.get(key, [])
        if any(b is None for b in bs):
            entries[stem] = (size, None, case_name)    # reported above; neither usable nor a negative
            continue
        if fmt == "xywh":
            bs = [[x, y, x + w, y + h] for x, y, w, h in bs]
        entries[stem] = (size, [tuple(b) for b in bs], case_name)
    return entries
