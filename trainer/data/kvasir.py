"""Kvasir-SEG reader: `images/<id>.jpg`, `masks/<id>.jpg` and the official `kavsir_bboxes.json`.

Boxes are the official ones (`{"<id>": {"height", "width", "bbox": [{"xmin", ...}]}}`), checked
against the mask's 8-connected components: an official box that no component overlaps at IoU
>= 0.5, or a component no official box covers, is a warning in `DatasetIndex.warnings` (the
official box is kept). Official boxes under 2 px wide or high or under `min_area_fraction` of
the image (1-3 px slivers in the release) are dropped with a warning. `boxes="masks"` takes the mask components instead.

Kvasir-SEG has no patient or video ids; near-duplicate frames (the same polyp, consecutive or
re-cropped) are grouped by thumbnail correlation (`grouping.similarity_groups`) so that they
stay in one fold. Each group is one `video` (`kvasir_seg/<first id>`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from pipeline.boxes import box_iou
from pipeline.errors import DataError
from pipeline.progress import Progress
from .grouping import similarity_groups
from .masks import MIN_AREA_FRACTION, MaskPair, mask_frame, pair_images_masks
from .records import DatasetIndex, Skip, SkipLog

log = logging.getLogger("hagview.data")

SOURCE = "kvasir_seg"
BOX_FILE = "kavsir_bboxes.json"        # sic: the official file name
DUPLICATE_THRESHOLD = 0.9              # centre-thumbnail correlation of near-duplicate frames
AGREEMENT_IOU = 0.5


def read_kvasir_seg(root, *, boxes: str = "official", min_area_fraction: float = MIN_AREA_FRACTION,
                    group_duplicates: bool = True, duplicate_threshold: float = DUPLICATE_THRESHOLD,
                    negatives: bool = True, verify_images: bool = True,
                    progress: bool = False) -> DatasetIndex:
    """Index a Kvasir-SEG root. `negatives` and `verify_images` are accepted for a common reader
    signature (Kvasir-SEG has no negative frames; every image is checked)."""
    del negatives, verify_images
    root = Path(root)
    if boxes not in ("official", "masks"):
        raise DataError(f"kvasir_seg: boxes must be 'official' or 'masks', got {boxes!r}")
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise DataError(f"{root}: no {sub}/ folder (is this a Kvasir-SEG root?)")
    skips = SkipLog(f"Kvasir-SEG {root}")
    official = _read_box_file(root / BOX_FILE) if boxes == "official" else None
    pairs = pair_images_masks(root / "images", root / "masks", suffixes=("",))
    if not pairs:
        raise DataError(f"{root}/images: no image files")
    groups = (similarity_groups([p.image for p in pairs], duplicate_threshold) if group_duplicates
              else list(range(len(pairs))))
    group_name: dict[int, str] = {}
    warnings: list[Skip] = []
    index = DatasetIndex()
    members: dict[int, int] = {}
    with Progress(len(pairs), "images", "reading Kvasir-SEG", enabled=progress) as bar:
        for pair, group in zip(pairs, groups):
            bar.update(1)
            name = pair.image.stem
            frame_boxes = None
            if official is not None:
                entry = official.get(name)
                if entry is None:
                    skips.add(pair.image, f"not in {BOX_FILE}: no official box for {name}")
                    continue
                frame_boxes = _official_boxes(entry, name, pair, min_area_fraction, warnings, skips)
                if frame_boxes is None:
                    continue
            video = group_name.setdefault(group, f"{SOURCE}/{name}")
            components: list = []
            frame = mask_frame(pair, skips, video=video, frame_index=members.get(group, 0), source=SOURCE,
                               polyp_prefix=f"{SOURCE}/{name}", min_area_fraction=min_area_fraction,
                               boxes=frame_boxes, components=components)
            if frame is None:
                continue
            members[group] = members.get(group, 0) + 1
            if official is not None:
                _compare_with_mask(pair, frame_boxes, components, warnings)
            index.frames.append(frame)
    if official is not None:
        listed = {p.image.stem for p in pairs}
        for name in sorted(set(official) - listed):
            skips.add(root / BOX_FILE, f"image missing: {name} is in {BOX_FILE} but not in images/")
    index.skipped = skips.finish()
    index.warnings = warnings
    if warnings:
        log.warning("Kvasir-SEG %s: %d official boxes disagree with the masks (DatasetIndex.warnings), "
                    "first: %s: %s", root, len(warnings), warnings[0].file, warnings[0].reason)
    if not index.frames:
        raise DataError(f"{root}: no usable Kvasir-SEG frames ({len(index.skipped)} skipped)")
    log.info("Kvasir-SEG %s: %s in %d groups", root, index.summary(), len({f.video for f in index.frames}))
    return index


def _read_box_file(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: missing (Kvasir-SEG's official box file; or pass boxes='masks')")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a mapping of image ids, got {type(doc).__name__}")
    return doc


def _official_boxes(entry, name: str, pair: MaskPair, min_area_fraction: float,
                    warnings: list[Skip], skips: SkipLog) -> list | None:
    """The official boxes of one image (None: the entry is malformed; frame skipped)."""
    try:
        width, height = int(entry["width"]), int(entry["height"])
        raw = [(float(b["xmin"]), float(b["ymin"]), float(b["xmax"]), float(b["ymax"]))
               for b in entry["bbox"]]
    except (KeyError, TypeError, ValueError) as exc:
        skips.add(pair.image, f"bad field: {BOX_FILE} entry {name} ({type(exc).__name__}: {exc})")
        return None
    out = []
    for box in raw:
        w, h = box[2] - box[0], box[3] - box[1]
        if w < 2 or h < 2 or w * h < min_area_fraction * width * height:
            warnings.append(Skip(str(pair.image), f"official box {box} is a sliver (under 2 px or "
                                                  f"{min_area_fraction:.2%} of the image): dropped"))
            continue
        out.append(box)
    if not out:
        skips.add(pair.image, f"no usable official box: every box of {name} is a sliver")
        return None
    return out


def _compare_with_mask(pair: MaskPair, boxes: list, components: list, warnings: list[Skip]) -> None:
    components = np.array(components, dtype=np.float64).reshape(-1, 4)
    official = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    iou = box_iou(official, components)
    for i, box in enumerate(official):
        if iou.shape[1] == 0 or iou[i].max() < AGREEMENT_IOU:
            best = 0.0 if iou.shape[1] == 0 else float(iou[i].max())
            warnings.append(Skip(str(pair.image), f"official box {tuple(box.tolist())} matches no mask "
                                                  f"component (best IoU {best:.2f})"))
    for j, comp in enumerate(components):
        if iou.shape[0] == 0 or iou[:, j].max() < AGREEMENT_IOU:
            warnings.append(Skip(str(pair.image), f"mask component {tuple(comp.tolist())} has no official box"))
