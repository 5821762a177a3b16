"""Any folder of polyp images with binary masks.

`image_folder`: `<root>/<images>/...` and `<root>/<masks>/...` with the same sub folders; a mask
is named after its image (same stem, or the stem plus `_mask`, `_seg`, `_gt`...; any image
format). This is how most public polyp sets look (ETIS-Larib, CVC-ColonDB, Kvasir-SEG re-packs,
SUN-SEG's `Frame/` + `GT/`). Boxes are the mask's 8-connected components of at least
`min_area_fraction` of the image. Frames in one sub folder (SUN-SEG's case folders) form one
group; frames directly in the image folder are a group each.
"""
from __future__ import annotations

import logging
from pathlib import Path

from pipeline.errors import DataError
from pipeline.progress import Progress
from .masks import EMPTY_MASK_POLICIES, MIN_AREA_FRACTION, mask_frame, pair_images_masks
from .records import DatasetIndex, SkipLog

log = logging.getLogger("hagview.data")

IMAGE_DIRS = ("images", "Images", "image", "Frame", "Frames", "Original", "img", "imgs")
MASK_DIRS = ("masks", "Masks", "mask", "GT", "Ground Truth", "GroundTruth", "ground_truth", "labels")


def read_image_folder(root, *, images: str | None = None, masks: str | None = None, name: str | None = None,
                      min_area_fraction: float = MIN_AREA_FRACTION, empty_mask: str = "skip",
                      negatives: bool = True, verify_images: bool = True,
                      progress: bool = False) -> DatasetIndex:
    """Index an image + mask folder. images/masks: the sub folder names (none: the first of
    IMAGE_DIRS / MASK_DIRS present); name: the `source` label (none: the root's name);
    empty_mask "skip" or "negative" (an empty mask means a frame without a polyp).
    `negatives`/`verify_images` are accepted for a common reader signature."""
    del negatives, verify_images
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder root does not exist or is not a directory")
    if empty_mask not in EMPTY_MASK_POLICIES:
        raise DataError(f"image_folder: empty_mask must be one of {', '.join(EMPTY_MASK_POLICIES)}, "
                        f"got {empty_mask!r}")
    images_dir = _sub_folder(root, images, IMAGE_DIRS, "images")
    masks_dir = _sub_folder(root, masks, MASK_DIRS, "masks")
    source = name or root.name
    skips = SkipLog(f"image folder {root}")
    pairs = pair_images_masks(images_dir, masks_dir)
    index = DatasetIndex()
    members: dict[str, int] = {}
    with Progress(len(pairs), "images", f"reading {source}", enabled=progress) as bar:
        for pair in pairs:
            bar.update(1)
            parent = pair.relative.parent.as_posix()
            stem = pair.relative.with_suffix("").as_posix()
            video = f"{source}/{parent if parent != '.' else stem}"
            frame = mask_frame(pair, skips, video=video, frame_index=members.get(video, 0), source=source,
                               polyp_prefix=f"{source}/{stem}", min_area_fraction=min_area_fraction,
                               empty_mask=empty_mask)
            if frame is not None:
                members[video] = members.get(video, 0) + 1
                index.frames.append(frame)
    index.skipped = skips.finish()
    if not index.frames:
        raise DataError(f"{root}: no usable image/mask pairs ({len(index.skipped)} skipped)")
    log.info("image folder %s: %s", root, index.summary())
    return index


def _sub_folder(root: Path, given: str | None, candidates: tuple[str, ...], what: str) -> Path:
    if given is not None:
        folder = root / given
        if not folder.is_dir():
            raise DataError(f"{folder}: {what} folder does not exist")
        return folder
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"{root}: no {what} folder (looked for {', '.join(candidates)}; pass {what}=)")
