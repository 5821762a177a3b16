"""REAL-Colon reader: one Pascal VOC XML per frame, `lesion_info.csv` with each polyp's size.

Layout (docs/data-formats.md): `SSS-VVV_frames/SSS-VVV_<t>.jpg`,
`SSS-VVV_annotations/SSS-VVV_<t>.xml`, `lesion_info.csv`, `video_info.csv`. The synthetic
generator writes the same layout. Video 001-012 names its frames `001-012_<t>.0.jpg`, while its
XML may say `001-012_<t>.jpg`: frame numbers are read the way the official scripts read them
(`name.split("_")[-1].split(".")[0]`) and the file is looked up on disk by that number when the
XML's name is not there. Boxes stay in continuous pixel coordinates clipped to [0, W] x [0, H]
(`records.check_box`), not the official COCO export's [0, W-1] x [0, H-1].
"""
from __future__ import annotations

import csv
import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from pipeline.errors import DataError
from pipeline.progress import Progress
from .images import verified_jpeg_size
from .records import (BoxAnnotation, DatasetIndex, FrameRecord, SampleRecord, Skip, SkipLog,
                      check_box, finish_index, polyp_sizes)

log = logging.getLogger("hagview.data")

LESION_CSV = "lesion_info.csv"
VIDEO_CSV = "video_info.csv"
# The dataset's README shows `</version_fmt>1.0<version_fmt>`; tolerate files written like that.
_INVERTED_VERSION_TAG = re.compile(rb"</version_fmt>.*?<version_fmt>", re.S)


def realcolon_frame_number(name: str) -> int | None:
    """The frame number in a REAL-Colon file name, read like the official scripts read it
    (`name.split("_")[-1].split(".")[0]`): `001-001_152.jpg` -> 152, `001-012_9.0.jpg` -> 9
    (a trailing-digits rule would read 0 there)."""
    token = Path(name).name.split("_")[-1].split(".")[0]
    return int(token) if token.isascii() and token.isdigit() else None


def _frame_file_key(path: Path):
    n = realcolon_frame_number(path.name)
    return (n if n is not None else -1, path.name)


class _FrameFiles:
    """The frame files of one video as they are on disk, found by name or by frame number."""

    def __init__(self, frames_dir: Path):
        try:
            names = [p.name for p in frames_dir.iterdir()]
        except OSError:
            names = None            # no folder: names are taken as written (and found missing later)
        self.names = set(names or ())
        self.listed = names is not None
        by_number: dict[int, list[str]] = {}
        for name in sorted(self.names):
            n = realcolon_frame_number(name)
            if n is not None and Path(name).suffix.lower() in (".jpg", ".jpeg", ".png"):
                by_number.setdefault(n, []).append(name)
        self.by_number = by_number
        self.renamed = 0
        self.example = ""

    def resolve(self, name: str, number: int) -> str:
        """The file on disk for the XML's `name`: itself, or the one file with its frame number
        (`001-012_8.jpg` in the XML, `001-012_8.0.jpg` on disk)."""
        if not self.listed or name in self.names:
            return name
        candidates = self.by_number.get(number, [])
        if len(candidates) == 1:
            self.renamed += 1
            self.example = self.example or f"{candidates[0]} for {name}"
            return candidates[0]
        return name

    def exists(self, name: str) -> bool:
        return not self.listed or name in self.names


