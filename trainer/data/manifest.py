"""Generic CSV manifest: one row per box (or per negative frame), paths relative to the CSV.

Columns (header names are case-insensitive; aliases in brackets):
  image [frame, path, image_path, frame_path]   required
  x1 [xmin], y1 [ymin], x2 [xmax], y2 [ymax]    required; all empty = a negative frame
  polyp_id [polyp, lesion_id]                   required for box rows
  size_mm [size, size [mm]]                     required for box rows; `6`, `6.5` or `6mm`
  video, frame_index                            optional (default: the image's folder name and
                                                the number at the end of its file name)
Several rows naming one image give that frame several boxes.
"""
from __future__ import annotations

import logging
from pathlib import Path

from pipeline.errors import DataError
from .images import jpeg_size
from .records import (BoxAnnotation, DatasetIndex, FrameRecord, SampleRecord, SkipLog,
                      check_box, parse_size_mm, trailing_int)
from .tables import read_table

log = logging.getLogger("hagview.data")

COLUMNS = {
    "image": ("image", "frame", "path", "image_path", "frame_path"),
    "x1": ("x1", "xmin"), "y1": ("y1", "ymin"), "x2": ("x2", "xmax"), "y2": ("y2", "ymax"),
    "polyp_id": ("polyp_id", "polyp", "lesion_id"),
    "size_mm": ("size_mm", "size", "size [mm]"),
    "video": ("video",), "frame_index": ("frame_index",),
}
REQUIRED = ("image", "x1", "y1", "x2", "y2", "polyp_id", "size_mm")


def read_manifest(csv_path, *, negatives: bool = True, verify_images: bool = True,
                  accept_lower_bound: bool = True) -> DatasetIndex:
    """Index a CSV manifest (see the module docstring for its columns)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: manifest CSV does not exist")
    rows = read_table(csv_path)
    header = [h.strip().lower() for h in rows[0]]
    col: dict[str, int] = {}
    for key, aliases in COLUMNS.items():
        found = next((header.index(a) for a in aliases if a in header), None)
        if found is not None:
            col[key] = found
    missing = [k for k in REQUIRED if k not in col]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)} "
                        f"(header: {', '.join(rows[0])})")
    skips = SkipLog(f"manifest {csv_path}")
    base = csv_path.parent

    def cell(row, key):
        i = col.get(key)
        return row[i].strip() if i is not None and i < len(row) else ""

    frames: dict[Path, dict] = {}
    broken: set[Path] = set()
    sizes: dict[str, float] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        where = f"line {line_no}"
        name = cell(row, "image")
        if not name:
            skips.add(csv_path, f"missing field: {where} has no image path")
            continue
        image = Path(name) if Path(name).is_absolute() else base / name
        frame = frames.setdefault(image, {"boxes": [], "video": cell(row, "video"),
                                          "index": cell(row, "frame_index")})
        coords = [cell(row, k) for k in ("x1", "y1", "x2", "y2")]
        if not any(coords):
            continue                                     # a negative frame
        if not all(coords):
            skips.add(csv_path, f"missing field: {where} box has an empty coordinate ({name})")
            broken.add(image)
            continue
        try:
            box = tuple(float(v) for v in coords)
        except ValueError:
            skips.add(csv_path, f"bad field: {where} box {coords} has a non-number ({name})")
            broken.add(image)
            continue
        polyp = cell(row, "polyp_id")
        if not polyp:
            skips.add(csv_path, f"missing field: {where} has no polyp_id ({name})")
            broken.add(image)
            continue
        try:
            size = parse_size_mm(cell(row, "size_mm"), accept_lower_bound=accept_lower_bound)
        except ValueError as exc:
            size = None
            skips.add(csv_path, f"unusable size: {where} polyp {polyp}: {exc}")
        if size is not None:
            if polyp in sizes and sizes[polyp] != size:
                skips.add(csv_path, f"size conflict: {where} polyp {polyp} is {size:g} mm here, "
                                    f"{sizes[polyp]:g} mm earlier; row not used for sizing")
                size = None
            else:
                sizes[polyp] = size
        frame["boxes"].append((box, polyp, size))

    index = DatasetIndex()
    for image, info in frames.items():
        if image in broken or (not info["boxes"] and not negatives):
            continue
        image_size = None
        if info["boxes"] and verify_images:
            image_size, problem = jpeg_size(image)
            if image_size is None:
                skips.add(image, f"unreadable JPEG: {problem}")
                continue
        checked = []
        for raw, polyp, size in info["boxes"]:
            box, problem = check_box(raw, image_size)
            if box is None:
                skips.add(csv_path, f"{problem} ({image.name}; frame skipped)")
                checked = None
                break
            checked.append((box, polyp, size))
        if checked is None:
            continue
        video = info["video"] or image.parent.name
        try:
            frame_index = int(info["index"]) if info["index"] else trailing_int(image.stem)
        except ValueError:
            frame_index = None
        if frame_index is None:
            skips.add(csv_path, f"no frame number: {image.name} (add a frame_index column)")
            continue
        boxes = tuple(BoxAnnotation(b, p) for b, p, _ in checked)
        index.frames.append(FrameRecord(str(image), video, frame_index, image_size, boxes))
        for box, polyp, size in checked:
            if size is not None:
                index.samples.append(SampleRecord(str(image), video, frame_index, box, polyp,
                                                  size, image_size))
    used = {s.polyp_id for s in index.samples}
    index.polyp_sizes = {p: v for p, v in sizes.items() if p in used}
    index.skipped = skips.finish()
    if not index.samples:
        raise DataError(f"{csv_path}: no usable samples ({len(index.skipped)} rows or frames skipped)")
    log.info("manifest %s: %s", csv_path, index.summary())
    return index
