"""Bring your own detector: YOLO-style ONNX models built here, described in a bundle, decoded.

Each model is a real ONNX graph whose output is a fixed set of candidate rows (broadcast to the
batch of whatever image comes in), so the expected boxes are known exactly. It is wrapped with
`pipeline.bundle.copy_external_onnx`, loaded through `load_bundle` / `load_engine`
(onnxruntime) and run through `pipeline.detecting.PolypDetector` on real frames.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.detecting import PolypDetector
from pipeline.engines import load_engine
from pipeline.errors import BundleError
from pipeline.bundle import copy_external_onnx, load_bundle

INPUT = 320          # network input; frames are 640x480 -> scale 0.5, 40 px bars top and bottom


def _constant_detector(path, candidates: np.ndarray, input_name: str = "images",
                       output_name: str = "output0") -> None:
    """ONNX graph: output = candidates (1,A,B) + 0 * per-image mean, so (N,A,B) for N images."""
    const = numpy_helper.from_array(candidates.astype(np.float32)[None], "candidates")
    zero = numpy_helper.from_array(np.zeros(1, dtype=np.float32), "zero")
    shape = numpy_helper.from_array(np.array([-1, 1, 1], dtype=np.int64), "shape")
    axes = numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("ReduceMean", [input_name, "axes"], ["mean"], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["mean3"]),
        helper.make_node("Mul", ["mean3", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "candidates"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes, "constant_yolo",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3, INPUT, INPUT])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", None, None])],
        initializer=[const, zero, shape, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _bundle(tmp_path, candidates, layout: dict, name: str = "yolo"):
    onnx_path = tmp_path / f"{name}.onnx"
    _constant_detector(onnx_path, candidates)
    manifest = {
        "kind": "detector",
        "inputs": {"streams": ["images"], "size": INPUT, "colour_order": "RGB", "layout": "NCHW",
                   "dtype": "float32", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                   "fov_masking": False, "letterbox": True},
        "outputs": {"names": ["output0"], "meaning": {"output0": "candidate rows"},
                    "layout": {"output": "output0", **layout}},
        "provenance": {"synthetic_training_data": False, "clinical_use": False,
                       "note": "test model emitting fixed boxes"},
    }
    return copy_external_onnx(onnx_path, tmp_path / f"{name}-bundle", manifest)


def _frame():
    return np.full((480, 640, 3), 90, dtype=np.uint8)


# Candidate rows of a YOLOv5-style model: cx, cy, w, h (input pixels), objectness, 2 classes
# (class 0 = polyp). Expected frame boxes: (input - (0, 40)) / 0.5.
YOLOV5_ROWS = np.array([
    [100, 120, 40, 60, 0.9, 0.9, 0.1],     # polyp A, score 0.81 -> frame (160, 100, 240, 220)
    [102, 121, 40, 60, 0.9, 0.7, 0.1],     # duplicate of A, 0.63: suppressed by NMS
    [250, 200, 30, 30, 0.8, 0.6, 0.3],     # polyp B, 0.48 -> frame (470, 290, 530, 350)
    [200, 100, 20, 20, 0.2, 0.9, 0.0],     # objectness too low: 0.18
    [60, 250, 50, 50, 0.9, 0.1, 0.95],     # the other class: polyp score 0.09
])


def test_yolov5_rows_with_objectness_decode_to_frame_boxes(tmp_path):
    bundle = _bundle(tmp_path, YOLOV5_ROWS, {
        "transposed": False, "box_format": "cxcywh", "box_columns": [0, 1, 2, 3],
        "score_columns": [5], "objectness_column": 4, "coordinates": "pixels",
        "scores_are_logits": False, "nms_applied": False})
    assert bundle.is_external and load_bundle(bundle.path).kind == "detector"
    engine = load_engine(bundle.path, backend="onnxruntime")
    detector = PolypDetector(engine, score_threshold=0.3, max_detections=10)
    detections = detector.detect(_frame())
    assert [round(d.score, 5) for d in detections] == [0.81, 0.48]
    np.testing.assert_allclose([d.box for d in detections],
                               [[160, 100, 240, 220], [470, 290, 530, 350]], atol=1e-4)
    # without NMS declared as done, the duplicate would be there: with nms_iou 0.95 it stays
    loose = PolypDetector(engine, score_threshold=0.3, nms_iou=0.95)
    assert len(loose.detect(_frame())) == 3
    # a batch of frames of different sizes: each mapped through its own letterbox
    tall = np.full((640, 320, 3), 90, dtype=np.uint8)     # scale 0.5, 80 px bars left and right
    first, second = detector.detect_batch([_frame(), tall])
    assert len(first) == 2 and len(second) == 2
    np.testing.assert_allclose(second[0].box, [(80 - 80) / 0.5, 90 / 0.5, (120 - 80) / 0.5, 150 / 0.5],
                               atol=1e-4)
    assert set(detector.last_timing) == {"prepare_s", "infer_s", "decode_s"}


def test_yolov8_columns_normalised_logits(tmp_path):
    # (1, 4 + classes, candidates): xyxy normalised to the input, one polyp score column as a logit
    logit = lambda p: float(np.log(p / (1 - p)))  # noqa: E731
    boxes = np.array([[0.25, 0.25, 0.5, 0.5],        # -> input (80,80,160,160) -> frame (160,80,320,240)
                      [0.6, 0.5, 0.7, 0.75],         # -> input (192,160,224,240) -> frame (384,240,448,400)
                      [0.1, 0.8, 0.2, 0.9]])
    scores = np.array([logit(0.9), logit(0.35), logit(0.1)])
    columns = np.concatenate([boxes, scores[:, None]], axis=1).T      # (5, 3)
    bundle = _bundle(tmp_path, columns, {
        "transposed": True, "box_format": "xyxy", "score_columns": [4], "objectness_column": None,
        "coordinates": "normalised", "scores_are_logits": True, "nms_applied": True}, name="v8")
    detector = PolypDetector(bundle.path, score_threshold=0.3, backend="onnxruntime")
    assert detector.engine.name == "onnxruntime"
    detections = detector.detect(_frame())
    np.testing.assert_allclose([d.score for d in detections], [0.9, 0.35], rtol=1e-5)
    np.testing.assert_allclose([d.box for d in detections], [[160, 80, 320, 240], [384, 240, 448, 400]],
                               atol=1e-3)
    assert len(PolypDetector(bundle.path, score_threshold=0.3, max_detections=1).detect(_frame())) == 1


def test_xywh_top_left_boxes(tmp_path):
    rows = np.array([[80.0, 90.0, 40.0, 60.0, 0.7]])    # top-left x, y, width, height, score
    bundle = _bundle(tmp_path, rows, {"box_format": "xywh", "score_columns": [4],
                                      "coordinates": "pixels"}, name="xywh")
    (detection,) = PolypDetector(bundle.path, score_threshold=0.5).detect(_frame())
    np.testing.assert_allclose(detection.box, [160, 100, 240, 220], atol=1e-4)
    assert abs(detection.score - 0.7) < 1e-6


def test_layout_that_does_not_fit_the_output_is_a_clear_error(tmp_path):
    rows = np.array([[100.0, 120.0, 40.0, 60.0, 0.9]])   # 5 columns; the layout asks for column 6
    bundle = _bundle(tmp_path, rows, {"box_format": "cxcywh", "score_columns": [6],
                                      "coordinates": "pixels"}, name="bad")
    detector = PolypDetector(bundle.path)
    with pytest.raises(BundleError, match=r"output0.*5 columns.*column 6"):
        detector.detect(_frame())


def test_bundle_without_layout_is_refused(tmp_path):
    onnx_path = tmp_path / "m.onnx"
    _constant_detector(onnx_path, YOLOV5_ROWS)
    manifest = {"kind": "detector",
                "inputs": {"streams": ["images"], "size": INPUT, "mean": [0, 0, 0], "std": [1, 1, 1]},
                "outputs": {"names": ["output0"]}, "provenance": {}}
    with pytest.raises(BundleError, match="layout"):
        copy_external_onnx(onnx_path, tmp_path / "no-layout", manifest)