def read_realcolon(root, *, negatives: bool = True, verify_images: bool = True,
                   accept_lower_bound: bool = True, progress: bool = False) -> DatasetIndex:
    """Index a REAL-Colon style directory.

    negatives: keep frames without polyps in `frames` (a detector needs them, the sizer does not).
    verify_images: check the JPEG header and end marker of every frame that carries a box
    (`images.jpeg_size`) and that every negative frame's file exists; broken ones are skipped
    instead of failing mid-epoch.
    A frame whose XML does not parse or has an object with a missing field is skipped as a
    whole: keeping its other boxes would teach a detector that a visible polyp is background.
    Two XMLs of one video naming the same frame number: the first (in file-name order) is kept,
    each other one is skipped as a duplicate and the count is logged per video.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: REAL-Colon root does not exist or is not a directory")
    skips = SkipLog(f"REAL-Colon {root}")
    sizes, bad_sizes = _read_lesion_sizes(root / LESION_CSV, skips, accept_lower_bound)
    ann_dirs = sorted(p for p in root.iterdir() if p.is_dir() and
                      (p.name.endswith("_annotations") or p.name.endswith("_annotation")))
    if not ann_dirs:
        raise DataError(f"{root}: no SSS-VVV_annotations folders (is this a REAL-Colon root?)")
    _check_video_info(root / VIDEO_CSV, {d.name.rsplit("_", 1)[0] for d in ann_dirs}, skips)

    index = DatasetIndex()
    boxes_per_unsized: dict[str, int] = {}
    xml_lists = [(d, sorted(d.glob("*.xml"), key=_frame_file_key)) for d in ann_dirs]
    total = sum(len(x) for _, x in xml_lists)
    with Progress(total, "files", "reading REAL-Colon", enabled=progress) as bar:
        for ann_dir, xmls in xml_lists:
            video = ann_dir.name.rsplit("_", 1)[0]
            frames_dir = root / f"{video}_frames"
            files = _FrameFiles(frames_dir)
            frames: list[FrameRecord] = []
            for xml_path in xmls:
                bar.update(1)
                frame = _read_frame(xml_path, video, frames_dir, files, negatives, verify_images, skips)
                if frame is not None:
                    frames.append(frame)
            if files.renamed:
                note = (f"renamed frames: {files.renamed} frame file(s) of {video} found by frame "
                        f"number under another name than their XML gives (e.g. {files.example})")
                index.warnings.append(Skip(str(frames_dir), note))
                log.info("REAL-Colon %s", note)
            for frame in _drop_duplicate_indices(frames, video, ann_dir, skips):
                index.frames.append(frame)
                for ann in frame.boxes:
                    size = sizes.get(ann.polyp_id)
                    if size is None:
                        boxes_per_unsized[ann.polyp_id] = boxes_per_unsized.get(ann.polyp_id, 0) + 1
                        continue
                    index.samples.append(SampleRecord(frame.image_path, video, frame.frame_index,
                                                      ann.box, ann.polyp_id, size, frame.image_size))
    finish_index(index, skips, sizes=sizes, unsized=boxes_per_unsized, bad_sizes=bad_sizes,
                 size_file=root / LESION_CSV, not_listed="not listed")
    if not index.samples:
        raise DataError(f"{root}: no usable samples (no box of a polyp with a known size; "
                        f"{len(index.skipped)} skipped)")
    log.info("REAL-Colon %s: %s", root, index.summary())
    return index


def _read_lesion_sizes(path: Path, skips: SkipLog, accept_lower_bound: bool):
    if not path.is_file():
        raise DataError(f"{path}: missing (REAL-Colon needs lesion_info.csv with polyp sizes)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc})") from None
    if not rows:
        raise DataError(f"{path}: empty file")
    header = [h.strip().lower() for h in rows[0]]
    try:
        id_col = header.index("unique_object_id")
    except ValueError:
        raise DataError(f"{path}: no 'unique_object_id' column (header: {', '.join(rows[0])})") from None
    size_col = next((i for i, h in enumerate(header) if h.startswith("size")), None)
    if size_col is None:
        raise DataError(f"{path}: no 'size [mm]' column (header: {', '.join(rows[0])})")
    def rows_with_ids():
        for line_no, row in enumerate(rows[1:], start=2):
            if not any(c.strip() for c in row):
                continue
            polyp = row[id_col].strip() if id_col < len(row) else ""
            if not polyp:
                skips.add(path, f"missing field: line {line_no} has no unique_object_id")
                continue
            yield polyp, row[size_col] if size_col < len(row) else ""
    return polyp_sizes(rows_with_ids(), accept_lower_bound=accept_lower_bound)


def _check_video_info(path: Path, videos_found: set[str], skips: SkipLog) -> None:
    if not path.is_file():
        log.info("%s: not present; videos are taken from the annotation folders", path)
        return
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            listed = {(r.get("unique_video_name") or "").strip() for r in csv.DictReader(f)}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        skips.add(path, f"unreadable video table: {exc}")
        return
    for video in sorted(listed - videos_found - {""}):
        skips.add(path, f"video without annotations: {video} has no {video}_annotations folder")


def _parse_xml(data: bytes) -> ET.Element:
    try:
        return ET.fromstring(data)
    except ET.ParseError:
        fixed = _INVERTED_VERSION_TAG.sub(b"", data)
        if fixed == data:
            raise
        return ET.fromstring(fixed)


def _drop_duplicate_indices(frames: list[FrameRecord], video: str, ann_dir: Path,
                            skips: SkipLog) -> list[FrameRecord]:
    """Frames with distinct frame numbers: a second XML for a number is reported, not kept
    (a detector epoch keys frames by (video, index) and would silently drop one of them)."""
    first: dict[int, FrameRecord] = {}
    kept = []
    for frame in sorted(frames, key=lambda f: (f.frame_index, Path(f.image_path).name)):
        other = first.get(frame.frame_index)
        if other is not None:
            skips.add(frame.image_path, f"duplicate frame index: frame {frame.frame_index} of {video} "
                                        f"is also {Path(other.image_path).name} (kept)")
            continue
        first[frame.frame_index] = frame
        kept.append(frame)
    if len(kept) < len(frames):
        log.warning("REAL-Colon %s: %d frame(s) share a frame number with another frame in %s "
                    "and were skipped", video, len(frames) - len(kept), ann_dir.name)
    return kept


def _read_frame(xml_path: Path, video: str, frames_dir: Path, files: _FrameFiles, negatives: bool,
                verify_images: bool, skips: SkipLog) -> FrameRecord | None:
    try:
        data = xml_path.read_bytes()
    except OSError as exc:
        skips.add(xml_path, f"unreadable XML: {exc.strerror or exc}")
        return None
    if not negatives and b"<object" not in data:
        return None
    try:
        root = _parse_xml(data)
    except ET.ParseError as exc:
        skips.add(xml_path, f"XML does not parse: {exc}")
        return None
    filename = Path((root.findtext("filename") or "").strip() or f"{xml_path.stem}.jpg").name
    frame_index = realcolon_frame_number(filename)
    if frame_index is None:
        frame_index = realcolon_frame_number(xml_path.name)
    if frame_index is None:
        skips.add(xml_path, f"no frame number: cannot read one from {filename!r}")
        return None
    image_path = frames_dir / files.resolve(filename, frame_index)
    image_size = _xml_size(root)

    boxes = []
    for n, obj in enumerate(root.iter("object"), start=1):
        ann, problem = _read_object(obj, image_size)
        if ann is None:
            skips.add(xml_path, f"{problem} (object {n}; frame skipped)")
            return None
        boxes.append(ann)
    if not boxes and not negatives:
        return None
    if not boxes and verify_images and not files.exists(image_path.name):
        skips.add(image_path, "unreadable JPEG: image file is missing")
        return None
    if boxes and verify_images:
        actual = verified_jpeg_size(image_path, image_size, xml_path.name, skips)
        if actual is None:
            return None
        if image_size is None:
            image_size = actual
            checked = []
            for ann in boxes:
                box, problem = check_box(ann.box, image_size)
                if box is None:
                    skips.add(xml_path, f"{problem} (frame skipped)")
                    return None
                checked.append(BoxAnnotation(box, ann.polyp_id, ann.difficult))
            boxes = checked
    return FrameRecord(str(image_path), video, frame_index, image_size, tuple(boxes))


def _xml_size(root: ET.Element) -> tuple[int, int] | None:
    try:
        w = int(float(root.findtext("size/width")))
        h = int(float(root.findtext("size/height")))
    except (TypeError, ValueError):
        return None
    return (w, h) if w > 0 and h > 0 else None


def _read_object(obj: ET.Element, image_size) -> tuple[BoxAnnotation | None, str]:
    polyp = (obj.findtext("unique_id") or "").strip()
    if not polyp:
        return None, "missing field: unique_id"
    bnd = obj.find("bndbox")
    if bnd is None:
        return None, "missing field: bndbox"
    values = {}
    for tag in ("xmin", "xmax", "ymin", "ymax"):      # VOC order as REAL-Colon writes it
        text = bnd.findtext(tag)
        if text is None or not text.strip():
            return None, f"missing field: bndbox/{tag}"
        try:
            values[tag] = float(text)
        except ValueError:
            return None, f"bad field: bndbox/{tag} is {text.strip()!r}, not a number"
    box, problem = check_box((values["xmin"], values["ymin"], values["xmax"], values["ymax"]), image_size)
    if box is None:
        return None, problem
    # VOC's <difficult> (REAL-Colon files carry it; absent means 0)
    difficult_text = (obj.findtext("difficult") or "0").strip()
    try:
        difficult = int(float(difficult_text)) != 0
    except ValueError:
        return None, f"bad field: difficult is {difficult_text!r}, not 0 or 1"
    return BoxAnnotation(box, polyp, difficult), ""
