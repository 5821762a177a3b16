"""Paired augmentation: geometry moves image, boxes and FOV mask together; colour touches the image.

Geometry is one affine map built in continuous pixel coordinates (pixel i covers [i, i+1)):
flips, a rotation about the image centre, a scale about the centre and a shift. Boxes are
mapped through it as their four corners, the new box is the corners' bounding box clipped
to the image (exact for flips, scale and shift; slightly loose under rotation, as usual).
Uncovered pixels become black, like the border outside the endoscope's view.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """2x3 affine a after b."""
    a3 = np.vstack([a, [0, 0, 1]])
    b3 = np.vstack([b, [0, 0, 1]])
    return (a3 @ b3)[:2]


def warp_image(image: np.ndarray, matrix: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Apply a continuous-coordinate affine map to an image (cv2 indexes pixel centres)."""
    h, w = image.shape[:2]
    to_centres = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5]])
    from_centres = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
    m = _compose(to_centres, _compose(matrix, from_centres))
    return cv2.warpAffine(image, m, (w, h), flags=interpolation,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def warp_boxes(boxes: np.ndarray, matrix: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """(K,4) boxes through the map: bounding box of the mapped corners, clipped to (w, h)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    corners = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [0, 3]], b[:, [2, 3]]], axis=1)   # K,4,2
    mapped = corners @ matrix[:, :2].T + matrix[:, 2]
    w, h = image_size
    out = np.concatenate([mapped.min(axis=1), mapped.max(axis=1)], axis=1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


def geometry_matrix(image_size: tuple[int, int], *, hflip: bool = False, vflip: bool = False,
                    angle_deg: float = 0.0, scale: float = 1.0,
                    shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """2x3 map in continuous coordinates: flips, then rotation and scale about the centre,
    then a shift in pixels. Positive angles turn the content counter-clockwise on screen."""
    w, h = image_size
    cx, cy = w / 2.0, h / 2.0
    m = IDENTITY.copy()
    if hflip:
        m = _compose(np.array([[-1.0, 0.0, w], [0.0, 1.0, 0.0]]), m)
    if vflip:
        m = _compose(np.array([[1.0, 0.0, 0.0], [0.0, -1.0, h]]), m)
    if angle_deg or scale != 1.0:
        a = math.radians(angle_deg)
        c, s = math.cos(a) * scale, math.sin(a) * scale
        # y points down on screen, so [[c, s], [-s, c]] turns counter-clockwise as seen.
        rot = np.array([[c, s, cx - c * cx - s * cy], [-s, c, cy + s * cx - c * cy]])
        m = _compose(rot, m)
    if shift != (0.0, 0.0):
        m = _compose(np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]]), m)
    return m


@dataclass(frozen=True)
class PairedAugment:
    """Random training augmentation; every range is symmetric about "no change".

    hflip_p, vflip_p: flip probabilities (an endoscope has no preferred up or left).
    rotate_deg: max rotation; scale: (min, max) zoom; shift: max shift as a fraction of size.
    Zoom changes the polyp's apparent size in pixels, so keep it small: apparent size is one
    of the cues the sizer reads (together with texture scale and light falloff).
    brightness, contrast: max relative change; gamma: (min, max); hue_deg: max hue rotation;
    saturation: max relative change; blur_p / blur_sigma: probability and (min, max) sigma.
    """
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.95, 1.05)
    shift: float = 0.05
    brightness: float = 0.2
    contrast: float = 0.2
    gamma: tuple[float, float] = (0.8, 1.25)
    hue_deg: float = 5.0
    saturation: float = 0.15
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.5)

    def __call__(self, image: np.ndarray, boxes, rng: np.random.Generator,
                 mask: np.ndarray | None = None):
        """(image, boxes (K,4), mask or None) after one random draw; inputs are not modified."""
        h, w = image.shape[:2]
        matrix = geometry_matrix(
            (w, h),
            hflip=bool(rng.random() < self.hflip_p),
            vflip=bool(rng.random() < self.vflip_p),
            angle_deg=float(rng.uniform(-self.rotate_deg, self.rotate_deg)),
            scale=float(rng.uniform(*self.scale)),
            shift=(float(rng.uniform(-self.shift, self.shift) * w),
                   float(rng.uniform(-self.shift, self.shift) * h)))
        image = warp_image(image, matrix)
        boxes = warp_boxes(boxes, matrix, (w, h))
        if mask is not None:
            mask = warp_image(mask.astype(np.uint8), matrix, cv2.INTER_NEAREST).astype(bool)
        image = self.photometric(image, rng)
        return image, boxes, mask

    def photometric(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Colour and blur only; black stays black so the FOV border is not lit up."""
        gain = 1.0 + rng.uniform(-self.brightness, self.brightness)
        contrast = 1.0 + rng.uniform(-self.contrast, self.contrast)
        gamma = math.exp(rng.uniform(math.log(self.gamma[0]), math.log(self.gamma[1])))
        x = np.arange(256, dtype=np.float64) / 255.0
        mid = 0.5
        y = np.clip((x ** gamma) * gain, 0.0, None)
        y = np.clip((y - mid) * contrast + mid, 0.0, 1.0)
        y[0] = 0.0
        lut = np.round(y * 255.0).astype(np.uint8)
        out = cv2.LUT(image, lut)
        if self.hue_deg or self.saturation:
            hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
            # OpenCV's 8-bit hue runs 0..179 (2 degrees a step)
            hue_shift = int(round(rng.uniform(-self.hue_deg, self.hue_deg) / 2.0))
            if hue_shift:
                hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + hue_shift) % 180).astype(np.uint8)
            sat = 1.0 + rng.uniform(-self.saturation, self.saturation)
            hsv[..., 1] = np.clip(hsv[..., 1].astype(np.float32) * sat, 0, 255).astype(np.uint8)
            out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if rng.random() < self.blur_p:
            sigma = float(rng.uniform(*self.blur_sigma))
            out = cv2.GaussianBlur(out, (0, 0), sigma)
        return out


def augment_from_config(settings) -> PairedAugment | None:
    """The training augmentation a config's `data.augment` section asks for; None when disabled."""
    if not settings.enabled:
        return None
    return PairedAugment(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(PairedAugment)})
