"""Detector decoding against hand-made heads: peaks, offsets, sizes, letterbox, NMS, targets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.detecting import (boxes_to_xyxy, decode_centernet, fast_nms, heatmap_peaks,
                                max_pool_same)
from pipeline.prep import LetterboxInfo, letterbox
from trainer.data.detection import centernet_targets, gaussian_radius

BACKGROUND = -10.0


def _heads(grid: int = 8):
    heat = np.full((1, 1, grid, grid), BACKGROUND, dtype=np.float32)
    wh = np.zeros((1, 2, grid, grid), dtype=np.float32)
    offset = np.zeros((1, 2, grid, grid), dtype=np.float32)
    return heat, wh, offset


def test_max_pool_same_matches_torch():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(2, 1, 9, 7)).astype(np.float32)
    expected = torch.nn.functional.max_pool2d(torch.from_numpy(values), 3, 1, 1).numpy()
    np.testing.assert_array_equal(max_pool_same(values, 3), expected)
    expected5 = torch.nn.functional.max_pool2d(torch.from_numpy(values), 5, 1, 2).numpy()
    np.testing.assert_array_equal(max_pool_same(values, 5), expected5)


def test_peaks_keep_local_maxima_only_and_sort_by_value():
    heat, _, _ = _heads()
    heat[0, 0, 2, 3] = 2.0
    heat[0, 0, 2, 4] = 1.5        # neighbour of the 2.0 peak: not a local maximum
    heat[0, 0, 6, 6] = 1.0
    values, ys, xs = heatmap_peaks(heat, k=3)
    assert values.shape == (1, 3)
    assert list(values[0, :2]) == [2.0, 1.0]
    assert (ys[0, 0], xs[0, 0]) == (2, 3)
    assert (ys[0, 1], xs[0, 1]) == (6, 6)
    # the third best position is background or suppressed, never the 1.5 neighbour
    assert values[0, 2] < 1.5


def test_decode_gives_exact_boxes_from_peaks_sizes_and_offsets():
    heat, wh, offset = _heads()
    stride = 4
    heat[0, 0, 2, 3] = 2.0
    wh[0, :, 2, 3] = (2.0, 4.0)          # 8 x 16 input pixels
    offset[0, :, 2, 3] = (0.25, 0.5)     # centre (3.25, 2.5) cells = (13, 10) pixels
    heat[0, 0, 6, 1] = 0.0               # score 0.5
    wh[0, :, 6, 1] = (1.0, 1.0)
    offset[0, :, 6, 1] = (0.5, 0.5)      # centre (6, 26) pixels, 4 x 4
    heat[0, 0, 0, 7] = -1.0              # score 0.27: below the threshold
    wh[0, :, 0, 7] = (1.0, 1.0)
    (boxes, scores), = decode_centernet(heat, wh, offset, stride, score_threshold=0.3, max_detections=5)
    np.testing.assert_allclose(scores, [1 / (1 + np.exp(-2.0)), 0.5], rtol=1e-6)
    np.testing.assert_allclose(boxes, [[9.0, 2.0, 17.0, 18.0], [4.0, 24.0, 8.0, 28.0]], atol=1e-5)


def test_decode_respects_max_detections_and_batches():
    heat = np.full((2, 1, 16, 16), BACKGROUND, dtype=np.float32)
    wh = np.ones((2, 2, 16, 16), dtype=np.float32)
    offset = np.zeros((2, 2, 16, 16), dtype=np.float32)
    for i, (y, x) in enumerate([(1, 1), (4, 4), (8, 8), (12, 12)]):
        heat[0, 0, y, x] = 3.0 - i          # four separate peaks in image 0
    heat[1, 0, 5, 9] = 1.0                   # one in image 1
    first, second = decode_centernet(heat, wh, offset, stride=8, score_threshold=0.1, max_detections=2)
    assert len(first[0]) == 2 and len(second[0]) == 1
    np.testing.assert_allclose(first[0][:, :2], [[4, 4], [28, 28]])        # the two best, in order
    np.testing.assert_allclose(second[0], [[68.0, 36.0, 76.0, 44.0]])


def test_letterbox_undo_maps_input_boxes_back_to_the_frame():
    # a 640x480 frame letterboxed into 320x320: scale 0.5, 40 px bars above and below
    frame = np.zeros((480, 640, 3), dtype=np.uint8)
    _, scale, (pad_x, pad_y) = letterbox(frame, 320)
    assert (scale, pad_x, pad_y) == (0.5, 0, 40)
    info = LetterboxInfo(scale, pad_x, pad_y, 640, 480)
    boxes = np.array([[10.0, 50.0, 110.0, 150.0], [300.0, 30.0, 330.0, 100.0]], dtype=np.float32)
    out = info.to_image(boxes)
    np.testing.assert_allclose(out[0], [20.0, 20.0, 220.0, 220.0])
    np.testing.assert_allclose(out[1], [600.0, 0.0, 640.0, 120.0])   # clipped at the frame
    np.testing.assert_allclose(info.to_input(out[:1]), boxes[:1])


def test_training_evaluates_with_the_pipelines_decoder():
    """One decoder: the trainer's validation decodes with the function serving uses."""
    import trainer.tasks.detector as task

    assert task.decode_centernet is decode_centernet
    assert not hasattr(task, "decode_centernet_torch") and not hasattr(task, "heatmap_peaks_torch")


