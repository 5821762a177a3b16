"""Sizer/detector input preparation against hand-computed crops and masks; FOV masks."""
import cv2
import numpy as np
import pytest

from pipeline.fov import FovMaskCache, estimate_fov_mask
from pipeline.errors import ConfigError
from pipeline.prep import (IMAGENET_MEAN, IMAGENET_STD, DetectorInputSpec, LetterboxInfo,
                          SizerInputSpec, letterbox, prepare_detector_input, prepare_sizer_inputs,
                          unletterbox_boxes)

MEAN = np.array(IMAGENET_MEAN, dtype=np.float32)
STD = np.array(IMAGENET_STD, dtype=np.float32)


def denorm(x: np.ndarray) -> np.ndarray:
    """(3,S,S) normalised -> (S,S,3) in 0..255."""
    return (x.transpose(1, 2, 0) * STD + MEAN) * 255.0


def scene(w=100, h=80):
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (0, 0, 200)                    # blue background
    img[30:50, 40:60] = (255, 0, 0)         # red polyp at box (40, 30, 60, 50)
    return img


def test_rgb_crop_is_grown_box_exactly():
    img = scene()
    spec = SizerInputSpec(size=40, fov_masking=False)
    out = prepare_sizer_inputs(img, [(40, 30, 60, 50)], spec)
    assert out["rgb"].shape == (1, 3, 40, 40) and out["rgb"].dtype == np.float32
    # grown by half the width on each side: (30, 20) .. (70, 60), 40x40 -> no resampling
    np.testing.assert_allclose(denorm(out["rgb"][0]), img[20:60, 30:70], atol=1e-3)
    # at half resolution the polyp fills the centre 10x10 of the 20x20 crop
    small = prepare_sizer_inputs(img, [(40, 30, 60, 50)], SizerInputSpec(size=20, fov_masking=False))
    crop = denorm(small["rgb"][0])
    np.testing.assert_allclose(crop[5:15, 5:15], np.broadcast_to((255, 0, 0), (10, 10, 3)), atol=1e-3)
    np.testing.assert_allclose(crop[:5], np.broadcast_to((0, 0, 200), (5, 20, 3)), atol=1e-3)


def test_rgb_crop_pads_with_black_at_the_border():
    img = scene()
    spec = SizerInputSpec(size=40, fov_masking=False)
    crop = denorm(prepare_sizer_inputs(img, [(0, 0, 20, 20)], spec)["rgb"][0])
    # grown box (-10,-10)..(30,30): the first 10 rows and columns lie outside the image
    np.testing.assert_allclose(crop[:10], 0, atol=1e-3)
    np.testing.assert_allclose(crop[:, :10], 0, atol=1e-3)
    np.testing.assert_allclose(crop[10:, 10:], img[0:30, 0:30], atol=1e-3)


def test_mask_stream_keeps_only_pixels_inside_the_box():
    img = np.empty((80, 80, 3), np.uint8)
    img[:] = (100, 150, 200)
    spec = SizerInputSpec(size=40, fov_masking=False)
    out = denorm(prepare_sizer_inputs(img, [(20, 40, 60, 72)], spec)["mask"][0])
    # scale 0.5: columns whose centres fall in [20, 60) are 10..29, rows in [40, 72) are 20..35
    expected = np.zeros((40, 40, 3), np.float32)
    expected[20:36, 10:30] = (100, 150, 200)
    np.testing.assert_allclose(out, expected, atol=1e-3)


def test_normalisation_values_and_batch_matches_single_boxes():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    spec = SizerInputSpec(size=32, fov_masking=False)
    boxes = np.array([[10, 10, 30, 40], [50, 5, 88, 20], [0, 30, 12, 59]], float)
    batch = prepare_sizer_inputs(img, boxes, spec)
    for i, b in enumerate(boxes):
        one = prepare_sizer_inputs(img, b, spec)
        for name in ("rgb", "mask"):
            np.testing.assert_array_equal(batch[name][i], one[name][0])
    # mask stream outside the box is exactly black, normalised: -mean/std
    np.testing.assert_allclose(batch["mask"][0][:, 0, 0], -MEAN / STD, rtol=1e-6)
    empty = prepare_sizer_inputs(img, np.zeros((0, 4)), spec)
    assert empty["rgb"].shape == (0, 3, 32, 32) and empty["mask"].shape == (0, 3, 32, 32)


