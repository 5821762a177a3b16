"""The real-endoscopy appearances of PairedAugment: boxes stay true, overlays go where they should."""
import numpy as np
import pytest

from trainer.data.augment import (PairedAugment, add_inset_box, add_specular_highlights, add_text_strips,
                                  jpeg_round_trip, motion_blur, warp_image)

ALL_ON = dict(white_balance=0.15, motion_blur_p=1.0, specular_p=1.0, inset_p=1.0, text_p=1.0, jpeg_p=1.0)
NO_GEOMETRY = dict(hflip_p=0.0, vflip_p=0.0, rotate_deg=0.0, scale=(1.0, 1.0), shift=0.0)


def scene(w=160, h=120, box=(60, 40, 100, 80)):
    """Grey mucosa inside a circular view, black outside, and one bright square 'polyp'."""
    img = np.zeros((h, w, 3), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    inside = (xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (0.55 * w) ** 2
    img[inside] = (150, 90, 80)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = (250, 250, 250)
    return img


def test_defaults_leave_old_configs_unchanged_draw_for_draw():
    """With every new effect off, a draw gives the same image and leaves the generator where
    the augmentation without them left it (so committed models reproduce)."""
    img, boxes = scene(), np.array([[60, 40, 100, 80]], float)
    aug = PairedAugment()
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    out_a, boxes_a, _ = aug(img, boxes, rng_a)
    matrix = aug.geometry((160, 120), rng_b)
    out_b = aug.photometric(warp_image(img, matrix), rng_b)
    np.testing.assert_array_equal(out_a, out_b)
    assert rng_a.random() == rng_b.random()


@pytest.mark.parametrize("seed", range(12))
def test_boxes_follow_the_content_with_every_effect_on(seed):
    img = scene()
    aug = PairedAugment(rotate_deg=0.0, scale=(0.8, 1.25), shift=0.1, blur_p=0.0, **ALL_ON)
    rng = np.random.default_rng(seed)
    matrix = aug.geometry((160, 120), np.random.default_rng(seed))
    out, boxes, _ = aug(img, np.array([[60, 40, 100, 80]], float), rng)
    # where the bare map puts the square: flips, zoom and shift are exact on boxes
    corners = np.array([[60, 40, 1], [100, 80, 1]], float) @ matrix.T
    expected = np.concatenate([corners.min(0), corners.max(0)]).clip(0, [160, 120, 160, 120])
    np.testing.assert_allclose(boxes[0], expected, atol=1e-6)
    x1, y1, x2, y2 = np.round(boxes[0]).astype(int)
    if x2 - x1 > 8 and y2 - y1 > 8:
        # the square is still there (only text may cross it): its centre stays bright
        centre = out[(y1 + y2) // 2 - 2:(y1 + y2) // 2 + 2, (x1 + x2) // 2 - 2:(x1 + x2) // 2 + 2]
        assert np.median(centre) > 150


def test_inset_never_covers_a_box_and_is_black_or_dark_green():
    img = scene()
    boxes = np.array([[60, 40, 100, 80]], float)
    placed = 0
    for seed in range(40):
        out = add_inset_box(img, boxes, np.random.default_rng(seed))
        np.testing.assert_array_equal(out[40:80, 60:100], img[40:80, 60:100])
        changed = np.any(out != img, axis=2)
        if changed.any():
            placed += 1
            ys, xs = np.nonzero(changed)
            # a corner rectangle: touches (or nearly touches) two image edges
            assert min(xs.min(), 160 - 1 - xs.max()) <= 160 // 20 and min(ys.min(), 120 - 1 - ys.max()) <= 120 // 20
    assert placed >= 30          # four corners free of the central box: almost always placed


def test_inset_is_skipped_when_every_corner_holds_a_box():
    img = scene()
    boxes = np.array([[0, 0, 160, 120]], float)
    np.testing.assert_array_equal(add_inset_box(img, boxes, np.random.default_rng(0)), img)


def test_text_strips_stay_near_the_top_or_bottom_edge():
    img = scene(320, 240)
    for seed in range(10):
        out = add_text_strips(img, np.random.default_rng(seed))
        rows = np.nonzero(np.any(out != img, axis=(1, 2)))[0]
        assert len(rows) > 0
        assert rows.max() < 240 * 0.4 or rows.min() > 240 * 0.6


def test_specular_highlights_are_near_white_and_only_on_lit_pixels():
    img = scene()
    out = add_specular_highlights(img, np.random.default_rng(3), 6)
    changed = np.any(out != img, axis=2)
    assert changed.sum() > 10
    dark = img.max(axis=2) == 0
    # the soft edge may bleed a pixel or two past the view; the bulk of the border stays black
    assert (changed & dark).sum() < 0.02 * dark.sum()
    assert out[changed].max() >= 235


def test_jpeg_round_trip_and_motion_blur_keep_shape_and_mean():
    img = scene()
    for out in (jpeg_round_trip(img, 30), motion_blur(img, 7.0, 30.0)):
        assert out.shape == img.shape and out.dtype == np.uint8
        assert abs(float(out.mean()) - float(img.mean())) < 3.0
        assert np.any(out != img)


def test_white_balance_keeps_black_black_and_green_fixed():
    img = scene()
    aug = PairedAugment(brightness=0.0, contrast=0.0, gamma=(1.0, 1.0), hue_deg=0.0, saturation=0.0,
                        blur_p=0.0, white_balance=0.2, **NO_GEOMETRY)
    out, _, _ = aug(img, np.zeros((0, 4)), np.random.default_rng(2))
    assert out[0, 0].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(out[..., 1], img[..., 1])
    assert np.any(out[..., 0] != img[..., 0]) or np.any(out[..., 2] != img[..., 2])


def test_work_size_shrinks_image_boxes_and_mask_together():
    img = scene(640, 480, box=(240, 160, 400, 320))
    fov = img.max(axis=2) > 0
    aug = PairedAugment(work_size=320, **NO_GEOMETRY)
    out, boxes, mask = aug(img, np.array([[240, 160, 400, 320]], float), np.random.default_rng(0), mask=fov)
    assert out.shape == (240, 320, 3) and mask.shape == (240, 320)
    np.testing.assert_allclose(boxes, [[120, 80, 200, 160]])
    assert abs(mask.mean() - fov.mean()) < 0.01
    small = scene()
    out, boxes, _ = aug(small, np.array([[60, 40, 100, 80]], float), np.random.default_rng(0))
    assert out.shape == small.shape                     # already small enough: untouched size
    np.testing.assert_allclose(boxes, [[60, 40, 100, 80]])
