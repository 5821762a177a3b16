"""Readers for still-image polyp sets (Kvasir-SEG, PolypGen, CVC-ClinicDB, image folders, negatives)
on generated fixtures in each native layout, and folds grouped by patient/sequence and by centre."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from _polyp_fixtures import (H, ONE, POLYPGEN, TWO, W, clinicdb_layout, ellipse_box, image_folder_layout,
                             kvasir_layout, mask_of, negatives_layout, polypgen_layout, texture, write)
from pipeline.errors import ConfigError, DataError
from trainer.data import read_dataset
from trainer.data.grouping import grouped_folds, similarity_groups
from trainer.data.masks import mask_boxes

# Boxes from JPEG masks: compression moves an edge by at most a pixel or two.
EDGE_TOL = 2.0


def _boxes(frame):
    return [b.box for b in frame.boxes]


def _close(found, expected, tol=EDGE_TOL):
    assert len(found) == len(expected)
    for f, e in zip(found, expected):
        assert np.allclose(f, e, atol=tol), (f, e)


def test_mask_boxes_two_components_and_speck():
    mask = mask_of(TWO + [((150, 10), (0, 0))]) > 127
    boxes = mask_boxes(mask)
    _close(boxes, [ellipse_box(*TWO[0]), ellipse_box(*TWO[1])], tol=0)
    # 8-connectivity: two squares touching at one corner are one polyp
    diag = np.zeros((40, 40), bool)
    diag[5:15, 5:15] = True
    diag[15:25, 15:25] = True
    assert mask_boxes(diag) == [(5.0, 5.0, 25.0, 25.0)]


def test_jpeg_mask_has_compression_noise_and_still_gives_one_box(tmp_path):
    path = write(tmp_path / "m.jpg", mask_of(ONE))
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert len(np.unique(grey)) > 2            # the fixture really carries JPEG grey levels
    _close(mask_boxes(grey > 127), [ellipse_box(*ONE[0])])


def test_kvasir_seg(tmp_path):
    official = kvasir_layout(tmp_path)
    index = read_dataset("kvasir_seg", root=tmp_path)
    by_name = {f.image_path.rsplit("/", 1)[1][:-4]: f for f in index.frames}
    assert sorted(by_name) == ["a", "b", "c", "f"]
    assert {f.source for f in index.frames} == {"kvasir_seg"}
    # official boxes are used as they are (integers of the file)
    b = official["b"]["bbox"]
    assert _boxes(by_name["b"]) == [(float(x["xmin"]), float(x["ymin"]), float(x["xmax"]), float(x["ymax"]))
                                    for x in b]
    assert len({a.polyp_id for a in by_name["b"].boxes}) == 2
    # c: the 1-px-high sliver is dropped; the extra official box is kept but reported
    assert len(by_name["c"].boxes) == 2
    reasons = [w.reason for w in index.warnings]
    assert len(reasons) == 2
    assert any("sliver" in r for r in reasons)
    assert any("matches no mask component" in r for r in reasons)
    # d has no mask; e is not in the box file
    skipped = {s.file.rsplit("/", 1)[1]: s.reason for s in index.skipped}
    assert skipped == {"d.jpg": "no mask: no mask file named after this image",
                       "e.jpg": "not in kavsir_bboxes.json: no official box for e"}
    # f is a near-duplicate of a: one group; everything else its own
    assert by_name["a"].video == by_name["f"].video
    assert len({f.video for f in index.frames}) == 3
    assert sorted(by_name[n].frame_index for n in ("a", "f")) == [0, 1]


def test_kvasir_seg_boxes_from_masks_and_missing_box_file(tmp_path):
    kvasir_layout(tmp_path)
    index = read_dataset("kvasir_seg", root=tmp_path, boxes="masks")
    frame = next(f for f in index.frames if f.image_path.endswith("b.jpg"))
    _close(_boxes(frame), [ellipse_box(*e) for e in TWO])
    assert index.warnings == []
    (tmp_path / "kavsir_bboxes.json").unlink()
    with pytest.raises(DataError, match="kavsir_bboxes.json: missing"):
        read_dataset("kvasir_seg", root=tmp_path)


def test_polypgen_centres_groups_and_skips(tmp_path):
    polypgen_layout(tmp_path)
    index = read_dataset("polypgen", root=tmp_path)
    expected = {(c, stem): group for c, frames in POLYPGEN.items() for stem, _, _, group in frames if group}
    found = {(f.source.split("/")[1], f.image_path.rsplit("/", 1)[1][:-4]): f for f in index.frames}
    assert set(found) == set(expected)
    for (centre, stem), group in expected.items():
        frame = found[(centre, stem)]
        assert frame.source == f"polypgen/{centre}"
        assert frame.video == f"polypgen/{centre}/{group}"
        assert frame.image_size == (W, H)
    _close(_boxes(found[("C1", "102OLCV1_100H0007")]), [ellipse_box(*e) for e in TWO])
    _close(_boxes(found[("C1", "100H0050")]), [ellipse_box(*ONE[0])])    # the speck is not a polyp
    reasons = sorted(s.reason.split(":")[0] for s in index.skipped)
    assert reasons == ["empty mask", "no mask"]
    assert index.skip_counts() == {"empty mask": 1, "no mask": 1}
    # frame numbers are unique within each group (the detector dataset keys frames by them)
    keys = [(f.video, f.frame_index) for f in index.frames]
    assert len(keys) == len(set(keys))
    # a centre subset, a single centre folder, and empty masks as negatives
    only = read_dataset("polypgen", root=tmp_path, centres="C1,C4")
    assert {f.source for f in only.frames} == {"polypgen/C1", "polypgen/C4"}
    single = read_dataset("polypgen", root=tmp_path / "data_C4")
    assert len(single.frames) == 3
    with_empty = read_dataset("polypgen", root=tmp_path, centres=["C2"], empty_mask="negative")
    assert sum(1 for f in with_empty.frames if not f.boxes) == 1
    with pytest.raises(DataError, match="no data_C3 folder"):
        read_dataset("polypgen", root=tmp_path, centres=["C3"])


def test_clinicdb_tiff_layout_grouped_by_sequence(tmp_path):
    clinicdb_layout(tmp_path)
    index = read_dataset("polypgen", root=tmp_path)
    assert len(index.frames) == 10 and not index.skipped
    by_number = {int(f.image_path.rsplit("/", 1)[1][:-4]): f for f in index.frames}
    assert {f.source for f in index.frames} == {"cvc_clinicdb"}
    seqs = [by_number[n].video for n in range(1, 11)]
    assert seqs == ["cvc_clinicdb/seq1"] * 3 + ["cvc_clinicdb/seq2"] * 4 + ["cvc_clinicdb/seq3"] * 3
    assert [by_number[n].frame_index for n in range(1, 11)] == [0, 1, 2, 0, 1, 2, 3, 0, 1, 2]
    # TIFF masks are exact: boxes to the pixel
    _close(_boxes(by_number[9]), [ellipse_box(*e) for e in TWO], tol=0)


def test_image_folder(tmp_path):
    image_folder_layout(tmp_path)
    index = read_dataset("image_folder", root=tmp_path, name="etis")
    names = sorted(f.image_path.split("/images/")[1] for f in index.frames)
    assert names == ["case1/1.png", "case1/2.png", "solo.jpg"]
    assert {f.video for f in index.frames} == {"etis/case1", "etis/solo"}
    assert {f.source for f in index.frames} == {"etis"}
    two = next(f for f in index.frames if f.image_path.endswith("2.png"))
    _close(_boxes(two), [ellipse_box(*e) for e in TWO], tol=0)
    assert index.skip_counts() == {"no mask": 1, "empty mask": 1}
    negative = read_dataset("image_folder", root=tmp_path, empty_mask="negative")
    assert sum(1 for f in negative.frames if not f.boxes) == 1


def test_negatives(tmp_path):
    negatives_layout(tmp_path)
    index = read_dataset("negatives", root=tmp_path, name="neg")
    assert len(index.frames) == 4 and all(not f.boxes for f in index.frames)
    assert index.skip_counts() == {"unreadable image": 1}
    by_name = {f.image_path.rsplit("/", 1)[1]: f for f in index.frames}
    assert by_name["a.jpg"].source == "neg/nerthus" and by_name["a.jpg"].video == "neg/nerthus/class_0"
    assert by_name["c.jpg"].video == "neg/endoangel/DCNN1/q"
    assert by_name["top.png"].source == "neg"
    assert sorted((by_name[n].frame_index for n in ("a.jpg", "b.jpg"))) == [0, 1]


@pytest.mark.parametrize("kind", ["kvasir_seg", "polypgen", "image_folder", "negatives"])
def test_empty_data_set_is_one_error(tmp_path, kind):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    write(tmp_path / "images" / "x.jpg", texture(1))        # an image without a mask
    (tmp_path / "data_C1" / "images_C1").mkdir(parents=True)
    (tmp_path / "data_C1" / "masks_C1").mkdir()
    if kind == "kvasir_seg":
        (tmp_path / "kavsir_bboxes.json").write_text(json.dumps({}))
    if kind == "negatives":
        (tmp_path / "images" / "x.jpg").write_bytes(b"")
        (tmp_path / "masks" / "also-broken.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match="no usable|no readable") as err:
        read_dataset(kind, root=tmp_path)
    assert "\n" not in str(err.value)


def test_missing_root_and_unknown_option(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_dataset("polypgen", root=tmp_path / "nope")
    with pytest.raises(DataError, match="no images/ folder"):
        read_dataset("kvasir_seg", root=tmp_path)
    with pytest.raises(ConfigError, match="data kind 'negatives'"):
        read_dataset("negatives", root=tmp_path, colour="red")


def test_similarity_groups_consecutive_and_any_pair(tmp_path):
    paths = [write(tmp_path / f"{i}.png", texture(seed, shift))
             for i, (seed, shift) in enumerate([(1, 0), (2, 0), (1, 3), (1, 5)])]
    assert similarity_groups(paths, 0.5, consecutive=True) == [0, 1, 2, 2]
    assert similarity_groups(paths, 0.5) == [0, 1, 0, 0]


def test_grouped_folds_by_centre_and_patient(tmp_path):
    polypgen_layout(tmp_path)
    frames = read_dataset("polypgen", root=tmp_path).frames
    # leave one centre out: three folds, each validating exactly one centre
    folds = grouped_folds(frames, by="source")
    assert [groups for _, _, groups in folds] == [["polypgen/C1"], ["polypgen/C2"], ["polypgen/C4"]]
    for train, val, groups in folds:
        assert {f.source for f in val} == set(groups)
        assert not {f.source for f in train} & set(groups)
        assert len(train) + len(val) == len(frames)
    # patient/video folds: no group on both sides
    folds = grouped_folds(frames, by="video", k=3)
    seen = []
    for train, val, groups in folds:
        assert not {f.video for f in train} & {f.video for f in val}
        seen += groups
    assert sorted(seen) == sorted({f.video for f in frames})
    with pytest.raises(DataError, match="cannot make 20 folds"):
        grouped_folds(frames, by="video", k=20)
