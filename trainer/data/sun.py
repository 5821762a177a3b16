"""SUN colonoscopy database reader: box text files per case and a per-case size table.

Releases differ in layout, so the reader searches `root` (three levels deep) for case folders
matching `case_pattern` (e.g. `sundatabase_positive_part1/case1/`), box files named after the
case (e.g. `annotation_txt/case1.txt`) and a size table. Box lines read
`<image file> x1,y1,x2,y2,class [x1,y1,x2,y2,class ...]`, class 0 = polyp, 1 = non-polyp.
The size table is CSV, TSV or a Markdown table with a case column (`case1`, `1`, `Case 1`,
or a clip id such as SUN-SEG's `1_2`) and a size column (`6mm`; `15mm-` means 15 mm or more).
One SUN case is one polyp, so its clips (`case1_1`, `case1_2`) share the polyp id `case1`.
"""
from __future__ import annotations

import fnmatch
import glob
import logging
import os
import re
from pathlib import Path

from pipeline.errors import DataError
from pipeline.progress import Progress
from .images import jpeg_size
from .records import (BoxAnnotation, DatasetIndex, FrameRecord, SampleRecord, SkipLog,
                      check_box, finish_index, frame_sort_key, polyp_sizes,
                      trailing_int)
from .tables import read_table

log = logging.getLogger("hagview.data")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
POLYP_CLASS, NON_POLYP_CLASS = 0, 1
BROKEN = -1          # marks an image whose box line could not be read
SEARCH_DEPTH = 3


