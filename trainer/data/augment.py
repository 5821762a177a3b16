"""Paired augmentation: geometry moves image, boxes and FOV mask together; colour touches the image.

Geometry is one affine map built in continuous pixel coordinates (pixel i covers [i, i+1)):
flips, a rotation about the image centre, a scale about the centre and a shift. Boxes are
mapped through it as their four corners, the new box is the corners' bounding box clipped
to the image (exact for flips, scale and shift; slightly loose under rotation, as usual).
Uncovered pixels become black, like the border outside the endoscope's view.

After the geometry come the appearances of real endoscopy video, in the order a video tower
makes them (each off by default, so configs written before them are unchanged, draw for draw):
specular highlights (the light source mirrored in wet mucosa: small saturated white blobs),
white balance and colour, defocus or motion blur, the black inset boxes (ScopeGuide,
picture-in-picture) and burnt-in text strips a tower draws on screen, and last JPEG
compression. Insets are placed only where they cover no box, so boxes stay true; text strips
are thin and may cross a polyp, as on real screens.
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
    white_balance: max relative change of the red and blue gains against green (light sources
    and processors differ); motion_blur_p / motion_blur_px: probability and (min, max) length
    of a straight motion blur; specular_p / specular_count: probability and (min, max) number
    of specular highlights, each a soft saturated blob of 0.5-3% of the short side;
    inset_p: probability of a black inset box (15-30% of the frame, in a corner, away from
    boxes, with a thin light frame some of the time); text_p: probability of 1-3 burnt-in text
    strips along the top or bottom; jpeg_p / jpeg_quality: probability and (min, max) quality
    of a JPEG round trip.
    work_size: when not 0, an image whose longer side exceeds it is first shrunk to it (boxes
    and mask with it; the result is smaller than the input) so the effects cost pixels of
    roughly the network's input size, not of a 1920x1080 still. For callers that read boxes
    in the returned image's pixels (the detector); the sizer's depth path warps at full size.
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
    white_balance: float = 0.0
    motion_blur_p: float = 0.0
    motion_blur_px: tuple[float, float] = (3.0, 9.0)
    specular_p: float = 0.0
    specular_count: tuple[int, int] = (1, 8)
    inset_p: float = 0.0
    text_p: float = 0.0
    jpeg_p: float = 0.0
    jpeg_quality: tuple[int, int] = (40, 90)
    work_size: int = 0

    def __call__(self, image: np.ndarray, boxes, rng: np.random.Generator,
                 mask: np.ndarray | None = None):
        """(image, boxes (K,4), mask or None) after one random draw; inputs are not modified."""
        if self.work_size and max(image.shape[:2]) > self.work_size:
            image, boxes, mask = shrink(image, boxes, mask, self.work_size)
        h, w = image.shape[:2]
        matrix = self.geometry((w, h), rng)
        image = warp_image(image, matrix)
        boxes = warp_boxes(boxes, matrix, (w, h))
        if mask is not None:
            mask = warp_image(mask.astype(np.uint8), matrix, cv2.INTER_NEAREST).astype(bool)
        if self.specular_p and rng.random() < self.specular_p:
            image = add_specular_highlights(image, rng, int(rng.integers(self.specular_count[0],
                                                                          self.specular_count[1] + 1)))
        image = self.photometric(image, rng)
        if self.inset_p and rng.random() < self.inset_p:
            image = add_inset_box(image, boxes, rng)
        if self.text_p and rng.random() < self.text_p:
            image = add_text_strips(image, rng)
        if self.jpeg_p and rng.random() < self.jpeg_p:
            image = jpeg_round_trip(image, int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1)))
        return image, boxes, mask

    def geometry(self, image_size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """The 2x3 map of one draw: `__call__` draws it first, so a copy of the generator taken
        before the call gives the same map (the sizer warps a depth map with it)."""
        w, h = image_size
        return geometry_matrix(
            (w, h),
            hflip=bool(rng.random() < self.hflip_p),
            vflip=bool(rng.random() < self.vflip_p),
            angle_deg=float(rng.uniform(-self.rotate_deg, self.rotate_deg)),
            scale=float(rng.uniform(*self.scale)),
            shift=(float(rng.uniform(-self.shift, self.shift) * w),
                   float(rng.uniform(-self.shift, self.shift) * h)))

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
        if self.white_balance:
            # gains on red and blue against green; a multiplication keeps black black
            gains = 1.0 + rng.uniform(-self.white_balance, self.white_balance, size=2)
            out = out.astype(np.float32)
            out[..., 0] *= gains[0]
            out[..., 2] *= gains[1]
            out = np.clip(out, 0, 255).astype(np.uint8)
        if rng.random() < self.blur_p:
            sigma = float(rng.uniform(*self.blur_sigma))
            out = cv2.GaussianBlur(out, (0, 0), sigma)
        if self.motion_blur_p and rng.random() < self.motion_blur_p:
            out = motion_blur(out, float(rng.uniform(*self.motion_blur_px)), float(rng.uniform(0.0, 180.0)))
        return out


def shrink(image: np.ndarray, boxes, mask: np.ndarray | None, longest: int):
    """Image (area-averaged), boxes and mask scaled so the longer side is `longest` pixels."""
    h, w = image.shape[:2]
    scale = longest / max(h, w)
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    sx, sy = size[0] / w, size[1] / h
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * [sx, sy, sx, sy]
    if mask is not None:
        mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    return image, boxes, mask


def motion_blur(image: np.ndarray, length: float, angle_deg: float) -> np.ndarray:
    """Average along a straight line of `length` pixels at `angle_deg` (camera or scope motion)."""
    size = max(3, int(math.ceil(length)) | 1)
    kernel = np.zeros((size, size), np.float32)
    c = size // 2
    dx, dy = math.cos(math.radians(angle_deg)), -math.sin(math.radians(angle_deg))
    for t in np.linspace(-length / 2, length / 2, size * 2):
        kernel[int(round(c + t * dy)), int(round(c + t * dx))] = 1.0
    return cv2.filter2D(image, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


def add_specular_highlights(image: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` specular reflections on lit pixels: soft-edged, near-white, elongated blobs."""
    out = image.copy()
    h, w = out.shape[:2]
    lit = np.argwhere(out.max(axis=2) > 40)          # not on the black border outside the view
    if len(lit) == 0 or count <= 0:
        return out
    layer = np.zeros((h, w), np.float32)
    short = min(h, w)
    for y, x in lit[rng.integers(0, len(lit), size=count)]:
        axes = (max(1, int(short * rng.uniform(0.005, 0.03))), max(1, int(short * rng.uniform(0.003, 0.015))))
        cv2.ellipse(layer, (int(x), int(y)), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    layer = cv2.GaussianBlur(layer, (0, 0), max(0.6, short * 0.003))[..., None]
    tint = np.array([255.0, 255.0, rng.uniform(235.0, 255.0)], np.float32)
    return (out.astype(np.float32) * (1.0 - layer) + tint * layer).clip(0, 255).astype(np.uint8)


def _overlaps(rect: tuple[int, int, int, int], boxes: np.ndarray) -> bool:
    x1, y1, x2, y2 = rect
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return bool(np.any((b[:, 0] < x2) & (b[:, 2] > x1) & (b[:, 1] < y2) & (b[:, 3] > y1)))


def add_inset_box(image: np.ndarray, boxes, rng: np.random.Generator, tries: int = 4) -> np.ndarray:
    """A black inset rectangle in a corner (a ScopeGuide or picture-in-picture window), only
    where it hides no box; sometimes framed, sometimes with a dim shape inside. Unchanged when
    no corner is free."""
    h, w = image.shape[:2]
    for _ in range(tries):
        iw, ih = int(w * rng.uniform(0.15, 0.3)), int(h * rng.uniform(0.15, 0.3))
        x1 = 0 if rng.random() < 0.5 else w - iw
        y1 = 0 if rng.random() < 0.5 else h - ih
        x1 += int(rng.integers(0, max(1, w // 20))) * (1 if x1 == 0 else -1)
        y1 += int(rng.integers(0, max(1, h // 20))) * (1 if y1 == 0 else -1)
        rect = (x1, y1, x1 + iw, y1 + ih)
        if _overlaps(rect, boxes):
            continue
        out = image.copy()
        fill = (0, int(rng.integers(0, 60)), 0) if rng.random() < 0.3 else (0, 0, 0)   # black or dark green
        cv2.rectangle(out, rect[:2], (rect[2] - 1, rect[3] - 1), fill, -1)
        if rng.random() < 0.5:
            grey = int(rng.integers(120, 255))
            cv2.rectangle(out, rect[:2], (rect[2] - 1, rect[3] - 1), (grey, grey, grey), 1)
        if rng.random() < 0.5:      # the scope-shape drawing of a ScopeGuide window
            pts = np.stack([rng.uniform(rect[0] + 2, rect[2] - 2, 5), rng.uniform(rect[1] + 2, rect[3] - 2, 5)], 1)
            g = int(rng.integers(60, 200))
            cv2.polylines(out, [pts.astype(np.int32)], False, (g, g, g), max(1, iw // 40))
        return out
    return image


_TEXT_CHARS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:/.- "))


def add_text_strips(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1-3 lines of burnt-in text (patient data, date, processor settings) near the top or
    bottom edge, in the white, green or yellow of tower overlays, on a black strip half the time."""
    out = image.copy()
    h, w = out.shape[:2]
    scale = max(0.25, h / 900.0) * rng.uniform(0.8, 1.4)
    thickness = max(1, int(round(scale * 1.5)))
    colour = [(255, 255, 255), (90, 255, 90), (255, 255, 80)][int(rng.integers(0, 3))]
    top = rng.random() < 0.5
    line_h = int(30 * scale) + 2
    for line in range(int(rng.integers(1, 4))):
        text = "".join(rng.choice(_TEXT_CHARS, size=int(rng.integers(6, 20))))
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        x = int(rng.uniform(0, max(1, w - tw)))
        y = (line + 1) * line_h if top else h - 4 - line * line_h
        if rng.random() < 0.5:
            cv2.rectangle(out, (x - 2, y - th - 3), (x + tw + 2, y + 3), (0, 0, 0), -1)
        cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)
    return out


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode as JPEG (blocking and ringing of recorded or streamed video)."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        return image
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED).reshape(image.shape)


def augment_from_config(settings) -> PairedAugment | None:
    """The training augmentation a config's `data.augment` section asks for; None when disabled."""
    if not settings.enabled:
        return None
    return PairedAugment(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(PairedAugment)})
