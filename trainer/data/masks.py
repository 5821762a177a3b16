"""Polyp frames from image + binary-mask pairs: pairing files, boxes from mask components.

Most public polyp sets (Kvasir-SEG, PolypGen, CVC-ClinicDB, ETIS-Larib, CVC-ColonDB, SUN-SEG)
ship an image folder and a mask folder. A mask is binarised at > 127 (JPEG masks carry grey
levels along edges); each 8-connected component of at least `min_area_fraction` of the image is
one polyp box (smaller ones are JPEG specks or stray pixels). The layout readers (kvasir,
polypgen, image_folder) decide grouping and naming; this module does the per-frame work and the
skip rules: an image without a mask, an unreadable image or mask, a mask of another size, and
(by default) an empty mask are skipped with the reason. An empty mask is not taken as a
negative unless asked: in PolypGen's positive set such frames are views near a polyp.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .images import jpeg_size
from .records import Box, BoxAnnotation, FrameRecord, SkipLog, check_box

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
MASK_THRESHOLD = 127
# PolypGen's README: components under 0.03% of the image are JPEG specks.
MIN_AREA_FRACTION = 0.0003
# How mask files are named after their image's stem in the sets we know (PolypGen: `_mask`).
MASK_NAME_SUFFIXES = ("", "_mask", "-mask", "_Mask", "_seg", "_gt", "_GT")
EMPTY_MASK_POLICIES = ("skip", "negative")


@dataclass(frozen=True, slots=True)
class MaskPair:
    image: Path
    mask: Path | None         # None: no mask file for this image
    relative: Path            # image path relative to the image folder (subfolders kept)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, in name order (sub folders included)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        out.extend(Path(dirpath) / f for f in sorted(filenames) if is_image_file(Path(f)))
    return out


def pair_images_masks(images_dir: Path, masks_dir: Path,
                      suffixes: tuple[str, ...] = MASK_NAME_SUFFIXES) -> list[MaskPair]:
    """Each image under `images_dir` with the mask at the same relative place under `masks_dir`
    whose stem is the image's stem plus one of `suffixes` (any image extension)."""
    masks: dict[tuple[str, str], Path] = {}
    for m in list_images(masks_dir):
        rel = m.relative_to(masks_dir)
        masks.setdefault((rel.parent.as_posix(), m.stem), m)
    pairs = []
    for image in list_images(images_dir):
        rel = image.relative_to(images_dir)
        parent = rel.parent.as_posix()
        mask = next((masks[(parent, image.stem + s)] for s in suffixes
                     if (parent, image.stem + s) in masks), None)
        pairs.append(MaskPair(image, mask, rel))
    return pairs


def image_size(path: Path) -> tuple[tuple[int, int] | None, str]:
    """(width, height) of an image file, or (None, reason). JPEGs from the header (cheap, and it
    catches truncated files); other formats are decoded."""
    if path.suffix.lower() in (".jpg", ".jpeg"):
        return jpeg_size(path)
    image = _decode(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        return None, "image cannot be decoded"
    return (int(image.shape[1]), int(image.shape[0])), ""


def read_mask(path: Path) -> np.ndarray | None:
    """Binary mask (bool HxW, > 127 in grey) or None when it cannot be decoded."""
    grey = _decode(path, cv2.IMREAD_GRAYSCALE)
    return None if grey is None else grey > MASK_THRESHOLD


def mask_boxes(mask: np.ndarray, min_area_fraction: float = MIN_AREA_FRACTION) -> list[Box]:
    """One (x1, y1, x2, y2) box per 8-connected component of `mask` (bool) whose pixel count is
    at least `min_area_fraction` of the image; sorted by position (top, then left)."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    min_area = min_area_fraction * mask.shape[0] * mask.shape[1]
    boxes = [(float(x), float(y), float(x + w), float(y + h))
             for x, y, w, h, area in stats[1:count] if area >= min_area]
    return sorted(boxes, key=lambda b: (b[1], b[0]))


def mask_frame(pair: MaskPair, skips: SkipLog, *, video: str, frame_index: int, source: str,
               polyp_prefix: str, min_area_fraction: float = MIN_AREA_FRACTION,
               empty_mask: str = "skip", boxes: list[Box] | None = None,
               components: list[Box] | None = None) -> FrameRecord | None:
    """The frame of one image/mask pair, or None (the reason is in `skips`).

    Boxes come from the mask's components unless `boxes` is given (an official box file); the
    mask is then still read and size-checked, and its component boxes are appended to
    `components` when a list is passed (to compare the two). Each box is its own polyp id
    (`<polyp_prefix>#<n>`): still images say nothing about which polyp is which across frames.
    """
    size, problem = image_size(pair.image)
    if size is None:
        skips.add(pair.image, f"unreadable image: {problem}")
        return None
    if pair.mask is None:
        skips.add(pair.image, "no mask: no mask file named after this image")
        return None
    mask = read_mask(pair.mask)
    if mask is None:
        skips.add(pair.mask, "unreadable mask: cannot be decoded")
        return None
    if (mask.shape[1], mask.shape[0]) != size:
        skips.add(pair.mask, f"size mismatch: mask is {mask.shape[1]}x{mask.shape[0]}, "
                             f"image is {size[0]}x{size[1]}")
        return None
    found = mask_boxes(mask, min_area_fraction)
    if components is not None:
        components.extend(found)
    if boxes is None:
        boxes = found
    annotations = []
    for box in boxes:
        checked, problem = check_box(box, size)
        if checked is None:
            skips.add(pair.mask, f"{problem} (frame skipped)")
            return None
        annotations.append(BoxAnnotation(checked, f"{polyp_prefix}#{len(annotations) + 1}"))
    if not annotations and empty_mask != "negative":
        skips.add(pair.mask, f"empty mask: no component of at least {min_area_fraction:.2%} "
                             f"of the image")
        return None
    return FrameRecord(str(pair.image), video, frame_index, size, tuple(annotations), source=source)


def _decode(path: Path, flags: int) -> np.ndarray | None:
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    return cv2.imdecode(data, flags)