def test_fov_mask_zeroes_both_streams():
    img = np.full((80, 80, 3), 200, np.uint8)
    fov = np.ones((80, 80), bool)
    fov[:, :40] = False                      # left half outside the endoscope's view
    spec = SizerInputSpec(size=40)
    out = prepare_sizer_inputs(img, [(30, 30, 50, 50)], spec, fov_mask=fov)
    rgb = denorm(out["rgb"][0])              # crop (20,20)..(60,60): x < 40 is outside the FOV
    np.testing.assert_allclose(rgb[:, :20], 0, atol=1e-3)
    np.testing.assert_allclose(rgb[:, 20:], 200, atol=1e-3)
    mask = denorm(out["mask"][0])            # box columns 15..24 at half scale; 15..19 outside
    np.testing.assert_allclose(mask[15:25, 15:20], 0, atol=1e-3)
    np.testing.assert_allclose(mask[15:25, 20:25], 200, atol=1e-3)
    with pytest.raises(ValueError, match="FOV mask shape"):
        prepare_sizer_inputs(img, [(30, 30, 50, 50)], spec, fov_mask=fov[:10])


def test_depth_stream():
    """One channel, cropped exactly like the rgb stream, min-max scaled to 0..1 per crop."""
    img = np.full((40, 40, 3), 128, np.uint8)
    depth = np.tile(np.arange(40, dtype=np.float32), (40, 1))        # depth = column index
    spec = SizerInputSpec(streams=("rgb", "mask", "depth"), size=20, fov_masking=False)
    # box 10..20 grown by 0.5 per side: the crop is columns/rows 5..24, 20 px, so no resampling
    out = prepare_sizer_inputs(img, [(10, 10, 20, 20)], spec, depth=depth)
    assert list(out) == ["rgb", "mask", "depth"] and out["depth"].shape == (1, 1, 20, 20)
    expected = (np.arange(5, 25, dtype=np.float32) - 5) / 19
    np.testing.assert_allclose(out["depth"][0, 0], np.tile(expected, (20, 1)), atol=1e-6)
    # a crop leaving the image is padded with 0 depth, like the rgb crop with black
    # (box 0..20 grown: -10..30, 40 px shrunk 2:1 by area averaging, so pixel pairs are averaged)
    edge = prepare_sizer_inputs(img, [(0, 0, 20, 20)], spec, depth=depth + 10)["depth"][0, 0]
    assert edge.shape == (20, 20) and edge[:5].max() == 0 and edge[:, :5].max() == 0
    np.testing.assert_allclose(edge[10, 5:], (10.5 + 2 * np.arange(15)) / 38.5, atol=1e-5)
    assert prepare_sizer_inputs(img, np.zeros((0, 4)), spec, depth=depth)["depth"].shape == (0, 1, 20, 20)
    with pytest.raises(ValueError, match="no depth map"):
        prepare_sizer_inputs(img, [(0, 0, 20, 20)], spec)
    with pytest.raises(ValueError, match="does not match"):
        prepare_sizer_inputs(img, [(0, 0, 20, 20)], spec, depth=depth[:30])


def test_depth_stream_fov_masked():
    img = np.full((40, 40, 3), 128, np.uint8)
    fov = np.zeros((40, 40), bool)
    fov[:, :20] = True
    spec = SizerInputSpec(streams=("depth",), size=20, fov_masking=True)
    d = prepare_sizer_inputs(img, [(10, 10, 20, 20)], spec, fov_mask=fov,
                             depth=np.full((40, 40), 7.0, np.float32))["depth"][0, 0]
    # inside the FOV the (flat) depth is the crop's maximum: 1; outside 0
    assert (d[:, :15] == 1).all() and (d[:, 15:] == 0).all()


