"""Which frames belong together, and folds that keep them together.

Still-image polyp sets rarely say which frames come from one patient or video. Near-duplicates
(the same polyp in consecutive or re-cropped frames) and sequences are found by comparing small
grey thumbnails of the frame centres (zero-mean, unit-norm; the dot product is their
correlation). Folds then split by group with scikit-learn (`GroupKFold`, `LeaveOneGroupOut`), so
a group never sits on both sides; grouping by `FrameRecord.source` gives centre-wise folds.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import ConfigError, DataError
from .records import FrameRecord

THUMB_SIZE = 32
CENTRE_FRACTION = 0.8      # the border carries burnt-in text and insets shared by unrelated frames


def thumbnail(path: str | Path) -> np.ndarray | None:
    """Zero-mean unit-norm grey thumbnail of the image centre (None: cannot be decoded)."""
    data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else None
    grey = None if data is None or data.size == 0 else cv2.imdecode(data, cv2.IMREAD_REDUCED_GRAYSCALE_4)
    if grey is None:
        return None
    h, w = grey.shape
    dy, dx = int(h * (1 - CENTRE_FRACTION) / 2), int(w * (1 - CENTRE_FRACTION) / 2)
    crop = grey[dy:h - dy, dx:w - dx] if h - 2 * dy > 0 and w - 2 * dx > 0 else grey
    t = cv2.resize(crop, (THUMB_SIZE, THUMB_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    t -= t.mean()
    norm = float(np.linalg.norm(t))
    return t / norm if norm > 1e-6 else t


def similarity_groups(paths: Sequence[str | Path], threshold: float, *,
                      consecutive: bool = False) -> list[int]:
    """A group number per path: frames whose thumbnails correlate at >= `threshold` share one.

    consecutive: compare each frame only with the one before it (sequences of numbered frames,
    a new group where the picture changes); otherwise every pair (near-duplicates anywhere),
    joined transitively. An undecodable frame is a group of its own.
    """
    thumbs = [thumbnail(p) for p in paths]
    parent = list(range(len(paths)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    valid = [i for i, t in enumerate(thumbs) if t is not None]
    if consecutive:
        for a, b in zip(range(len(paths)), range(1, len(paths))):
            if thumbs[a] is not None and thumbs[b] is not None and float(thumbs[a] @ thumbs[b]) >= threshold:
                parent[find(b)] = find(a)
    elif len(valid) > 1:
        matrix = np.stack([thumbs[i] for i in valid])
        corr = matrix @ matrix.T
        for a, b in zip(*np.nonzero(np.triu(corr >= threshold, k=1))):
            parent[find(valid[b])] = find(valid[a])
    roots: dict[int, int] = {}
    return [roots.setdefault(find(i), len(roots)) for i in range(len(paths))]


def group_of(frame: FrameRecord, by: str) -> str:
    if by == "video":
        return frame.video
    if by == "source":
        return frame.source or frame.video
    raise ConfigError(f"grouping {by!r} is not 'video' or 'source'")


def grouped_folds(frames: Sequence[FrameRecord], *, by: str = "video", k: int | None = None
                  ) -> list[tuple[list[FrameRecord], list[FrameRecord], list[str]]]:
    """(training frames, validation frames, validation groups) per fold.

    by "video": the reader's group (video, patient, sequence, near-duplicate set);
    by "source": the data set or centre (`polypgen/C3`). k None: leave one group out
    (scikit-learn LeaveOneGroupOut), else GroupKFold with k folds (groups balanced by frames).
    """
    from sklearn.model_selection import GroupKFold, LeaveOneGroupOut

    groups = np.array([group_of(f, by) for f in frames])
    distinct = sorted(set(groups.tolist()))
    if k is None:
        if len(distinct) < 2:
            raise DataError(f"leave-one-out by {by} needs 2 or more groups, got {len(distinct)}")
        splitter = LeaveOneGroupOut()
    else:
        if k < 2 or len(distinct) < k:
            raise DataError(f"cannot make {k} folds by {by} from {len(distinct)} groups")
        splitter = GroupKFold(n_splits=k)
    out = []
    for train_idx, val_idx in splitter.split(np.zeros(len(frames)), groups=groups):
        out.append(([frames[i] for i in train_idx], [frames[i] for i in val_idx],
                    sorted(set(groups[val_idx].tolist()))))
    return out
