"""Detector training data: CenterNet targets and a dataset of letterboxed, FOV-masked frames.

Targets for one frame (output grid H = W = input_size / stride, boxes in network-input pixels):
- `heatmap` (1,H,W): for each box a Gaussian peak of 1.0 at the cell holding its centre,
  radius from the box size (CenterNet's `gaussian_radius`, min IoU 0.7); boxes combine by max;
- `wh` (2,H,W): width and height in cells;
- `offset` (2,H,W): box centre minus the cell's integer position (x, y), in cells;
- `reg_weight` (1,H,W): where `wh` and `offset` are supervised, and how much: 1 at each centre
  cell and the box's Gaussian value on the cells around it (each cell belongs to the box whose
  Gaussian is highest there). Supervising the cells around the centre too (as TTFNet does)
  means a peak one cell off still decodes to the right box: its offset points at the true
  centre. Decoding is unchanged, centre = (cell + offset) * stride.
- `heatmap_weight` (1,H,W): 0 inside difficult boxes (VOC's flag, trainer.synth.difficulty),
  1 elsewhere. A difficult box is an ignore region: no peak, no size/offset supervision, and
  the heatmap loss is masked there, so the model is neither rewarded nor punished for firing
  on a polyp nobody should be held to finding. Cells inside a normal box's Gaussian stay
  supervised even where a difficult box overlaps them.
Everything is computed for all boxes at once by broadcasting over (boxes, H, W).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.errors import ConfigError, DataError
from pipeline.prep import DetectorInputSpec, prepare_detector_input
from .augment import PairedAugment
from pipeline.fov import FovMaskCache, estimate_fov_mask
from .images import read_image_rgb
from .records import FrameRecord

log = logging.getLogger("hagview.data")

# The largest number of boxes per frame carried through a batch (padding keeps batches
# collatable); real colonoscopy frames show one polyp, rarely three.
MAX_BOXES = 8
# How many other frames to try before giving up when images cannot be read.
MAX_REPLACEMENT_TRIES = 20


def gaussian_radius(height: np.ndarray, width: np.ndarray, min_overlap: float = 0.7) -> np.ndarray:
    """Largest centre displacement (in cells) keeping IoU >= min_overlap with the true box.

    CenterNet's formula (three cases: both corners inside, both outside, one each), taken as
    the minimum; vectorised over boxes.
    """
    h = np.asarray(height, dtype=np.float64)
    w = np.asarray(width, dtype=np.float64)
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + np.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + np.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + np.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return np.minimum(np.minimum(r1, r2), r3)


def ignore_mask(boxes: np.ndarray, input_size: int, stride: int) -> np.ndarray:
    """(H,W) bool: output cells whose centre lies inside any of `boxes` (K,4, input pixels);
    a box smaller than a cell still covers the cell holding its centre."""
    grid = input_size // stride
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / stride
    if len(boxes) == 0:
        return np.zeros((grid, grid), dtype=bool)
    centres = np.arange(grid) + 0.5
    x1, y1 = np.floor(boxes[:, 0]), np.floor(boxes[:, 1])          # widen to whole cells
    x2, y2 = np.ceil(boxes[:, 2]), np.ceil(boxes[:, 3])
    inside_x = (centres[None, :] >= x1[:, None]) & (centres[None, :] <= x2[:, None])   # (K,W)
    inside_y = (centres[None, :] >= y1[:, None]) & (centres[None, :] <= y2[:, None])   # (K,H)
    return np.any(inside_y[:, :, None] & inside_x[:, None, :], axis=0)


def centernet_targets(boxes: np.ndarray, input_size: int, stride: int, min_overlap: float = 0.7,
                      difficult: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Heatmap, size, offset, regression-weight and heatmap-weight targets (float32) for boxes
    (K,4) xyxy in input pixels. Boxes must lie inside the input (clip them first); K may be 0
    (a negative frame). `difficult` (K,) bool marks ignore regions (module docstring).
    """
    grid = input_size // stride
    heatmap = np.zeros((1, grid, grid), dtype=np.float32)
    wh = np.zeros((2, grid, grid), dtype=np.float32)
    offset = np.zeros((2, grid, grid), dtype=np.float32)
    weight = np.zeros((1, grid, grid), dtype=np.float32)
    heatmap_weight = np.ones((1, grid, grid), dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    difficult = (np.zeros(len(boxes), dtype=bool) if difficult is None
                 else np.asarray(difficult, dtype=bool).reshape(-1))
    if len(difficult) != len(boxes):
        raise ValueError(f"{len(difficult)} difficult flags for {len(boxes)} boxes")
    ignored = ignore_mask(boxes[difficult], input_size, stride)
    boxes = boxes[~difficult]
    if len(boxes) == 0:
        heatmap_weight[0][ignored] = 0.0
        return {"heatmap": heatmap, "wh": wh, "offset": offset, "reg_weight": weight,
                "heatmap_weight": heatmap_weight}
    # Smaller boxes first: where two centres share a cell (equal Gaussian value 1) argmax keeps
    # the first, the smaller box, which a max-pool peak is least likely to recover otherwise.
    boxes = boxes[np.argsort((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")]
    width = (boxes[:, 2] - boxes[:, 0]) / stride
    height = (boxes[:, 3] - boxes[:, 1]) / stride
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2 / stride
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2 / stride
    cell_x = np.clip(np.floor(centre_x), 0, grid - 1).astype(np.int64)
    cell_y = np.clip(np.floor(centre_y), 0, grid - 1).astype(np.int64)
    radius = np.maximum(0, np.floor(gaussian_radius(height, width, min_overlap))).astype(np.int64)
    sigma = (2 * radius + 1) / 6.0

    ys = np.arange(grid)[None, :, None]
    xs = np.arange(grid)[None, None, :]
    dy = ys - cell_y[:, None, None]
    dx = xs - cell_x[:, None, None]
    r = radius[:, None, None]
    s = sigma[:, None, None]
    gauss = np.exp(-(dx ** 2 + dy ** 2) / (2 * s * s))
    gauss = np.where((np.abs(dx) <= r) & (np.abs(dy) <= r), gauss, 0.0)     # (K,H,W)
    owner = gauss.argmax(axis=0)                                              # (H,W)
    heatmap[0] = gauss.max(axis=0)
    weight[0] = heatmap[0]
    covered = weight[0] > 0
    wh[0] = np.where(covered, width[owner], 0.0)
    wh[1] = np.where(covered, height[owner], 0.0)
    offset[0] = np.where(covered, centre_x[owner] - xs[0], 0.0)
    offset[1] = np.where(covered, centre_y[owner] - ys[0], 0.0)
    heatmap_weight[0][ignored & ~covered] = 0.0
    return {"heatmap": heatmap, "wh": wh, "offset": offset, "reg_weight": weight,
            "heatmap_weight": heatmap_weight}


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------

def _draw(items: list, count: int, rng: np.random.Generator | None) -> list:
    """`count` of `items` (all when fewer): random without replacement, or evenly spaced (rng None)."""
    n = len(items)
    if count >= n:
        return list(items)
    if count <= 0:
        return []
    if rng is None:
        picks = np.floor((np.arange(count) + 0.5) * n / count).astype(int)
    else:
        picks = np.sort(rng.choice(n, size=count, replace=False))
    return [items[i] for i in picks]


def source_key(frame: FrameRecord) -> str:
    """The data set a frame counts towards for sampling weights: its source up to the first '/'
    (`polypgen/C3` -> `polypgen`)."""
    return frame.source.split("/", 1)[0]


def _weighted_draw(drawn: list, pool: list, total: int, weights: dict[str, float],
                   rng: np.random.Generator | None) -> list:
    """`total` frames shared among data sets in proportion to `weights` (missing: 1; data sets
    without frames here drop out and the rest share their part). A data set's share comes from
    its `drawn` frames, then the rest of its `pool`, then repeats: a small real set weighted up
    is shown more than once per epoch rather than leaving its share to the others."""
    by_set: dict[str, tuple[list, list]] = {}
    for frame in drawn:
        by_set.setdefault(source_key(frame), ([], []))[0].append(frame)
    for frame in pool:
        if source_key(frame) in by_set:
            by_set[source_key(frame)][1].append(frame)
    active = {k: v for k, v in by_set.items() if weights.get(k, 1.0) > 0}
    # data sets weighted 0 are left out, and with them their part of the epoch
    total = int(round(total * sum(len(v[0]) for v in active.values()) / max(len(drawn), 1)))
    weight_sum = sum(weights.get(k, 1.0) for k in active)
    out: list = []
    for key in sorted(active):
        first, everything = active[key]
        count = int(round(total * weights.get(key, 1.0) / weight_sum))
        if count <= len(first):
            out += _draw(first, count, rng)
            continue
        chosen = set(map(id, first))
        rest = [f for f in everything if id(f) not in chosen]
        picked = first + _draw(rest, count - len(first), rng)
        repeats, extra = divmod(count, len(picked))
        out += picked * repeats + _draw(picked, extra, rng)
    return out


class DetectionDataset(Dataset):
    """Detector items from frame records: positives sampled per polyp, plus negative frames.

    Each epoch (`set_epoch`) draws up to `positives_per_polyp` frames showing each polyp
    (a frame with two polyps can be drawn for either; None: every positive frame) and then negative frames (no polyp) so that they make up
    `negative_fraction` of the epoch, as far as the data has them. sampling "random" redraws
    every epoch from (seed, epoch); "uniform" takes evenly spaced frames in time order, the
    same every epoch (validation).

    Item: inputs {"rgb": float32 (3,S,S)} from `pipeline.prep.prepare_detector_input` (FOV-masked,
    letterboxed, normalised); targets {"heatmap","wh","offset","reg_weight","heatmap_weight"}
    (see `centernet_targets`), "boxes" float32 (MAX_BOXES,4) in input pixels, "difficult" bool (MAX_BOXES,), "num_boxes", "polyp_index" (MAX_BOXES,)
    into `self.polyp_ids` (-1: padding), "video_index" into `self.videos`, "frame_index".
    `source_weights` ({data set: weight}, data set = `source_key`): each epoch's positive frames,
    and its negative frames, are shared among the data sets in proportion to their weights
    (`_weighted_draw`; a weight of 0 leaves a data set out); None: as the frames come.
    Augmentation (training) moves image, boxes and FOV mask together; a box squeezed under
    2 px by it is dropped. An unreadable image is logged and replaced by another frame.
    """

    def __init__(self, frames: Sequence[FrameRecord], spec: DetectorInputSpec, stride: int,
                 augment: PairedAugment | None = None, fov_cache: FovMaskCache | None = None, *,
                 positives_per_polyp: int | None = None, negative_fraction: float = 0.25,
                 sampling: str = "random", sampling_seed: int = 0,
                 source_weights: dict[str, float] | None = None) -> None:
        if not 0.0 <= negative_fraction < 1.0:
            raise ConfigError(f"negative_fraction must be in [0, 1), got {negative_fraction}")
        if sampling not in ("random", "uniform"):
            raise ConfigError(f"sampling must be random or uniform, got {sampling!r}")
        if spec.size % stride:
            raise ConfigError(f"detector input size {spec.size} is not a multiple of the output stride {stride}")
        self.spec = spec
        self.stride = int(stride)
        self.augment = augment
        self.fov_cache = fov_cache
        self.positives_per_polyp = positives_per_polyp
        self.negative_fraction = float(negative_fraction)
        self.sampling = sampling
        self.sampling_seed = int(sampling_seed)
        if source_weights is not None and (any(not w >= 0 for w in source_weights.values())
                                           or not any(w > 0 for w in source_weights.values())):
            raise ConfigError(f"source weights must be >= 0 with one above 0, got {source_weights}")
        self.source_weights = dict(source_weights) if source_weights else None
        ordered = sorted(frames, key=lambda f: (f.video, f.frame_index, f.image_path))
        # A frame whose only boxes are difficult (ignore regions) is drawn as a negative: it
        # teaches background everywhere but inside those boxes.
        self.positives = [f for f in ordered if any(not b.difficult for b in f.boxes)]
        self.negatives = [f for f in ordered if all(b.difficult for b in f.boxes)]
        if not self.positives and not self.negatives:
            raise DataError("detector dataset: no frames")
        self.videos = sorted({f.video for f in ordered})
        self.polyp_ids = sorted({b.polyp_id for f in ordered for b in f.boxes})
        self._video_index = {v: i for i, v in enumerate(self.videos)}
        self._polyp_index = {p: i for i, p in enumerate(self.polyp_ids)}
        self.unreadable: set[str] = set()
        self.epoch = 0
        self.frames = self._draw_epoch(0)

    def _draw_epoch(self, epoch: int) -> list[FrameRecord]:
        rng = None if self.sampling == "uniform" else np.random.default_rng([self.sampling_seed, epoch])
        if self.positives_per_polyp is None:
            positives = list(self.positives)
        else:
            # each polyp draws from every frame showing it; a frame drawn twice counts once (keyed
            # by its file: two frames sharing a (video, index) must not collapse into one)
            by_polyp: dict[str, list[FrameRecord]] = {}
            for frame in self.positives:
                for polyp in dict.fromkeys(b.polyp_id for b in frame.boxes if not b.difficult):
                    by_polyp.setdefault(polyp, []).append(frame)
            drawn = {f.image_path: f for polyp in sorted(by_polyp)
                     for f in _draw(by_polyp[polyp], self.positives_per_polyp, rng)}
            positives = list(drawn.values())
        if self.source_weights:
            positives = _weighted_draw(positives, self.positives, len(positives), self.source_weights, rng)
        wanted = int(round(len(positives) * self.negative_fraction / (1.0 - self.negative_fraction)))
        if not positives:
            wanted = len(self.negatives)
        if self.source_weights:
            negatives = _weighted_draw(self.negatives, self.negatives, wanted, self.source_weights, rng)
        else:
            negatives = _draw(self.negatives, wanted, rng)
        return sorted(positives + negatives, key=lambda f: (f.video, f.frame_index, f.image_path))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.frames = self._draw_epoch(epoch)

    def __len__(self) -> int:
        return len(self.frames)

    def _load(self, index: int) -> tuple[FrameRecord, np.ndarray]:
        for attempt in range(MAX_REPLACEMENT_TRIES):
            frame = self.frames[(index + attempt) % len(self.frames)]
            if frame.image_path in self.unreadable:
                continue
            image = read_image_rgb(frame.image_path)
            if image is not None:
                return frame, image
            self.unreadable.add(frame.image_path)
            log.warning("skipped %s: unreadable image; using another frame", frame.image_path)
        raise DataError(f"{self.frames[index].image_path}: this and the next "
                        f"{MAX_REPLACEMENT_TRIES - 1} frame images cannot be read")

    def __getitem__(self, index: int):
        frame, image = self._load(index)
        fov = None
        if self.spec.fov_masking:
            fov = self.fov_cache.get(frame.video, image) if self.fov_cache is not None \
                else estimate_fov_mask(image)
        boxes = np.array([b.box for b in frame.boxes], dtype=np.float64).reshape(-1, 4)
        polyps = np.array([self._polyp_index[b.polyp_id] for b in frame.boxes], dtype=np.int64)
        difficult = np.array([b.difficult for b in frame.boxes], dtype=bool)
        if self.augment is not None:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
            image, boxes, fov = self.augment(image, boxes, rng, mask=fov)
            kept = ((boxes[:, 2] - boxes[:, 0]) >= 2) & ((boxes[:, 3] - boxes[:, 1]) >= 2)
            boxes, polyps, difficult = boxes[kept], polyps[kept], difficult[kept]
        batch, info = prepare_detector_input(image, self.spec, fov_mask=fov)
        size = self.spec.size
        input_boxes = np.clip(info.to_input(boxes), 0.0, float(size))
        if len(input_boxes) > MAX_BOXES:
            log.warning("%s: %d boxes, only the first %d are used", frame.image_path, len(input_boxes), MAX_BOXES)
            input_boxes, polyps, difficult = input_boxes[:MAX_BOXES], polyps[:MAX_BOXES], difficult[:MAX_BOXES]
        targets = {k: torch.from_numpy(v) for k, v in
                   centernet_targets(input_boxes, size, self.stride, difficult=difficult).items()}
        padded_boxes = np.zeros((MAX_BOXES, 4), dtype=np.float32)
        padded_boxes[:len(input_boxes)] = input_boxes
        padded_polyps = np.full(MAX_BOXES, -1, dtype=np.int64)
        padded_polyps[:len(polyps)] = polyps
        padded_difficult = np.zeros(MAX_BOXES, dtype=bool)
        padded_difficult[:len(difficult)] = difficult
        targets.update({
            "boxes": torch.from_numpy(padded_boxes),
            "difficult": torch.from_numpy(padded_difficult),
            "num_boxes": torch.tensor(len(input_boxes), dtype=torch.int64),
            "polyp_index": torch.from_numpy(padded_polyps),
            "video_index": torch.tensor(self._video_index[frame.video], dtype=torch.int64),
            "frame_index": torch.tensor(frame.frame_index, dtype=torch.int64),
        })
        return {"rgb": torch.from_numpy(batch[0])}, targets