def read_sun(root, case_pattern: str = "case*", box_files=None, size_table=None, *,
             negatives: bool = True, verify_images: bool = True,
             accept_lower_bound: bool = True, progress: bool = False) -> DatasetIndex:
    """Index a SUN-style directory.

    box_files: None (search root for `<case_pattern>.txt`), or a path, glob pattern or list of
    them (relative to root unless absolute). size_table: None (search root for a .csv/.tsv/.md
    table with case and size columns) or its path. Boxes with class 1 (non-polyp) are ignored;
    images without polyp boxes are negative frames. See `read_realcolon` for `negatives`,
    `verify_images` and the policy on broken frames.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: SUN root does not exist or is not a directory")
    skips = SkipLog(f"SUN {root}")
    case_dirs = _find_dirs(root, case_pattern)
    if not case_dirs:
        raise DataError(f"{root}: no case folders matching {case_pattern!r}")
    box_paths = _resolve_box_files(root, case_pattern, box_files)
    table_path = _resolve_size_table(root, size_table)
    sizes, bad_sizes = _read_size_table(table_path, skips, accept_lower_bound)

    names = [d.name for d in case_dirs]
    video_of = {d: (d.name if names.count(d.name) == 1 else d.relative_to(root).as_posix())
                for d in case_dirs}
    listing = {d: sorted((p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                         key=frame_sort_key) for d in case_dirs}
    by_name: dict[str, list[Path]] = {}
    for d, files in listing.items():
        for p in files:
            by_name.setdefault(p.name, []).append(p)

    # image path -> list of (box, class) and the box file it came from
    annotated: dict[Path, tuple[list, Path]] = {}
    names_in = {d: {p.name: p for p in files} for d, files in listing.items()}
    for box_path in box_paths:
        _read_box_file(box_path, root, case_dirs, names_in, by_name, annotated, skips)

    index = DatasetIndex()
    unsized: dict[str, int] = {}
    images = [(d, p) for d in case_dirs for p in listing[d]]
    listed = {p for _, p in images}
    images += [(p.parent, p) for p in sorted(annotated) if p not in listed]
    with Progress(len(images), "frames", "reading SUN", enabled=progress) as bar:
        for position, (case_dir, image_path) in enumerate(images):
            bar.update(1)
            entry = annotated.get(image_path)
            if entry and any(c == BROKEN for _, c in entry[0]):
                continue            # already reported; neither usable nor a negative
            polyp_boxes = [b for b, c in entry[0] if c == POLYP_CLASS] if entry else []
            if not polyp_boxes and not negatives:
                continue
            video = video_of.get(case_dir, case_dir.name)
            frame_index = trailing_int(image_path.stem)
            if frame_index is None:
                frame_index = position
            image_size = None
            if polyp_boxes and verify_images:
                image_size, problem = jpeg_size(image_path)
                if image_size is None:
                    skips.add(image_path, f"unreadable JPEG: {problem}")
                    continue
            polyp = _polyp_id(case_dir.name)
            boxes = []
            for raw in polyp_boxes:
                box, problem = check_box(raw, image_size)
                if box is None:
                    skips.add(entry[1], f"{problem} ({image_path.name}; frame skipped)")
                    boxes = None
                    break
                boxes.append(BoxAnnotation(box, polyp))
            if boxes is None:
                continue
            frame = FrameRecord(str(image_path), video, frame_index, image_size, tuple(boxes))
            index.frames.append(frame)
            for ann in boxes:
                size = sizes.get(polyp)
                if size is None:
                    unsized[polyp] = unsized.get(polyp, 0) + 1
                    continue
                index.samples.append(SampleRecord(frame.image_path, video, frame_index, ann.box,
                                                  polyp, size, image_size))
    finish_index(index, skips, sizes=sizes, unsized=unsized, bad_sizes=bad_sizes,
                 size_file=table_path, not_listed="not in the size table")
    if not index.samples:
        raise DataError(f"{root}: no usable samples (no polyp box of a case with a known size; "
                        f"{len(index.skipped)} skipped)")
    log.info("SUN %s: %s", root, index.summary())
    return index


def _polyp_id(case_name: str) -> str:
    number = _case_number(case_name)
    return f"case{number}" if number is not None else case_name


def _case_number(text: str) -> str | None:
    """`case12`, `Case 12`, `12`, `case12_3`, `12_3` -> "12" (clips of one case share a polyp)."""
    m = re.match(r"^\s*(?:case)?[\s_-]*(\d+)(?:[_-]\d+)?\s*$", text, re.I)
    return str(int(m.group(1))) if m else None


def _walk_limited(root: Path):
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).parts) - base_depth
        dirnames.sort()
        if depth >= SEARCH_DEPTH:
            dirnames[:] = []
        yield Path(dirpath), dirnames, sorted(filenames), depth


def _find_dirs(root: Path, pattern: str) -> list[Path]:
    found = []
    for dirpath, dirnames, _, _ in _walk_limited(root):
        for name in dirnames:
            if fnmatch.fnmatch(name, pattern):
                found.append(dirpath / name)
    return sorted(found)


def _resolve_box_files(root: Path, case_pattern: str, box_files) -> list[Path]:
    if box_files is None:
        paths = [d / f for d, _, files, _ in _walk_limited(root) for f in files
                 if f.lower().endswith(".txt") and fnmatch.fnmatch(f[:-4], case_pattern)]
        if not paths:
            raise DataError(f"{root}: no box files named {case_pattern}.txt (pass box_files=)")
        return sorted(paths)
    entries = [box_files] if isinstance(box_files, (str, os.PathLike)) else list(box_files)
    paths: list[Path] = []
    for entry in entries:
        p = Path(entry)
        p = p if p.is_absolute() else root / p
        if p.is_file():
            paths.append(p)
            continue
        matches = sorted(Path(m) for m in glob.glob(str(p)) if Path(m).is_file())
        if not matches:
            raise DataError(f"{p}: box file not found")
        paths.extend(matches)
    return paths


def _resolve_size_table(root: Path, size_table) -> Path:
    if size_table is not None:
        p = Path(size_table)
        p = p if p.is_absolute() else root / p
        if not p.is_file():
            raise DataError(f"{p}: size table not found")
        return p
    for dirpath, _, files, depth in _walk_limited(root):
        if depth > 1:
            continue
        for f in files:
            if Path(f).suffix.lower() in {".csv", ".tsv", ".md"}:
                try:
                    header = [h.lower() for h in read_table(dirpath / f)[0]]
                except DataError:
                    continue
                if _size_columns(header) is not None:
                    return dirpath / f
    raise DataError(f"{root}: no size table (a .csv/.tsv/.md with case and size columns); pass size_table=")


def _size_columns(header: list[str]) -> tuple[int, int] | None:
    case_col = next((i for i, h in enumerate(header) if "case" in h), None)
    if case_col is None:
        case_col = next((i for i, h in enumerate(header) if h in ("id", "case id", "polyp", "polyp id")), None)
    size_col = next((i for i, h in enumerate(header) if "size" in h), None)
    return None if case_col is None or size_col is None else (case_col, size_col)


def _read_size_table(path: Path, skips: SkipLog, accept_lower_bound: bool):
    rows = read_table(path)
    cols = _size_columns([h.lower() for h in rows[0]])
    if cols is None:
        raise DataError(f"{path}: size table needs a case/id column and a size column "
                        f"(header: {', '.join(rows[0])})")
    case_col, size_col = cols

    def rows_with_ids():
        for line_no, row in enumerate(rows[1:], start=2):
            cell = row[case_col] if case_col < len(row) else ""
            number = _case_number(cell)
            if number is None:
                skips.add(path, f"missing field: row {line_no} has no case id ({cell!r})")
                continue
            yield f"case{number}", row[size_col] if size_col < len(row) else ""
    return polyp_sizes(rows_with_ids(), accept_lower_bound=accept_lower_bound)


def _read_box_file(box_path: Path, root: Path, case_dirs: list[Path], listing, by_name,
                   annotated: dict, skips: SkipLog) -> None:
    try:
        lines = box_path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        skips.add(box_path, f"unreadable box file: {exc}")
        return
    stem = box_path.stem
    candidates = [d for d in case_dirs if d.name == stem]
    # A case name can repeat across release parts (positive and negative case1): prefer the one
    # that sits closest to the box file.
    candidates.sort(key=lambda d: -len(os.path.commonpath([d, box_path]).split(os.sep)))
    for line_no, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{box_path.name}:{line_no}"
        if len(tokens) < 2:
            skips.add(box_path, f"missing field: line {line_no} has no box ({line.strip()!r})")
            continue
        image = _locate_image(tokens[0], box_path, root, candidates, listing, by_name)
        if image is None:
            skips.add(box_path, f"image missing: {tokens[0]} (line {line_no})")
            continue
        boxes = []
        for token in tokens[1:]:
            fields = token.split(",")
            if len(fields) != 5:
                boxes = None
                skips.add(box_path, f"missing field: {where} box {token!r} is not x1,y1,x2,y2,class")
                break
            try:
                x1, y1, x2, y2 = (float(v) for v in fields[:4])
                cls = int(fields[4])
            except ValueError:
                boxes = None
                skips.add(box_path, f"bad field: {where} box {token!r} has a non-number")
                break
            if cls not in (POLYP_CLASS, NON_POLYP_CLASS):
                boxes = None
                skips.add(box_path, f"bad field: {where} class {cls} is neither 0 (polyp) nor 1")
                break
            boxes.append(((x1, y1, x2, y2), cls))
        if boxes is None:
            annotated.setdefault(image, ([], box_path))[0].append(((0, 0, 0, 0), BROKEN))
            continue
        annotated.setdefault(image, ([], box_path))[0].extend(boxes)


def _locate_image(name: str, box_path: Path, root: Path, candidates, listing, by_name) -> Path | None:
    if "/" in name or "\\" in name:
        for base in (root, box_path.parent):
            p = base / name
            if p.is_file():
                return p
    for d in candidates:
        p = listing[d].get(name)
        if p is not None:
            return p
    matches = by_name.get(Path(name).name, [])
    if len(matches) == 1:
        return matches[0]
    return None
