"""Detector outputs to boxes on the frame: centre-heatmap decoding, external ONNX layouts, NMS.

Everything here is vectorised over pixels and candidates. The project's own detector
(`hag_detector`, CenterNet-style) needs no NMS: a 3x3 max-pool keeps only local maxima of the
centre heatmap, and each object owns one peak. External (YOLO-style) detectors emit many
overlapping candidates per object, so their decoding runs a matrix NMS (see `fast_nms`).

Coordinates: the network sees the frame letterboxed into a square (`pipeline.prep`); decoded
boxes are first in network-input pixels and then mapped back through the letterbox to frame
pixels, clipped to the frame.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.boxes import box_iou
from pipeline.errors import BundleError

from .types import Detection


# ---------------------------------------------------------------------------------------------
# Centre-heatmap (CenterNet) decoding
# ---------------------------------------------------------------------------------------------

def max_pool_same(values: np.ndarray, kernel: int = 3) -> np.ndarray:
    """Max over a kernel x kernel window at every position of the last two axes ('same' size).

    The maximum of shifted views of a -inf padded array: kernel**2 vectorised np.maximum calls,
    no loop over pixels.
    """
    if kernel % 2 != 1 or kernel < 1:
        raise ValueError(f"max-pool kernel must be odd and positive, got {kernel}")
    r = kernel // 2
    if r == 0:
        return values.copy()
    h, w = values.shape[-2:]
    pad = [(0, 0)] * (values.ndim - 2) + [(r, r), (r, r)]
    padded = np.pad(values, pad, mode="constant", constant_values=-np.inf)
    out = np.full(values.shape, -np.inf, dtype=values.dtype)
    for dy in range(kernel):
        for dx in range(kernel):
            np.maximum(out, padded[..., dy:dy + h, dx:dx + w], out=out)
    return out


def heatmap_peaks(heatmap: np.ndarray, k: int, kernel: int = 3
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k highest local maxima of a (N, 1, H, W) or (N, H, W) heatmap.

    Returns (values, ys, xs), each (N, k) sorted by value descending; a position that is not a
    local maximum has value -inf (so it falls below any threshold).
    """
    if heatmap.ndim == 4:
        if heatmap.shape[1] != 1:
            raise ValueError(f"heatmap must have one class channel, got shape {heatmap.shape}")
        heatmap = heatmap[:, 0]
    if heatmap.ndim != 3:
        raise ValueError(f"heatmap must be (N,1,H,W) or (N,H,W), got shape {heatmap.shape}")
    n, h, w = heatmap.shape
    heat = heatmap.astype(np.float32, copy=False)
    is_peak = heat == max_pool_same(heat, kernel)
    flat = np.where(is_peak, heat, -np.inf).reshape(n, h * w)
    k = min(k, h * w)
    top = np.argpartition(-flat, k - 1, axis=1)[:, :k]
    top_values = np.take_along_axis(flat, top, axis=1)
    order = np.argsort(-top_values, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    values = np.take_along_axis(top_values, order, axis=1)
    return values, top // w, top % w


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def decode_centernet(heatmap: np.ndarray, wh: np.ndarray, offset: np.ndarray, stride: int,
                     score_threshold: float = 0.3, max_detections: int = 10,
                     heatmap_is_logits: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """Boxes in network-input pixels from CenterNet heads.

    heatmap (N,1,H,W) centre logits (or probabilities); wh (N,2,H,W) box width/height and
    offset (N,2,H,W) sub-cell centre offset, both in output-cell units. A peak at cell (x, y)
    gives the centre ((x + ox) * stride, (y + oy) * stride) and size (w * stride, h * stride).
    Returns per image (boxes float32 (M,4) xyxy, scores float32 (M,)), score-descending.
    """
    values, ys, xs = heatmap_peaks(heatmap, max_detections)
    scores = _sigmoid(values) if heatmap_is_logits else values
    n = heatmap.shape[0]
    batch = np.arange(n)[:, None]
    w = wh[batch, 0, ys, xs]
    h = wh[batch, 1, ys, xs]
    cx = (xs + offset[batch, 0, ys, xs]) * stride
    cy = (ys + offset[batch, 1, ys, xs]) * stride
    w = np.maximum(w, 0.0) * stride
    h = np.maximum(h, 0.0) * stride
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1).astype(np.float32)
    keep = np.isfinite(values) & (scores >= score_threshold)
    return [(boxes[i][keep[i]], scores[i][keep[i]].astype(np.float32)) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# NMS
# ---------------------------------------------------------------------------------------------

def fast_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept, score-descending (matrix 'Fast NMS', Bolya et al. 2019).

    Sort by score, take the IoU matrix, keep its strict upper triangle (each box against the
    boxes scoring higher) and drop a box whose largest IoU with any higher box exceeds the
    threshold. One matrix operation instead of a greedy loop. It differs from greedy NMS only
    when a box is suppressed by a box that greedy NMS would itself have suppressed, which
    needs three mutually overlapping candidates of one object - it then removes slightly
    more; for a detector with one or a few polyps per frame the outputs agree.
    """
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-np.asarray(scores), kind="stable")
    iou = np.triu(box_iou(boxes[order], boxes[order]), k=1)
    keep = iou.max(axis=0) <= iou_threshold
    return order[keep]


# ---------------------------------------------------------------------------------------------
# External (YOLO-style) ONNX detectors
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExternalLayout:
    """How an external detector's output tensor is laid out: the bundle's `outputs.layout`
    (schema and validation in `pipeline.bundle`, documented in docs/bundles.md).

    `transposed` false: (batch, candidates, columns) as YOLOv5/v7 and end-to-end models emit;
    true: (batch, columns, candidates) as YOLOv8/v11 emit. The polyp score of a candidate is
    the largest of its `score_columns` (list just the polyp class), times `objectness_column`
    when there is one (after a sigmoid on each when `scores_are_logits`). `coordinates`
    "normalised" means fractions of the network input width/height.
    """
    output: str
    transposed: bool = False
    box_format: str = "cxcywh"
    box_columns: tuple[int, int, int, int] = (0, 1, 2, 3)
    score_columns: tuple[int, ...] = (4,)
    objectness_column: int | None = None
    normalised: bool = False
    scores_are_logits: bool = False
    nms_applied: bool = False

    @classmethod
    def from_manifest(cls, layout: dict) -> "ExternalLayout":
        """From a bundle's `outputs.layout` (already validated by `load_bundle`)."""
        return cls(output=layout["output"], transposed=bool(layout.get("transposed", False)),
                   box_format=layout["box_format"],
                   box_columns=tuple(int(c) for c in layout.get("box_columns", (0, 1, 2, 3))),
                   score_columns=tuple(int(c) for c in layout["score_columns"]),
                   objectness_column=layout.get("objectness_column"),
                   normalised=layout["coordinates"] == "normalised",
                   scores_are_logits=bool(layout.get("scores_are_logits", False)),
                   nms_applied=bool(layout.get("nms_applied", False)))

    @property
    def columns_needed(self) -> int:
        used = [*self.box_columns, *self.score_columns]
        if self.objectness_column is not None:
            used.append(self.objectness_column)
        return max(used) + 1


def boxes_to_xyxy(boxes: np.ndarray, box_format: str) -> np.ndarray:
    """(M,4) boxes in `box_format` to xyxy."""
    a, b, c, d = (boxes[:, i] for i in range(4))
    if box_format == "xyxy":
        return np.stack([a, b, c, d], axis=1)
    if box_format == "cxcywh":
        return np.stack([a - c / 2, b - d / 2, a + c / 2, b + d / 2], axis=1)
    if box_format == "xywh":
        return np.stack([a, b, a + c, b + d], axis=1)
    raise ValueError(f"unknown box format {box_format!r}")


def decode_external(output: np.ndarray, layout: ExternalLayout, input_size: tuple[int, int],
                    score_threshold: float = 0.3, max_detections: int = 10,
                    nms_iou: float = 0.5) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image (boxes xyxy in network-input pixels (M,4), scores (M,)) from an external output.

    input_size: network input (width, height), to scale normalised coordinates. Unless the
    layout says the model already applied NMS, overlapping candidates are suppressed with
    `fast_nms` at `nms_iou`.
    """
    output = np.asarray(output, dtype=np.float32)
    if output.ndim == 2:
        output = output[None]
    if output.ndim != 3:
        raise BundleError(f"external detector output {layout.output!r} must be 3-D "
                          f"(batch, candidates, columns), got shape {output.shape}")
    rows = output.transpose(0, 2, 1) if layout.transposed else output
    if rows.shape[2] < layout.columns_needed:
        raise BundleError(f"external detector output {layout.output!r} has {rows.shape[2]} columns per "
                          f"candidate (shape {output.shape}, transposed={layout.transposed}) but "
                          f"outputs.layout uses column {layout.columns_needed - 1}")
    scale = np.array([input_size[0], input_size[1]] * 2, dtype=np.float32)
    results = []
    for image_rows in rows:                      # loop over the batch, never over candidates
        scores = image_rows[:, list(layout.score_columns)]
        if layout.scores_are_logits:
            scores = _sigmoid(scores)
        scores = scores.max(axis=1)
        if layout.objectness_column is not None:
            objectness = image_rows[:, layout.objectness_column]
            scores = scores * (_sigmoid(objectness) if layout.scores_are_logits else objectness)
        keep = scores >= score_threshold
        boxes = boxes_to_xyxy(image_rows[keep][:, list(layout.box_columns)], layout.box_format)
        scores = scores[keep]
        if layout.normalised:
            boxes = boxes * scale
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores = boxes[valid], scores[valid]
        kept = np.argsort(-scores, kind="stable") if layout.nms_applied else fast_nms(boxes, scores, nms_iou)
        kept = kept[:max_detections]
        results.append((boxes[kept].astype(np.float32), scores[kept].astype(np.float32)))
    return results


# ---------------------------------------------------------------------------------------------
# Frames in, detections out
# ---------------------------------------------------------------------------------------------

class PolypDetector:
    """Runs a detector bundle (ours or an external ONNX one) on RGB frames.

    `PolypDetector(engine_or_bundle, score_threshold, max_detections)`: an engine from
    `pipeline.engines.load_engine`, or a bundle / bundle path (loaded with `backend`, `threads`,
    `device`). The frame is FOV-masked and letterboxed exactly as in training
    (`pipeline.prep.prepare_detector_input`), the outputs decoded (centre heatmap, or the
    declared external layout plus NMS at `nms_iou`), and the boxes mapped back to frame pixels.
    `last_timing` holds the seconds spent preparing, inferring and decoding on the last call.
    """

    def __init__(self, engine_or_bundle, score_threshold: float = 0.3, max_detections: int = 10, *,
                 backend: str = "auto", threads: int | None = None, device: str | None = None,
                 nms_iou: float = 0.5) -> None:
        from pipeline.prep import DetectorInputSpec

        if hasattr(engine_or_bundle, "run") and hasattr(engine_or_bundle, "bundle"):
            engine = engine_or_bundle
        else:
            from .engines import load_engine
            engine = load_engine(engine_or_bundle, backend=backend, threads=threads, device=device)
        bundle = engine.bundle
        where = bundle.path / "bundle.json"
        if bundle.kind != "detector":
            raise BundleError(f"{where}: kind is {bundle.kind!r}, a detector bundle is needed here")
        if len(bundle.input_names) != 1:
            raise BundleError(f"{where}: a detector takes one input image, bundle declares "
                              f"{list(bundle.input_names)}")
        width, height = bundle.input_size
        if width != height:
            raise BundleError(f"{where}: inputs.size {width}x{height}: the letterbox makes square "
                              f"inputs only")
        if not bundle.inputs.get("letterbox", True):
            raise BundleError(f"{where}: inputs.letterbox false is not supported (frames are "
                              f"letterboxed to keep their aspect ratio)")
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        self.engine = engine
        self.bundle = bundle
        self.score_threshold = float(score_threshold)
        self.max_detections = int(max_detections)
        self.nms_iou = float(nms_iou)
        self.input_name = bundle.input_names[0]
        self.bgr = bundle.inputs.get("colour_order", "RGB") == "BGR"
        self.spec = DetectorInputSpec(size=int(width), mean=tuple(bundle.inputs["mean"]),
                                      std=tuple(bundle.inputs["std"]),
                                      fov_masking=bool(bundle.inputs.get("fov_masking", False)))
        self.layout = ExternalLayout.from_manifest(bundle.outputs["layout"]) if bundle.is_external else None
        if self.layout is None:
            missing = [n for n in ("heatmap", "wh", "offset") if n not in bundle.output_names]
            if missing:
                raise BundleError(f"{where}: detector outputs need heatmap, wh and offset; "
                                  f"{missing[0]!r} is missing (has {list(bundle.output_names)})")
        self.last_timing: dict[str, float] = {}

    @property
    def input_size(self) -> int:
        return self.spec.size

    def prepare(self, image_rgb: np.ndarray, fov_mask: np.ndarray | None = None):
        """(float32 (1,3,S,S), LetterboxInfo) for one frame."""
        from pipeline.prep import prepare_detector_input

        batch, info = prepare_detector_input(image_rgb, self.spec, fov_mask=fov_mask)
        if self.bgr:
            batch = np.ascontiguousarray(batch[:, ::-1])
        return batch, info

    def decode(self, outputs: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image (boxes in network-input pixels, scores) from the engine's outputs."""
        if self.layout is not None:
            return decode_external(outputs[self.layout.output], self.layout, (self.spec.size, self.spec.size),
                                   self.score_threshold, self.max_detections, self.nms_iou)
        heatmap = outputs["heatmap"]
        stride = self.spec.size // heatmap.shape[-1]
        return decode_centernet(heatmap, outputs["wh"], outputs["offset"], stride,
                                self.score_threshold, self.max_detections)

    def detect(self, image_rgb: np.ndarray, fov_mask: np.ndarray | None = None) -> list[Detection]:
        """Detections on one RGB uint8 frame, boxes in its pixels, best first.

        fov_mask: the video's cached field-of-view mask (`pipeline.fov.FovMaskCache`);
        estimated from this frame when None and the bundle asks for FOV masking.
        """
        return self.detect_batch([image_rgb], None if fov_mask is None else [fov_mask])[0]

    def detect_batch(self, images: Sequence[np.ndarray],
                     fov_masks: Sequence[np.ndarray | None] | None = None) -> list[list[Detection]]:
        started = time.perf_counter()
        prepared = [self.prepare(image, None if fov_masks is None else fov_masks[i])
                    for i, image in enumerate(images)]
        batch = np.concatenate([p[0] for p in prepared], axis=0)
        inferred = time.perf_counter()
        outputs = self.engine.run({self.input_name: batch})
        decoded_at = time.perf_counter()
        results = []
        for (boxes, scores), (_, info) in zip(self.decode(outputs), prepared):
            frame_boxes = info.to_image(boxes)
            valid = (frame_boxes[:, 2] > frame_boxes[:, 0]) & (frame_boxes[:, 3] > frame_boxes[:, 1])
            results.append([Detection(box=tuple(float(v) for v in box), score=float(score))
                            for box, score in zip(frame_boxes[valid], scores[valid])])
        finished = time.perf_counter()
        self.last_timing = {"prepare_s": inferred - started, "infer_s": decoded_at - inferred,
                            "decode_s": finished - decoded_at}
        return results
