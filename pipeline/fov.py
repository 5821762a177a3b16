"""Field of view: the lit circle/octagon of the endoscope image inside its black border.

Pixels outside the field of view carry no information (black, or the tower's text overlay),
so the sizer's inputs are zeroed there. The border is found as the dark region connected to
the image edge: the lumen is dark too, but it is surrounded by lit mucosa, and the convex hull
of the lit region closes any gap where the dark lumen meets the rim.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import cv2
import numpy as np

DARK_THRESHOLD = 24          # max(R,G,B) below this counts as border black (8-bit)
MIN_FOV_FRACTION = 0.15      # a smaller "field of view" means the frame was too dark to tell
ANALYSIS_WIDTH = 320         # estimate on a downscaled copy: the border is large and smooth


def channel_max(image: np.ndarray) -> np.ndarray:
    """max(R, G, B) per pixel (numpy's max over a last axis of 3 is ~30x slower: 1.5 ms at 320x180)."""
    return np.maximum(np.maximum(image[..., 0], image[..., 1]), image[..., 2])


def estimate_fov_mask(image_rgb: np.ndarray, dark_threshold: int = DARK_THRESHOLD) -> np.ndarray:
    """Bool HxW, True inside the field of view.

    Steps: max over channels (mucosa is red, so a luminance threshold would cut dark red
    tissue), threshold, keep the largest lit component (drops the overlay text), fill it as a
    convex polygon (fills the dark lumen and any dark notch where it touches the rim).
    A frame with no dark border gives all True; so does one where the lit area is under
    `MIN_FOV_FRACTION` of the frame, as such a frame (dark, blank) says nothing about the border.
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image_rgb.shape}")
    h, w = image_rgb.shape[:2]
    scale = min(1.0, ANALYSIS_WIDTH / w)
    small = image_rgb if scale == 1.0 else cv2.resize(
        image_rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    bright = cv2.medianBlur(channel_max(small), 3)
    lit = (bright >= dark_threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(lit, connectivity=8)
    if count <= 1:
        return np.ones((h, w), dtype=bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < MIN_FOV_FRACTION * lit.size:
        return np.ones((h, w), dtype=bool)
    points = cv2.findNonZero((labels == largest).astype(np.uint8))
    hull = cv2.convexHull(points)
    if scale != 1.0:
        # Map pixel-centre coordinates of the small image back to the full frame.
        hull = ((hull.astype(np.float64) + 0.5) / scale - 0.5)
        # Grow by half a small pixel so the rim pixels are not lost to the rounding.
        centre = hull.reshape(-1, 2).mean(axis=0)
        vec = hull.reshape(-1, 2) - centre
        norm = np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-6)
        hull = (centre + vec + vec / norm * (0.5 / scale)).reshape(-1, 1, 2)
    mask = np.zeros((h, w), dtype=np.uint8)
    cv2.fillConvexPoly(mask, np.round(hull).astype(np.int32), 1)
    return mask.astype(bool)


class FovMaskCache:
    """One FOV mask per video and frame size: the border does not move within a video.

    `get(video, image)` estimates on the first frame of a video and reuses it; a frame whose
    estimate was inconclusive (all True) is not cached, so the next frame tries again.
    Thread-safe; holds at most `max_entries` masks (least recently used dropped first).
    """

    def __init__(self, max_entries: int = 256, dark_threshold: int = DARK_THRESHOLD):
        self.max_entries = max_entries
        self.dark_threshold = dark_threshold
        self._masks: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.estimates = 0

    @staticmethod
    def key(video: str, image: np.ndarray) -> tuple[str, int, int]:
        return (str(video), image.shape[1], image.shape[0])

    def get(self, video: str, image_rgb: np.ndarray) -> np.ndarray:
        key = self.key(video, image_rgb)
        with self._lock:
            mask = self._masks.get(key)
            if mask is not None:
                self._masks.move_to_end(key)
                return mask
        mask = estimate_fov_mask(image_rgb, self.dark_threshold)
        with self._lock:
            self.estimates += 1
            if not mask.all():
                mask.flags.writeable = False     # shared between callers
                self._masks[key] = mask
                while len(self._masks) > self.max_entries:
                    self._masks.popitem(last=False)
        return mask

    def clear(self) -> None:
        with self._lock:
            self._masks.clear()

    def __len__(self) -> int:
        return len(self._masks)


class BorderWatch:
    """Says when a video's field of view may have changed, so the mask is estimated again on a
    scene change (another endoscope or video input, the scope pulled out, a blank frame) instead
    of on a timer.

    It looks at a sparse grid of the frame (about `GRID` x `GRID`*9/16 pixels read in place: no
    resize, ~0.03 ms at 1080p): the pixels outside the current mask and in a band just inside its
    rim. Those are dark outside and lit inside while the border stays where it is; the tower's
    text overlay is lit but does not move. `changed(image)` is True when more than
    `threshold` of them flipped between dark and lit since the mask was estimated (`reset`).
    Inside the band the dark lumen can reach the rim, so a moving scope flips a few band pixels:
    the threshold leaves room for that, and a re-estimate it triggers costs ~6 ms at 1080p
    (~1 ms at 640x480).
    """

    GRID = 64              # grid columns across the frame
    BAND = 2               # rim band inside the mask, in grid steps

    def __init__(self, threshold: float = 0.05, dark_threshold: int = DARK_THRESHOLD) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"BorderWatch: threshold must be in (0, 1), got {threshold!r}")
        self.threshold = threshold
        self.dark_threshold = dark_threshold
        self._reference: np.ndarray | None = None    # lit state of the watched grid pixels
        self._where: tuple[slice, slice] | None = None
        self._watched: np.ndarray | None = None       # bool grid: outside the mask or in the rim band
        self._shape: tuple[int, ...] | None = None

    def _grid(self, shape: tuple[int, ...]) -> tuple[slice, slice]:
        h, w = shape[:2]
        step = max(1, w // self.GRID)
        return slice(step // 2, h, step), slice(step // 2, w, step)

    def _lit(self, image_rgb: np.ndarray) -> np.ndarray:
        ys, xs = self._where
        return channel_max(image_rgb[ys, xs]) >= self.dark_threshold

    def reset(self, image_rgb: np.ndarray, mask: np.ndarray) -> None:
        """The mask was just estimated from `image_rgb`: watch for changes from this frame on."""
        self._shape = image_rgb.shape
        self._where = self._grid(image_rgb.shape)
        inside = mask[self._where].astype(np.uint8)
        kernel = np.ones((2 * self.BAND + 1, 2 * self.BAND + 1), np.uint8)
        core = cv2.erode(inside, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        self._watched = (inside == 0) | (core == 0)
        self._reference = self._lit(image_rgb)[self._watched]

    def changed(self, image_rgb: np.ndarray) -> bool:
        """True when the border region differs from the frame the mask was estimated on (or the
        frame size changed, or nothing was watched yet)."""
        if self._reference is None or image_rgb.shape != self._shape:
            return True
        if self._reference.size == 0:
            return False
        flipped = np.count_nonzero(self._lit(image_rgb)[self._watched] != self._reference)
        return flipped > self.threshold * self._reference.size
