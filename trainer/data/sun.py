"""SUN colonoscopy database reader: box text files per case and a per-case size table.

Releases differ in layout, so the reader searches `root` (up to SEARCH_DEPTH folder levels, so an
archive unpacked into an extra folder or two is found too) for case folders matching
`case_pattern` (e.g. `sundatabase_positive_part1/case1/`), box files named after the case (the
release keeps them all in `sundatabase_positive_part1/annotation_txt/caseN.txt`, also for cases
unpacked from part2) and a size table. Box lines read
`<image file> x1,y1,x2,y2,class [x1,y1,x2,y2,class ...]`, class 0 = polyp, 1 = non-polyp.

Frames are named `case_M_<date>_<id>_1_<sss>_<nnn>-1_a<k>_ayy_image<NNNN>.jpg` (negatives
`..._Negative[_2]_ayy_image<NNNNNN>.jpg`): a case folder holds several recordings (sub-sequences)
whose image numbers restart. Frames are ordered the way SUN-SEG's loader orders them (`<nnn>`,
then `a<k>`, then the image number); `frame_index` is the frame's position in that order within
its case, and `FrameRecord.clip` names its sub-sequence (the file name up to `_image`).

The size table is CSV, TSV or a Markdown table with a case column (`case1`, `1`, `Case 1`,
or a clip id such as SUN-SEG's `1_2`) and a size column (`6mm`; `15mm-` means 15 mm or more).
The web table's frame counts carry thousands separators (`1,313`): a CSV export that did not
quote them has a cell too many in those rows, which is detected and read (tables.py).
One SUN case is one polyp, so its clips (`case1_1`, `case1_2`) share the polyp id `case1`.
"""
from __future__ import annotations

import fnmatch
import glob
import logging
import os
import re
from pathlib import Path
from typing import NamedTuple

from pipeline.errors import DataError
from pipeline.progress import Progress
from .images import jpeg_size
from .records import (BoxAnnotation, DatasetIndex, FrameRecord, SampleRecord, Skip, SkipLog,
                      check_box, finish_index, polyp_sizes, trailing_int)
from .tables import join_split_thousands, read_table

log = logging.getLogger("hagview.data")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
POLYP_CLASS, NON_POLYP_CLASS = 0, 1
BROKEN = -1          # marks an image whose box line could not be read
# Folder levels searched below root: the release's part/case/ is 2, an archive unpacked into
# one or two extra folders 3-4, SUN-SEG's Dataset/Seen/Frame/caseN_M/ 4.
SEARCH_DEPTH = 5
SIZE_TABLE_DEPTH = 3          # tables at root or up to two folders below it

# `..._1_005_001-1_a2_ayy` (positive) and `..._Negative_ayy`, `..._Negative_2_ayy` (negative)
_FRAME_NAME = re.compile(r"^(?P<clip>.*?)_?image_?(?P<number>\d+)$", re.I)
_POSITIVE_CLIP = re.compile(r"_(?P<seq>\d+)-\d+_a(?P<k>\d+)_ayy$", re.I)
_NEGATIVE_CLIP = re.compile(r"_negative(?:_(?P<part>\d+))?_ayy$", re.I)


class SunFrameName(NamedTuple):
    clip: str            # the sub-sequence: the file stem up to `_image<N>` ("" for `image_001`)
    number: int          # the image number within the clip
    order: tuple         # sort key: SUN-SEG's (<nnn>, a<k>, image number) for positive frames


def sun_frame_name(name: str) -> SunFrameName:
    """Parse a SUN frame file name into its sub-sequence, image number and sort key.

    `case_M_20181001100941_0U62372100109341_1_005_001-1_a2_ayy_image0001.jpg` -> clip
    `case_M_..._001-1_a2_ayy`, number 1, ordered by (1, 2, 1) like SUN-SEG's loader; negatives
    (`..._Negative_2_ayy_image000001.jpg`) by their part number; other names (`image_001.jpg`,
    the paper code's renamed copies) by their trailing number.
    """
    stem = Path(name).stem
    m = _FRAME_NAME.match(stem)
    if m is None:
        n = trailing_int(stem)
        return SunFrameName("", -1 if n is None else n, (3, 0, 0, stem, -1 if n is None else n, name))
    clip, number = m.group("clip"), int(m.group("number"))
    pos = _POSITIVE_CLIP.search(clip)
    if pos is not None:
        key = (0, int(pos.group("seq")), int(pos.group("k")), clip)
    else:
        neg = _NEGATIVE_CLIP.search(clip)
        key = (1, int(neg.group("part") or 1), 0, clip) if neg is not None else (2, 0, 0, clip)
    return SunFrameName(clip, number, key + (number, name))