def test_spec_round_trip_and_validation():
    spec = SizerInputSpec(streams=("rgb",), size=384, box_grow=0.25)
    d = spec.to_dict()
    assert d["colour_order"] == "RGB" and d["streams"] == ["rgb"]
    assert SizerInputSpec.from_dict(d) == spec
    assert DetectorInputSpec.from_dict(DetectorInputSpec(size=256).to_dict()) == DetectorInputSpec(size=256)
    with pytest.raises(ConfigError, match="unknown key\\(s\\) crop"):
        SizerInputSpec.from_dict({**d, "crop": 1})
    with pytest.raises(ConfigError, match="colour_order must be 'RGB'"):
        SizerInputSpec.from_dict({**d, "colour_order": "BGR"})
    with pytest.raises(ConfigError, match="each must be one of rgb, mask, depth"):
        SizerInputSpec(streams=("rgb", "flow"))
    with pytest.raises(ConfigError, match="std values must be > 0"):
        SizerInputSpec(std=(0.2, 0.0, 0.2))


def test_letterbox_and_detector_input():
    img = np.full((100, 200, 3), 255, np.uint8)
    boxed, scale, pad = letterbox(img, 100)
    assert scale == 0.5 and pad == (0, 25)
    assert (boxed[:25] == 0).all() and (boxed[75:] == 0).all() and (boxed[25:75] == 255).all()
    boxes = np.array([[20, 10, 120, 90]], float)
    info = LetterboxInfo(scale, *pad, 200, 100)
    np.testing.assert_allclose(info.to_input(boxes), [[10, 30, 60, 70]])
    np.testing.assert_allclose(unletterbox_boxes(info.to_input(boxes), scale, pad), boxes)
    np.testing.assert_allclose(info.to_image([[-10, 0, 120, 100]]), [[0, 0, 200, 100]])   # clipped
    x, info2 = prepare_detector_input(img, DetectorInputSpec(size=100, fov_masking=False))
    assert x.shape == (1, 3, 100, 100) and x.dtype == np.float32 and info2 == info
    np.testing.assert_allclose(x[0, :, 0, 0], -MEAN / STD, rtol=1e-6)
    np.testing.assert_allclose(x[0, :, 50, 50], (1 - MEAN) / STD, rtol=1e-6)


