"""REAL-Colon reader: one Pascal VOC XML per frame, `lesion_info.csv` with each polyp's size.

Layout (data-formats.md): `SSS-VVV_frames/SSS-VVV_<t>.jpg`, `SSS-VVV_annotations/SSS-VVV_<t>.xml`,
`lesion_info.csv`, `video_info.csv`. The synthetic generator writes the same layout.
"""
from __future__ import annotations

import csv
import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from pipeline.errors import DataError
from pipeline.progress import Progress
from .images import jpeg_size
from .records import (BoxAnnotation, DatasetIndex, FrameRecord, SampleRecord, SkipLog,
                      check_box, finish_index, frame_sort_key, polyp_sizes,
                      trailing_int)

log = logging.getLogger("hagview.data")

LESION_CSV = "lesion_info.csv"
VIDEO_CSV = "video_info.csv"
# The dataset's README shows `</version_fmt>1.0<version_fmt>`; tolerate files written like that.
_INVERTED_VERSION_TAG = re.compile(rb"</version_fmt>.*?<version_fmt>", re.S)


def read_realcolon(root, *, negatives: bool = True, verify_images: bool = True,
                   accept_lower_bound: bool = True, progress: bool = False) -> DatasetIndex:
    """Index a REAL-Colon style directory.

    negatives: keep frames without polyps in `frames` (a detector needs them, the sizer does not).
    verify_images: check the JPEG header and end marker of every frame that carries a box
    (`images.jpeg_size`); broken ones are skipped instead of failing mid-epoch.
    A frame whose XML does not parse or has an object with a missing field is skipped as a
    whole: keeping its other boxes would teach a detector that a visible polyp is background.
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
    xml_lists = [(d, sorted(d.glob("*.xml"), key=frame_sort_key)) for d in ann_dirs]
    total = sum(len(x) for _, x in xml_lists)
    with Progress(total, "files", "reading REAL-Colon", enabled=progress) as bar:
        for ann_dir, xmls in xml_lists:
            video = ann_dir.name.rsplit("_", 1)[0]
            frames_dir = root / f"{video}_frames"
            for xml_path in xmls:
                bar.update(1)
                frame = _read_frame(xml_path, video, frames_dir, negatives, verify_images, skips)
                if frame is None:
                    continue
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


def _read_frame(xml_path: Path, video: str, frames_dir: Path, negatives: bool,
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
    filename = (root.findtext("filename") or "").strip() or f"{xml_path.stem}.jpg"
    image_path = frames_dir / Path(filename).name
    frame_index = trailing_int(Path(filename).stem)
    if frame_index is None:
        frame_index = trailing_int(xml_path.stem)
    if frame_index is None:
        skips.add(xml_path, f"no frame number: cannot read one from {filename!r}")
        return None
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
    if boxes and verify_images:
        actual, problem = jpeg_size(image_path)
        if actual is None:
            skips.add(image_path, f"unreadable JPEG: {problem}")
            return None
        if image_size is not None and actual != image_size:
            skips.add(image_path, f"size mismatch: image is {actual[0]}x{actual[1]}, "
                                  f"{xml_path.name} says {image_size[0]}x{image_size[1]}")
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