def sun_frame_key(path) -> tuple:
    """Sort key of a SUN frame file (see `sun_frame_name`)."""
    return sun_frame_name(Path(path).name).order


def read_sun(root, case_pattern: str = "case*", box_files=None, size_table=None, *,
             negatives: bool = True, verify_images: bool = True,
             accept_lower_bound: bool = True, progress: bool = False) -> DatasetIndex:
    """Index a SUN-style directory.

    box_files: None (search root for `<case_pattern>.txt`), or a path, glob pattern or list of
    them (relative to root unless absolute). size_table: None (search root for a .csv/.tsv/.md
    table with case and size columns) or its path. Boxes with class 1 (non-polyp) are ignored;
    images without polyp boxes are negative frames. See `read_realcolon` for `negatives`,
    `verify_images` and the policy on broken frames. When a positive and a negative case share a
    name (`case1` in both parts), their videos are named by their path below root.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: SUN root does not exist or is not a directory")
    skips = SkipLog(f"SUN {root}")
    case_dirs = find_case_dirs(root, case_pattern, skips)
    box_paths = _resolve_box_files(root, case_pattern, box_files)
    table_path = resolve_size_table(root, size_table)
    notes: list[Skip] = []
    sizes, bad_sizes = read_size_table(table_path, skips, accept_lower_bound, notes)

    names = [d.name for d in case_dirs]
    video_of = {d: (d.name if names.count(d.name) == 1 else d.relative_to(root).as_posix())
                for d in case_dirs}
    listing = {d: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
               for d in case_dirs}
    by_name: dict[str, list[Path]] = {}
    for d, files in listing.items():
        for p in files:
            by_name.setdefault(p.name, []).append(p)

    # image path -> list of (box, class) and the box file it came from
    annotated: dict[Path, tuple[list, Path]] = {}
    names_in = {d: {p.name: p for p in files} for d, files in listing.items()}
    for box_path in box_paths:
        _read_box_file(box_path, root, case_dirs, names_in, by_name, annotated, skips)

    # Every image of a case, the listed ones and those a box file names by path, in SUN-SEG order.
    per_case: dict[Path, list[Path]] = {d: list(files) for d, files in listing.items()}
    listed = {p for files in listing.values() for p in files}
    for p in sorted(annotated):
        if p not in listed:
            per_case.setdefault(p.parent, []).append(p)
    images = []
    for case_dir in sorted(per_case):
        ordered = sorted(per_case[case_dir], key=sun_frame_key)
        images += [(case_dir, position, p) for position, p in enumerate(ordered)]
        unlisted = [p for p in ordered if p not in annotated]
        if unlisted and len(unlisted) < len(ordered):
            # a case with a box file whose frames are not all in it: read as negatives, said so
            notes.append(Skip(str(case_dir), f"frames without a box line: {len(unlisted)} of "
                                             f"{len(ordered)} frames of {case_dir.name} (e.g. "
                                             f"{unlisted[0].name}) are read as negatives"))

    index = DatasetIndex(warnings=notes)
    unsized: dict[str, int] = {}
    with Progress(len(images), "frames", "reading SUN", enabled=progress) as bar:
        for case_dir, frame_index, image_path in images:
            bar.update(1)
            entry = annotated.get(image_path)
            if entry and any(c == BROKEN for _, c in entry[0]):
                continue            # already reported; neither usable nor a negative
            polyp_boxes = [b for b, c in entry[0] if c == POLYP_CLASS] if entry else []
            if not polyp_boxes and not negatives:
                continue
            video = video_of.get(case_dir, case_dir.name)
            image_size = None
            if polyp_boxes and verify_images:
                image_size, problem = jpeg_size(image_path)
                if image_size is None:
                    skips.add(image_path, f"unreadable JPEG: {problem}")
                    continue
            polyp = polyp_id(case_dir.name)
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
            frame = FrameRecord(str(image_path), video, frame_index, image_size, tuple(boxes),
                                clip=sun_frame_name(image_path.name).clip)
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
    for note in notes:
        log.warning("SUN %s: %s: %s", root, note.file, note.reason)
    log.info("SUN %s: %s", root, index.summary())
    return index


def polyp_id(case_name: str) -> str:
    """`case12`, `case12_3` (a SUN-SEG clip) -> `case12`: one SUN case is one polyp."""
    number = _case_number(case_name)
    return f"case{number}" if number is not None else case_name


def _case_number(text: str) -> str | None:
    """`case12`, `Case 12`, `12`, `case12_3`, `12_3` -> "12" (clips of one case share a polyp)."""
    m = re.match(r"^\s*(?:case)?[\s_-]*(\d+)(?:[_-]\d+)?\s*$", text, re.I)
    return str(int(m.group(1))) if m else None


def walk_limited(root: Path, max_depth: int = SEARCH_DEPTH):
    """os.walk below root in sorted order: yields (folder, subfolder names, file names, depth)
    for folders up to `max_depth - 1` levels below root (root is 0), so subfolders up to
    `max_depth` levels deep are named and files up to `max_depth - 1` levels deep are seen."""
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).parts) - base_depth
        dirnames.sort()
        names = list(dirnames)
        if depth + 1 >= max_depth:
            dirnames[:] = []
        yield Path(dirpath), names, sorted(filenames), depth


def _has_image(folder: Path) -> bool:
    try:
        return any(e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES for e in os.scandir(folder))
    except OSError:
        return False


def find_case_dirs(root: Path, pattern: str, skips: SkipLog) -> list[Path]:
    """Folders matching `pattern` up to SEARCH_DEPTH levels below root that hold images.

    A matching folder without images is reported (an unpacking slip: its images are one level
    further down, or missing). None at all: DataError naming root and how deep it looked.
    """
    found, empty = [], []
    for dirpath, dirnames, _, _ in walk_limited(root):
        for name in dirnames:
            if fnmatch.fnmatch(name, pattern):
                (found if _has_image(dirpath / name) else empty).append(dirpath / name)
    for d in sorted(empty):
        if not any(f.is_relative_to(d) for f in found):
            skips.add(d, f"empty case folder: {d.name} holds no .jpg/.png images")
    if not found:
        raise DataError(f"{root}: no case folders matching {pattern!r} with images within "
                        f"{SEARCH_DEPTH} folder levels below it (is this the data set's root?)")
    return sorted(found)


def _resolve_box_files(root: Path, case_pattern: str, box_files) -> list[Path]:
    if box_files is None:
        paths = [d / f for d, _, files, _ in walk_limited(root) for f in files
                 if f.lower().endswith(".txt") and fnmatch.fnmatch(f[:-4], case_pattern)]
        if not paths:
            raise DataError(f"{root}: no box files named {case_pattern}.txt within {SEARCH_DEPTH} "
                            f"folder levels (pass box_files=)")
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


def resolve_size_table(root: Path, size_table) -> Path:
    """`size_table` (relative to root unless absolute), or the first .csv/.tsv/.md table with
    case and size columns in root or up to SIZE_TABLE_DEPTH - 1 folders below it."""
    if size_table is not None:
        p = Path(size_table)
        p = p if p.is_absolute() else root / p
        if not p.is_file():
            raise DataError(f"{p}: size table not found")
        return p
    for dirpath, _, files, _ in walk_limited(root, SIZE_TABLE_DEPTH):
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


def read_size_table(path: Path, skips: SkipLog, accept_lower_bound: bool, notes: list | None = None):
    """(sizes by polyp id `caseN`, reasons for polyps whose size is unusable) from a size table.

    Rows with a cell too many because a frame count's thousands separator was not quoted
    (`1,1,313,Is,6mm,...`) are read with the count joined again; a row whose cells still do not
    line up with the header is skipped with a reason saying so. Repairs are noted in `notes`.
    """
    rows = read_table(path)
    header = rows[0]
    cols = _size_columns([h.lower() for h in header])
    if cols is None:
        raise DataError(f"{path}: size table needs a case/id column and a size column "
                        f"(header: {', '.join(header)})")
    case_col, size_col = cols
    count_cols = [i for i, h in enumerate(header) if "frame" in h.lower()]
    rows, joined = join_split_thousands(rows, count_cols)
    if joined and notes is not None:
        notes.append(Skip(str(path), f"split thousands: {len(joined)} row(s) had a frame count split "
                                     f"at its unquoted thousands separator (line {', '.join(map(str, joined))}); "
                                     f"read with the count joined"))

    def rows_with_ids():
        for line_no, row in enumerate(rows[1:], start=2):
            if len(row) > len(header) and any(c.strip() for c in row[len(header):]):
                skips.add(path, f"misaligned row: row {line_no} has {len(row)} cells for "
                                f"{len(header)} columns ({', '.join(row)}); an unquoted comma "
                                f"inside a cell? size not read")
                continue
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
    # A case name repeats across release parts (positive and negative case1) and the box files
    # of part2's cases sit in part1's annotation_txt: box files describe positive cases, so
    # positive folders come first, then the one closest to the box file.
    candidates.sort(key=lambda d: ("negative" in d.relative_to(root).as_posix().lower(),
                                   -len(os.path.commonpath([d, box_path]).split(os.sep)), str(d)))
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
