"""How much to trust a box for sizing: cut by the field of view or the image edge, and blur.

Each factor is in 0..1 and they multiply:
- inside: fraction of the sizer's crop of the box (the box clipped to the frame, then grown by
  `box_grow` x its width/height on each side: pipeline.boxes.grow_boxes) that lies inside
  the image and (when a FOV mask is given) inside the endoscope's circular field of view. A polyp
  cut by the border is seen in part, so its size is under-read. The factor is inside**border_power.
- sharpness: variance of the Laplacian inside the box on a copy of the frame scaled to
  `analysis_width` pixels (so the figure does not depend on the capture resolution), mapped to
  v / (v + blur_half_variance): 0.5 at the reference variance, towards 1 when sharp.
- image quality = inside factor * sharpness; combined = image quality * detection confidence.

The size smoother takes confidence and image quality separately (`SizeSmoother.add`); the track
report shows the combined value. The border test uses a summed-area table of the FOV mask (kept
while the mask is the same object, i.e. until the pipeline re-estimates it), the blur measure a
Laplacian of each box alone: the cost per frame grows with the boxes' areas (plus one grey
conversion of the frame when its width is not a whole multiple of `analysis_width`).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.boxes import clip_boxes, grow_boxes
from pipeline.errors import ConfigError


@dataclass
class BoxQuality:
    """Per box (arrays of shape (K,))."""
    inside: np.ndarray          # fraction of the grown box inside image and FOV
    sharpness: np.ndarray       # 0..1 from the Laplacian variance
    image_quality: np.ndarray   # inside**border_power * sharpness
    combined: np.ndarray        # image_quality * detection confidence


def _box_sums(table: np.ndarray, boxes_int: np.ndarray) -> np.ndarray:
    """Sums over [x1, x2) x [y1, y2) from an (H+1, W+1) summed-area table."""
    x1, y1, x2, y2 = boxes_int.T
    return table[y2, x2] - table[y1, x2] - table[y2, x1] + table[y1, x1]


def fov_table(fov_mask: np.ndarray) -> np.ndarray:
    """The summed-area table `inside_fraction` reads: (H+1, W+1) counts of FOV pixels."""
    return cv2.integral(fov_mask.astype(np.uint8))


def inside_fraction(boxes: np.ndarray, image_size: tuple[int, int], fov_mask: np.ndarray | None = None,
                    grow: float = 0.0, *, table: np.ndarray | None = None) -> np.ndarray:
    """Fraction of each (grown) box's area inside the image (width, height) and the FOV mask.

    `table`: `fov_table(fov_mask)` when the caller keeps it for a mask used on many frames."""
    b = grow_boxes(boxes, grow)
    if len(b) == 0:
        return np.zeros(0)
    width, height = image_size
    area = np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1e-9)
    if fov_mask is None:
        iw = np.clip(np.minimum(b[:, 2], width) - np.maximum(b[:, 0], 0), 0, None)
        ih = np.clip(np.minimum(b[:, 3], height) - np.maximum(b[:, 1], 0), 0, None)
        return np.clip(iw * ih / area, 0.0, 1.0)
    if fov_mask.shape[:2] != (height, width):
        raise ValueError(f"inside_fraction: FOV mask is {fov_mask.shape[1]}x{fov_mask.shape[0]}, "
                         f"the image {width}x{height}")
    if table is None:
        table = fov_table(fov_mask)
    clipped = np.stack([np.clip(np.round(b[:, 0]), 0, width), np.clip(np.round(b[:, 1]), 0, height),
                        np.clip(np.round(b[:, 2]), 0, width), np.clip(np.round(b[:, 3]), 0, height)],
                       axis=1).astype(np.int64)
    return np.clip(_box_sums(table, clipped) / area, 0.0, 1.0)


class QualityAssessor:
    """`assess(image, boxes, scores, fov_mask) -> BoxQuality` (see the module doc for the model).

    box_grow: growth of the box before the border test (use the sizer bundle's box_grow).
    analysis_width: width the frame is scaled to for the blur measure.
    blur_half_variance: Laplacian variance (8-bit grey at analysis_width) that maps to 0.5.
    border_power: exponent on the inside fraction (2: a box 80% inside weighs 0.64).
    """

    def __init__(self, *, box_grow: float = 0.5, analysis_width: int = 640,
                 blur_half_variance: float = 30.0, border_power: float = 2.0):
        if not (isinstance(box_grow, (int, float)) and 0 <= box_grow <= 4):
            raise ConfigError(f"QualityAssessor: box_grow must be a number in [0, 4], got {box_grow!r}")
        if not (isinstance(analysis_width, int) and analysis_width >= 32):
            raise ConfigError(f"QualityAssessor: analysis_width must be an integer >= 32, got {analysis_width!r}")
        if not (isinstance(blur_half_variance, (int, float)) and blur_half_variance > 0):
            raise ConfigError(f"QualityAssessor: blur_half_variance must be a number > 0, got {blur_half_variance!r}")
        if not (isinstance(border_power, (int, float)) and border_power >= 0):
            raise ConfigError(f"QualityAssessor: border_power must be a number >= 0, got {border_power!r}")
        self.box_grow = float(box_grow)
        self.analysis_width = analysis_width
        self.blur_half_variance = float(blur_half_variance)
        self.border_power = float(border_power)
        self._fov_mask: np.ndarray | None = None     # the mask `_fov_table` was computed for
        self._fov_table: np.ndarray | None = None

    def sharpness(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """0..1 per box from the variance of the Laplacian inside the (ungrown) box."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(b) == 0:
            return np.zeros(0)
        height, width = image.shape[:2]
        scale = min(1.0, self.analysis_width / width)
        size = (max(1, round(width * scale)), max(1, round(height * scale))) if scale < 1.0 else (width, height)
        gw, gh = size
        # Where the frame is a whole number of times the analysis size (1920 or 1280 wide to 640,
        # or no scaling), each scaled pixel is the mean of its own block of full-size pixels:
        # only the boxes' blocks are converted and scaled, with the same values as scaling the
        # whole frame (1080p: ~0.1 ms instead of ~2 ms). Other sizes scale the whole frame.
        factor = width // gw
        blockwise = factor * gw == width and factor * gh == height
        gray = None if blockwise else self._gray(image, size)
        s = b * scale
        xy = np.stack([np.clip(np.floor(s[:, 0]), 0, gw), np.clip(np.floor(s[:, 1]), 0, gh),
                       np.clip(np.ceil(s[:, 2]), 0, gw), np.clip(np.ceil(s[:, 3]), 0, gh)], axis=1).astype(np.int64)
        result = np.zeros(len(b))
        for i, (x1, y1, x2, y2) in enumerate(xy.tolist()):
            if (x2 - x1) * (y2 - y1) < 4:
                continue
            # The 3x3 Laplacian of the box plus a one-pixel margin: inside the box the values are
            # those of the whole frame's Laplacian (at the frame's edge the crop's border rule is
            # the frame's), at a cost that grows with the box, not the frame.
            mx1, my1, mx2, my2 = max(x1 - 1, 0), max(y1 - 1, 0), min(x2 + 1, gw), min(y2 + 1, gh)
            if blockwise:
                window = self._gray(image[my1 * factor:my2 * factor, mx1 * factor:mx2 * factor], (mx2 - mx1, my2 - my1))
            else:
                window = gray[my1:my2, mx1:mx2]
            lap = cv2.Laplacian(window, cv2.CV_32F, ksize=1)
            inner = lap[y1 - my1:y2 - my1, x1 - mx1:x2 - mx1].astype(np.float64)
            variance = max(float(np.mean(inner * inner)) - float(np.mean(inner)) ** 2, 0.0)
            result[i] = variance / (variance + self.blur_half_variance)
        return result

    @staticmethod
    def _gray(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Grey (from RGB) at `size` (width, height): INTER_AREA, the image itself when it is that size."""
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        if (gray.shape[1], gray.shape[0]) != size:
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        return gray

    def assess(self, image: np.ndarray, boxes, scores=None, fov_mask: np.ndarray | None = None) -> BoxQuality:
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        height, width = image.shape[:2]
        table = None
        if fov_mask is not None:
            if fov_mask is not self._fov_mask:      # the pipeline hands the same mask until it re-estimates it
                self._fov_mask, self._fov_table = fov_mask, fov_table(fov_mask)
            table = self._fov_table
        # The sizer crops the box clipped to the frame, then grown: judge that same region.
        inside = inside_fraction(clip_boxes(b, width, height), (width, height), fov_mask, self.box_grow, table=table)
        sharp = self.sharpness(image, b)
        image_quality = np.power(inside, self.border_power) * sharp
        conf = np.ones(len(b)) if scores is None else np.clip(np.asarray(scores, dtype=np.float64), 0, 1)
        return BoxQuality(inside=inside, sharpness=sharp, image_quality=image_quality,
                          combined=image_quality * conf)