def test_box_formats():
    boxes = np.array([[10.0, 20.0, 4.0, 6.0]])
    np.testing.assert_allclose(boxes_to_xyxy(boxes, "cxcywh"), [[8.0, 17.0, 12.0, 23.0]])
    np.testing.assert_allclose(boxes_to_xyxy(boxes, "xywh"), [[10.0, 20.0, 14.0, 26.0]])
    np.testing.assert_allclose(boxes_to_xyxy(boxes, "xyxy"), boxes)


def test_fast_nms_suppresses_overlaps_and_keeps_separate_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 9]], dtype=np.float32)
    scores = np.array([0.6, 0.9, 0.5, 0.3], dtype=np.float32)
    keep = fast_nms(boxes, scores, iou_threshold=0.5)
    assert list(keep) == [1, 2]            # 0 and 3 overlap box 1 (IoU 0.68 and 0.6)
    assert list(fast_nms(boxes, scores, iou_threshold=0.95)) == [1, 0, 2, 3]
    assert len(fast_nms(np.zeros((0, 4)), np.zeros(0), 0.5)) == 0


def test_gaussian_radius_is_monotonic_in_size():
    r = gaussian_radius(np.array([2.0, 8.0, 32.0]), np.array([2.0, 8.0, 32.0]))
    assert np.all(np.diff(r) > 0) and r[0] > 0


def test_targets_decode_back_to_the_boxes():
    stride, size = 8, 256
    boxes = np.array([[20.0, 30.0, 92.0, 110.0], [150.5, 160.25, 240.0, 250.0]])
    t = centernet_targets(boxes, size, stride)
    assert t["heatmap"].shape == (1, 32, 32) and t["wh"].shape == (2, 32, 32)
    assert t["heatmap"].max() == 1.0 and int((t["heatmap"] == 1.0).sum()) == 2
    assert int((t["reg_weight"] == 1.0).sum()) == 2
    (decoded, scores), = decode_centernet(t["heatmap"][None], t["wh"][None], t["offset"][None], stride,
                                          score_threshold=0.99, max_detections=10, heatmap_is_logits=False)
    order = np.argsort(decoded[:, 0])
    np.testing.assert_allclose(decoded[order], boxes, atol=1e-4)
    np.testing.assert_array_equal(scores, [1.0, 1.0])


def test_cells_around_a_centre_decode_to_the_same_box():
    stride, size = 8, 256
    box = np.array([[40.0, 60.0, 140.0, 180.0]])      # 12.5 x 15 cells: Gaussian radius >= 1
    t = centernet_targets(box, size, stride)
    weight = t["reg_weight"][0]
    ys, xs = np.nonzero(weight)
    assert len(ys) > 1 and weight.max() == 1.0
    # every supervised cell, taken as if it were the peak, decodes to the box
    for y, x in zip(ys, xs):
        centre = (np.array([x, y]) + t["offset"][:, y, x]) * stride
        size_px = t["wh"][:, y, x] * stride
        np.testing.assert_allclose(np.concatenate([centre - size_px / 2, centre + size_px / 2]), box[0],
                                   atol=1e-4)
    # where two boxes' Gaussians meet, each cell belongs to the box whose Gaussian is higher
    two = np.array([[40.0, 60.0, 140.0, 180.0], [120.0, 60.0, 220.0, 180.0]])
    t2 = centernet_targets(two, size, stride)
    y, x = 14, 11                                     # next to the first centre
    np.testing.assert_allclose((x + t2["offset"][0, y, x]) * stride, 90.0, atol=1e-4)


def test_targets_of_a_negative_frame_are_empty():
    t = centernet_targets(np.zeros((0, 4)), 128, 4)
    assert t["heatmap"].shape == (1, 32, 32)
    assert not t["heatmap"].any() and not t["reg_weight"].any()


@pytest.mark.parametrize("kernel", [2, 0])
def test_max_pool_rejects_even_kernels(kernel):
    with pytest.raises(ValueError, match="odd"):
        max_pool_same(np.zeros((1, 4, 4), dtype=np.float32), kernel)
