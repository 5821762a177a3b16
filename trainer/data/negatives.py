"""Frames without polyps: every image under a root (any folder tree) is a negative frame.

Its top-level sub folder (or the root's name) is its `source` (e.g. `negatives/nerthus`), and
the folder holding it is its group (`video`), so frames of one folder stay in one fold.
"""
from __future__ import annotations

import logging
from pathlib import Path

from pipeline.errors import DataError
from pipeline.progress import Progress
from .masks import image_size as read_image_size
from .masks import list_images
from .records import DatasetIndex, FrameRecord, SkipLog

log = logging.getLogger("hagview.data")


def read_negatives(root, *, name: str | None = None, negatives: bool = True, verify_images: bool = True,
                   progress: bool = False) -> DatasetIndex:
    """Index frames without polyps: every decodable image under `root`."""
    del negatives, verify_images
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: negatives root does not exist or is not a directory")
    label = name or root.name
    skips = SkipLog(f"negatives {root}")
    files = list_images(root)
    index = DatasetIndex()
    members: dict[str, int] = {}
    with Progress(len(files), "images", "reading negatives", enabled=progress) as bar:
        for path in files:
            bar.update(1)
            size, problem = read_image_size(path)
            if size is None:
                skips.add(path, f"unreadable image: {problem}")
                continue
            rel = path.relative_to(root)
            source = f"{label}/{rel.parts[0]}" if len(rel.parts) > 1 else label
            video = f"{label}/{rel.parent.as_posix()}" if len(rel.parts) > 1 else f"{label}/{path.stem}"
            index.frames.append(FrameRecord(str(path), video, members.get(video, 0), size, (), source=source))
            members[video] = members.get(video, 0) + 1
    index.skipped = skips.finish()
    if not index.frames:
        raise DataError(f"{root}: no readable images of frames without polyps ({len(index.skipped)} skipped)")
    log.info("negatives %s: %s", root, index.summary())
    return index