# ---------------------------------------------------------------- field of view
def endoscope_frame(w=320, h=240, radius=100):
    img = np.zeros((h, w, 3), np.uint8)
    cx, cy = w // 2, h // 2
    cv2.circle(img, (cx, cy), radius, (170, 70, 55), -1)
    cv2.circle(img, (cx + 10, cy - 5), 30, (12, 6, 6), -1)                  # dark lumen in the middle
    cv2.circle(img, (cx - radius + 8, cy), 20, (8, 4, 4), -1)              # dark lumen touching the rim
    cv2.putText(img, "OLY 12:03", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
    truth = np.zeros((h, w), np.uint8)
    cv2.circle(truth, (cx, cy), radius, 1, -1)
    return img, truth.astype(bool)


@pytest.mark.parametrize("w,h,radius", [(320, 240, 100), (640, 480, 210)])
def test_fov_mask_on_synthetic_circle(w, h, radius):
    img, truth = endoscope_frame(w, h, radius)
    mask = estimate_fov_mask(img)
    assert mask.shape == (h, w) and mask.dtype == bool
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.97
    assert mask[h // 2, w // 2 + 10]                  # dark lumen centre is inside
    assert mask[h // 2, w // 2 - radius + 8]          # so is the dark notch at the rim
    assert not mask[10:18, 4:80].any()                # overlay text is outside
    assert not mask[0, 0] and not mask[h - 1, w - 1]


def test_fov_mask_fallbacks():
    assert estimate_fov_mask(np.full((60, 80, 3), 120, np.uint8)).all()   # no border at all
    assert estimate_fov_mask(np.full((60, 80, 3), 3, np.uint8)).all()     # too dark to tell


def test_fov_cache_per_video_and_size():
    img, _ = endoscope_frame()
    cache = FovMaskCache()
    a = cache.get("001-001", img)
    b = cache.get("001-001", img)
    assert a is b and cache.estimates == 1
    cache.get("001-002", img)
    cache.get("001-001", cv2.resize(img, (160, 120)))
    assert cache.estimates == 3 and len(cache) == 3
    dark = np.zeros_like(img)
    assert cache.get("001-003", dark).all()
    assert len(cache) == 3                              # inconclusive estimates are not kept


def test_boxes_are_clipped_and_must_be_finite():
    img = scene()
    spec = SizerInputSpec(size=40, fov_masking=False)
    a = prepare_sizer_inputs(img, [(-20, -10, 20, 20)], spec)     # clipped to (0, 0, 20, 20)
    b = prepare_sizer_inputs(img, [(0, 0, 20, 20)], spec)
    np.testing.assert_array_equal(a["rgb"], b["rgb"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
    with pytest.raises(ValueError, match="boxes must be finite"):
        prepare_sizer_inputs(img, [(0, 0, np.nan, 20)], spec)


def test_reference_mode_geometry():
    """mode: reference, the reference code's streams: crop on the SxS frame, grown by int(0.5 x
    extent), clamped, bilinear with align_corners=True; mask stream 0 (mean colour) outside."""
    ramp = (np.arange(20) * 10).astype(np.uint8)
    img = np.zeros((20, 20, 3), np.uint8)
    img[..., 0] = ramp[None, :]
    spec = SizerInputSpec(streams=("rgb", "mask", "depth"), size=20, mean=(0, 0, 0), std=(1, 1, 1),
                          fov_masking=False, mode="reference")
    depth = np.tile(np.arange(20, dtype=np.float32), (20, 1))
    out = prepare_sizer_inputs(img, [(5, 5, 10, 10)], spec, depth=depth)
    # box pixels 5..9, extent 4, grown by 2 per side: 3..11 sampled at 3 + j * 8 / 19
    expected = (3 + np.arange(20) * 8 / 19) * 10 / 255
    np.testing.assert_allclose(out["rgb"][0, 0], np.tile(expected, (20, 1)), atol=1e-5)
    np.testing.assert_allclose(out["depth"][0, 0], np.tile(np.arange(20) / 19, (20, 1)), atol=1e-5)
    mask = out["mask"][0, 0]
    assert (mask[:5] == 0).all() and (mask[10:] == 0).all() and (mask[:, :5] == 0).all()
    np.testing.assert_allclose(mask[5:10, 5:10], np.tile(ramp[5:10] / 255, (5, 1)), atol=1e-6)
    # a box in the corner: the grown crop is clamped to the image (0..6), not padded
    corner = prepare_sizer_inputs(img, [(0, 0, 5, 5)], spec, depth=depth)["rgb"][0, 0]
    np.testing.assert_allclose(corner[0], np.arange(20) * 6 / 19 * 10 / 255, atol=1e-5)
    # the fixed inscribed circle: corners of the frame are 0 in every stream
    circ = SizerInputSpec(streams=("mask",), size=20, fov_masking=True, mode="reference")
    whole = prepare_sizer_inputs(np.full((40, 40, 3), 200, np.uint8), [(0, 0, 40, 40)], circ)["mask"][0]
    assert (whole[:, 0, 0] == 0).all() and (whole[:, 10, 10] != 0).all()
    assert SizerInputSpec.from_dict(spec.to_dict()) == spec and "mode" not in SizerInputSpec().to_dict()
    with pytest.raises(ConfigError, match="mode"):
        SizerInputSpec(mode="other")
