"""Box quality on synthetic images: border cut (image edge and FOV), blur, folding with confidence."""
import cv2
import numpy as np
import pytest

from pipeline.boxes import grow_boxes
from pipeline.errors import ConfigError
from pipeline.prep import SizerInputSpec, prepare_sizer_inputs
from pipeline.quality import QualityAssessor, inside_fraction


def textured(w=320, h=240, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_grow_boxes():
    # 0.5 x the width/height on each side: the 20x40 box becomes 40x80 (the sizer's crop).
    np.testing.assert_allclose(grow_boxes([[10, 20, 30, 60]], 0.5), [[0, 0, 40, 80]])


@pytest.mark.parametrize("grow", [0.5, 0.25, 1.0])
def test_quality_sees_exactly_the_sizers_crop(grow):
    """The border test's grown box is the rgb crop the sizer is given: on a white frame with
    mean 0 / std 1, the crop's mean is the fraction of it inside the image."""
    image = np.full((120, 160, 3), 255, np.uint8)
    spec = SizerInputSpec(streams=("rgb",), size=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                          fov_masking=False, box_grow=grow)
    boxes = np.array([[-10, 30, 30, 70], [130, 90, 170, 118], [60, 40, 100, 80], [0, 0, 12, 20]], float)
    crops = prepare_sizer_inputs(image, boxes, spec)["rgb"]
    seen_inside = crops.mean(axis=(1, 2, 3))
    quality = QualityAssessor(box_grow=grow, border_power=1.0).assess(image, boxes)
    # Tolerance: the crop is rounded to whole pixels and resized to 64x64 (one pixel of ~60-120).
    np.testing.assert_allclose(quality.inside, seen_inside, atol=0.03)
    assert (seen_inside < 0.95).sum() >= 2          # the border really cuts some crops


def test_inside_fraction_image_edge():
    boxes = np.array([[100, 100, 140, 140],      # fully inside
                      [-20, 100, 20, 140],       # half cut by the left edge
                      [300, 220, 340, 260],      # a quarter inside (corner)
                      [400, 10, 450, 50]])       # off the image
    np.testing.assert_allclose(inside_fraction(boxes, (320, 240)), [1.0, 0.5, 0.25, 0.0])
    # grown by half its size on each side the first box is still inside, the cut one loses more
    grown = inside_fraction(boxes[:2], (320, 240), grow=0.5)
    assert grown[0] == 1.0 and grown[1] == pytest.approx(40 / 80)


def test_inside_fraction_circular_fov():
    fov = np.zeros((240, 320), np.uint8)
    cv2.circle(fov, (160, 120), 110, 1, -1)
    fov = fov.astype(bool)
    centre = [140, 100, 180, 140]
    rim = [250, 100, 290, 140]       # circle edge at x = 270: about half the box outside
    outside = [0, 0, 30, 30]         # image corner, black outside the FOV
    got = inside_fraction(np.array([centre, rim, outside]), (320, 240), fov)
    assert got[0] == 1.0 and 0.35 < got[1] < 0.6 and got[2] == 0.0
    with pytest.raises(ValueError, match="FOV mask is 10x10"):
        inside_fraction(np.array([centre]), (320, 240), np.ones((10, 10), bool))


def test_blur_lowers_sharpness_and_quality_folds_confidence():
    sharp = textured()
    blurred = cv2.GaussianBlur(sharp, (0, 0), 3)
    box = np.array([[100, 80, 180, 160]], np.float64)
    qa = QualityAssessor()
    s_sharp = qa.sharpness(sharp, box)[0]
    s_blur = qa.sharpness(blurred, box)[0]
    assert s_sharp > 0.9 and s_blur < 0.5 * s_sharp
    flat = np.full_like(sharp, 128)
    assert qa.sharpness(flat, box)[0] == 0.0

    q = qa.assess(sharp, np.vstack([box, [[-40, 80, 40, 160]]]), scores=[0.8, 0.8])
    # The sizer's crop: clipped to 0..40, grown by 20 px each side: -20..60, 3/4 inside.
    assert q.inside[0] == 1.0 and q.inside[1] == pytest.approx(0.75)
    np.testing.assert_allclose(q.image_quality, q.inside ** 2 * q.sharpness)
    np.testing.assert_allclose(q.combined, 0.8 * q.image_quality)
    assert q.combined[0] > 1.7 * q.combined[1]       # the cut box weighs 0.75**2 (same sharpness)
    assert np.all((q.combined >= 0) & (q.combined <= 1))


def test_sharpness_independent_of_resolution():
    img = cv2.GaussianBlur(textured(640, 480, seed=3), (0, 0), 1.0)
    big = cv2.resize(img, (1280, 960), interpolation=cv2.INTER_CUBIC)
    qa = QualityAssessor(analysis_width=640)
    small_s = qa.sharpness(img, np.array([[200, 150, 400, 300]]))[0]
    big_s = qa.sharpness(big, np.array([[400, 300, 800, 600]]))[0]
    assert big_s == pytest.approx(small_s, abs=0.1)


def test_empty_boxes_and_validation():
    q = QualityAssessor().assess(textured(), np.zeros((0, 4)))
    assert q.combined.shape == (0,)
    with pytest.raises(ConfigError, match="box_grow must be a number in"):
        QualityAssessor(box_grow=-1)
    with pytest.raises(ConfigError, match="blur_half_variance"):
        QualityAssessor(blur_half_variance=0)


def _whole_frame_sharpness(gray: np.ndarray, boxes: np.ndarray, half_variance: float) -> np.ndarray:
    """The definition: variance of the whole frame's Laplacian inside each box."""
    lap = cv2.Laplacian(gray, cv2.CV_32F, ksize=1).astype(np.float64)
    out = []
    for x1, y1, x2, y2 in boxes:
        inner = lap[y1:y2, x1:x2]
        v = inner.var()
        out.append(v / (v + half_variance))
    return np.array(out)


def test_per_box_laplacian_equals_the_whole_frame_one():
    image = cv2.GaussianBlur(textured(seed=3), (0, 0), 1.2)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    boxes = np.array([[100, 80, 160, 130],     # inside
                      [0, 0, 40, 30],          # top-left corner: the frame's own border rule
                      [290, 200, 320, 240],    # bottom-right corner
                      [0, 100, 320, 120]])     # the full width
    assessor = QualityAssessor(blur_half_variance=30.0)
    np.testing.assert_allclose(assessor.sharpness(image, boxes), _whole_frame_sharpness(gray, boxes, 30.0),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("size", [(1920, 1080), (1280, 720), (1350, 1080), (1920, 1088)])
def test_scaled_sharpness_equals_scaling_the_whole_frame(size):
    """Frames a whole multiple of analysis_width wide are scaled box by box (their blocks only);
    the figures are those of scaling the whole frame, as other sizes still do."""
    width, height = size
    image = cv2.GaussianBlur(textured(width, height, seed=5), (0, 0), 1.5)
    gw = 640
    gh = round(height * gw / width)
    gray = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (gw, gh), interpolation=cv2.INTER_AREA)
    k = width / gw
    boxes = np.array([[0, 0, 60, 45], [width - 91.3, height - 40.2, width, height], [300.5, 200.2, 900.9, 700.1],
                      [10, height - 9, width - 10, height]])
    # The same boxes in the scaled frame, rounded outwards as `sharpness` does.
    scaled = np.stack([np.floor(boxes[:, 0] / k), np.floor(boxes[:, 1] / k), np.ceil(boxes[:, 2] / k),
                       np.ceil(boxes[:, 3] / k)], axis=1).clip(0, [gw, gh, gw, gh]).astype(int)
    assessor = QualityAssessor(blur_half_variance=30.0)
    np.testing.assert_allclose(assessor.sharpness(image, boxes), _whole_frame_sharpness(gray, scaled, 30.0),
                               rtol=1e-9, atol=1e-12)


def test_fov_table_is_kept_for_the_same_mask_and_renewed_for_a_new_one():
    image = textured()
    fov = np.zeros((240, 320), bool)
    fov[:, :160] = True
    box = [[140, 100, 180, 140]]               # half inside the left-half FOV
    assessor = QualityAssessor(box_grow=0.0, border_power=1.0)
    assert assessor.assess(image, box, fov_mask=fov).inside[0] == pytest.approx(0.5)
    assert assessor.assess(image, box, fov_mask=fov).inside[0] == pytest.approx(0.5)
    moved = np.zeros((240, 320), bool)         # a re-estimated mask is a new array
    moved[:, :150] = True
    assert assessor.assess(image, box, fov_mask=moved).inside[0] == pytest.approx(10 / 40)
