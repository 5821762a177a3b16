"""Paired augmentation keeps boxes on the content; the sizer dataset yields what the trainer needs."""
import logging

import numpy as np
import pytest
import torch

from trainer.data import read_realcolon
from trainer.data.augment import PairedAugment, geometry_matrix, warp_boxes, warp_image
from trainer.data.datasets import SizerDataset
from pipeline.fov import FovMaskCache
from trainer.data.records import SampleRecord
from pipeline.prep import SizerInputSpec

NO_COLOUR = dict(brightness=0.0, contrast=0.0, gamma=(1.0, 1.0), hue_deg=0.0, saturation=0.0, blur_p=0.0)


def square_image(w=64, h=48, box=(10, 8, 30, 28)):
    img = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = (230, 230, 230)
    return img


def content_box(img, threshold=100):
    ys, xs = np.nonzero(img.max(axis=2) > threshold)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)


@pytest.mark.parametrize("kwargs,expected", [
    (dict(hflip=True), (34, 8, 54, 28)),              # x -> 64 - x
    (dict(vflip=True), (10, 20, 30, 40)),             # y -> 48 - y
    (dict(hflip=True, vflip=True), (34, 20, 54, 40)),
    (dict(shift=(5, -3)), (15, 5, 35, 25)),
])
def test_flips_and_shift_hand_computed(kwargs, expected):
    img = square_image()
    m = geometry_matrix((64, 48), **kwargs)
    np.testing.assert_allclose(warp_boxes([(10, 8, 30, 28)], m, (64, 48))[0], expected)
    np.testing.assert_allclose(content_box(warp_image(img, m)), expected)


def test_rotation_90_about_centre():
    img = square_image(64, 64)
    m = geometry_matrix((64, 64), angle_deg=90)
    # counter-clockwise on screen: (x, y) -> (y, 64 - x)
    np.testing.assert_allclose(warp_boxes([(10, 8, 30, 28)], m, (64, 64))[0], (8, 34, 28, 54), atol=1e-9)
    np.testing.assert_allclose(content_box(warp_image(img, m)), (8, 34, 28, 54))


def test_scale_about_centre():
    img = square_image()
    m = geometry_matrix((64, 48), scale=0.5)
    # x -> 0.5 x + 16, y -> 0.5 y + 12
    np.testing.assert_allclose(warp_boxes([(10, 8, 30, 28)], m, (64, 48))[0], (21, 16, 31, 26))
    np.testing.assert_allclose(content_box(warp_image(img, m), threshold=150), (21, 16, 31, 26), atol=1)


def test_random_augment_keeps_box_on_content_and_mask_in_step():
    img = square_image(96, 80, (30, 25, 60, 55))
    fov = np.zeros((80, 96), bool)
    fov[5:75, 8:88] = True
    aug = PairedAugment(rotate_deg=15, scale=(0.9, 1.1), shift=0.08, blur_p=0.5)
    rng = np.random.default_rng(0)
    for _ in range(25):
        out, boxes, mask = aug(img, np.array([[30, 25, 60, 55]], float), rng, mask=fov)
        assert out.shape == img.shape and mask.shape == fov.shape and mask.dtype == bool
        seen = content_box(out)
        box = boxes[0]
        # the square fills its box, so the returned box is the bounding box of what is seen
        np.testing.assert_allclose(seen, box, atol=2.0)
        assert 0.4 < mask.mean() < 0.95
    assert img.max() == 230 and fov.sum() == 70 * 80        # inputs untouched


def test_photometric_only_leaves_geometry_alone():
    img = square_image()
    aug = PairedAugment(hflip_p=0, vflip_p=0, rotate_deg=0, scale=(1, 1), shift=0, blur_p=0)
    out, boxes, _ = aug(img, [[10, 8, 30, 28]], np.random.default_rng(1))
    np.testing.assert_array_equal(boxes, [[10, 8, 30, 28]])
    np.testing.assert_allclose(content_box(out), (10, 8, 30, 28))
    assert (out[img.max(axis=2) == 0] == 0).all()            # black stays black
    same, _, _ = PairedAugment(**NO_COLOUR, hflip_p=0, vflip_p=0, rotate_deg=0, scale=(1, 1),
                               shift=0)(img, [[10, 8, 30, 28]], np.random.default_rng(1))
    np.testing.assert_array_equal(same, img)


# ---------------------------------------------------------------- dataset
def test_sizer_dataset_items(fixtures_dir):
    index = read_realcolon(fixtures_dir / "realcolon_mini")
    spec = SizerInputSpec(size=32)
    ds = SizerDataset(index.samples, spec, augment=PairedAugment(), fov_cache=FovMaskCache())
    assert len(ds) == 5
    torch.manual_seed(0)
    inputs, targets = ds[0]
    assert set(inputs) == {"rgb", "mask"}
    assert all(t.shape == (3, 32, 32) and t.dtype == torch.float32 for t in inputs.values())
    sample = ds.samples[int(targets["sample_index"])]
    assert targets["size_mm"].shape == (1,) and float(targets["size_mm"]) == sample.size_mm
    large = next(i for i, s in enumerate(ds.samples) if s.size_mm == 12.0)
    _, t = ds[large]
    assert int(t["triclass"]) == 2 and int(t["binary"]) == 1 and t["triclass"].dtype == torch.int64
    loader = torch.utils.data.DataLoader(ds, batch_size=5)
    x, y = next(iter(loader))
    assert x["rgb"].shape == (5, 3, 32, 32) and y["size_mm"].shape == (5, 1)


def test_sizer_dataset_replaces_unreadable_images(fixtures_dir, caplog):
    good = fixtures_dir / "realcolon_mini" / "001-001_frames" / "001-001_1.jpg"
    samples = [SampleRecord(str(fixtures_dir / "nope.jpg"), "v", 0, (10, 8, 30, 28), "p1", 25.0, None),
               SampleRecord(str(good), "001-001", 1, (10, 8, 30, 28), "p2", 25.0, None)]
    ds = SizerDataset(samples, SizerInputSpec(size=32))
    with caplog.at_level(logging.WARNING, logger="hagview.data"):
        inputs, targets = ds[0]
    assert int(targets["sample_index"]) == 1
    assert float(targets["size_mm"]) == 20.0 and int(targets["triclass"]) == 2   # clipped to 20 mm
    assert any("nope.jpg" in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)
    assert ds.unreadable == {samples[0].image_path}


def test_sizer_dataset_per_polyp_epochs():
    samples = [SampleRecord(f"/x/{p}_{i}.jpg", "v", i, (0, 0, 9, 9), p, 30.0, None)
               for p, n in (("a", 60), ("b", 10)) for i in range(n)]
    ds = SizerDataset(samples, SizerInputSpec(size=32), frames_per_polyp=45, sampling_seed=1)
    assert len(ds) == 55
    first = list(ds.samples)
    ds.set_epoch(1)
    assert len(ds) == 55 and ds.samples != first
    ds.set_epoch(0)
    assert ds.samples == first
