"""Dataset readers on hand-written fixtures in the exact REAL-Colon, SUN and manifest layouts."""
import logging
import shutil
from pathlib import Path

import pytest

from trainer.data import (DatasetIndex, SampleRecord, parse_size_mm, read_dataset, read_manifest,
                          read_realcolon, read_sun)
from trainer.data.images import jpeg_size, read_image_rgb
from pipeline.errors import ConfigError, DataError


def _skips(index: DatasetIndex) -> dict[str, str]:
    return {Path(s.file).name + ("" if not s.reason.startswith("polyp without size") else
                                 ":" + s.reason.split()[3]): s.reason for s in index.skipped}


# ---------------------------------------------------------------- REAL-Colon
def test_realcolon_records_exact(fixtures_dir, caplog):
    root = fixtures_dir / "realcolon_mini"
    with caplog.at_level(logging.WARNING, logger="hagview.data"):
        index = read_realcolon(root)
    frames = {(f.video, f.frame_index): f for f in index.frames}
    assert sorted(frames) == [("001-001", 0), ("001-001", 1), ("001-001", 2), ("001-001", 5),
                              ("001-002", 0), ("001-002", 1), ("001-002", 4), ("001-002", 5),
                              ("001-002", 7)]
    assert frames["001-001", 0].boxes == () and frames["001-002", 7].boxes == ()   # negatives
    f2 = frames["001-001", 2]
    # VOC order xmin,xmax,ymin,ymax in the file -> (x1, y1, x2, y2) in memory
    assert [(b.box, b.polyp_id) for b in f2.boxes] == [((12, 10, 30, 30), "001-001_1"),
                                                       ((34, 20, 60, 44), "001-001_2")]
    assert f2.image_size == (64, 48)
    assert f2.image_path == str(root / "001-001_frames" / "001-001_2.jpg")
    # slightly outside (xmax 66 on a 64 px frame): clipped
    assert frames["001-001", 5].boxes[0].box == (50, 30, 64, 46)

    assert index.polyp_sizes == {"001-001_1": 4.0, "001-001_2": 12.0, "001-002_3": 7.0}
    assert sorted((s.polyp_id, s.frame_index) for s in index.samples) == [
        ("001-001_1", 1), ("001-001_1", 2), ("001-001_1", 5), ("001-001_2", 2), ("001-002_3", 4)]
    s = next(s for s in index.samples if s.polyp_id == "001-001_2")
    assert s == SampleRecord(str(root / "001-001_frames" / "001-001_2.jpg"), "001-001", 2,
                             (34.0, 20.0, 60.0, 44.0), "001-001_2", 12.0, (64, 48))

    skips = _skips(index)
    assert len(index.skipped) == 9
    assert "001-003" in skips["video_info.csv"]
    assert skips["001-001_3.xml"].startswith("missing field: bndbox/ymax")
    assert "outside the 64x48 image" in skips["001-001_4.xml"]
    assert skips["001-002_2.jpg"] == "unreadable JPEG: truncated JPEG (no end-of-image marker)"
    assert skips["001-002_3.xml"].startswith("XML does not parse")
    assert skips["001-002_6.jpg"] == "unreadable JPEG: image file is missing"
    assert "'<5'" in skips["lesion_info.csv:001-002_1"]
    assert "size is empty" in skips["lesion_info.csv:001-002_2"]
    assert "not listed" in skips["lesion_info.csv:001-002_4"]
    assert index.skip_counts()["unreadable JPEG"] == 2
    # one warning per skip, naming the file and the reason
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 9
    assert any("001-001_3.xml" in m and "bndbox/ymax" in m for m in warned)


def test_realcolon_without_negatives_and_unverified(fixtures_dir):
    index = read_realcolon(fixtures_dir / "realcolon_mini", negatives=False, verify_images=False)
    assert all(f.boxes for f in index.frames)
    # without verification the truncated and the missing image are not noticed at index time
    assert sorted((f.video, f.frame_index) for f in index.frames) == [
        ("001-001", 1), ("001-001", 2), ("001-001", 5), ("001-002", 0), ("001-002", 1),
        ("001-002", 2), ("001-002", 4), ("001-002", 5), ("001-002", 6)]
    assert len(index.samples) == 7


def test_realcolon_unusable_dataset_errors(tmp_path, fixtures_dir):
    with pytest.raises(DataError, match="does not exist"):
        read_realcolon(tmp_path / "nowhere")
    with pytest.raises(DataError, match="lesion_info.csv: missing"):
        read_realcolon(tmp_path)
    root = tmp_path / "rc"
    shutil.copytree(fixtures_dir / "realcolon_mini", root)
    (root / "lesion_info.csv").write_text("unique_object_id,unique_video_name,size [mm]\n"
                                          "001-001_1,001-001,<5\n")
    with pytest.raises(DataError, match="no usable samples"):
        read_realcolon(root)
    (root / "lesion_info.csv").write_text("id,size\n")
    with pytest.raises(DataError, match="no 'unique_object_id' column"):
        read_realcolon(root)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "lesion_info.csv").write_text("unique_object_id,size [mm]\n")
    with pytest.raises(DataError, match="no SSS-VVV_annotations folders"):
        read_realcolon(empty)


# ---------------------------------------------------------------- SUN
def test_sun_records_exact(fixtures_dir):
    root = fixtures_dir / "sun_mini"
    index = read_sun(root)        # finds case folders, annotation_txt/case*.txt and polyp_info.csv
    frames = {(f.video, f.frame_index): f for f in index.frames}
    pos1 = "sundatabase_positive_part1/case1"     # two releases' parts both have a case1
    neg1 = "sundatabase_negative_part1/case1"
    # frame_index: the frame's position in its case (image_001 is 0)
    assert sorted(frames) == sorted([(neg1, 0), (neg1, 1), (pos1, 0), (pos1, 1), (pos1, 4),
                                     ("case2", 0), ("case2", 2), ("case3", 0), ("case3", 1),
                                     ("case4", 0)])
    assert [b.box for b in frames[pos1, 1].boxes] == [(12, 10, 32, 30)]   # class 1 box dropped
    assert frames[pos1, 1].image_path.endswith("positive_part1/case1/image_002.jpg")
    assert frames["case2", 2].boxes == ()      # only a non-polyp box: negative
    assert frames[neg1, 0].boxes == ()
    assert frames["case4", 0].boxes[0].polyp_id == "case4"
    assert index.polyp_sizes == {"case1": 6.0, "case2": 18.0, "case4": 15.0}   # 15mm- = 15 or more
    assert sorted((s.polyp_id, s.video, s.frame_index) for s in index.samples) == [
        ("case1", pos1, 0), ("case1", pos1, 1), ("case2", "case2", 0), ("case4", "case4", 0)]
    reasons = sorted(s.reason for s in index.skipped)
    assert len(reasons) == 5
    assert any(r.startswith("missing field: case1.txt:3") for r in reasons)
    assert any(r.startswith("image missing: image_009.jpg") for r in reasons)
    assert any("outside the 64x48 image (image_004.jpg" in r for r in reasons)
    assert any(r == "unreadable JPEG: not a JPEG (no start-of-image marker)" for r in reasons)
    assert any(r.startswith("polyp without size: case3 (size '<5'") for r in reasons)
    # image_005 has no line in case1.txt: read as a negative, and said so
    assert [(Path(w.file).relative_to(root).as_posix(), w.reason) for w in index.warnings] == [
        (pos1, "frames without a box line: 1 of 5 frames of case1 (e.g. image_005.jpg) are read as negatives")]


def test_sun_explicit_files_and_markdown_table(tmp_path, fixtures_dir):
    root = fixtures_dir / "sun_mini"
    table = tmp_path / "sizes.md"
    table.write_text("| ID | Frames | Size |\n|----|----|----|\n| 1_1 | 150 | 6mm |\n"
                     "| 1_2 | 216 | 6mm |\n| 2 | 80 | 7mm |\n")
    index = read_sun(root, case_pattern="case[12]",
                     box_files=["sundatabase_positive_part1/annotation_txt/case*.txt"],
                     size_table=table, negatives=False)
    assert index.polyp_sizes == {"case1": 6.0, "case2": 7.0}
    assert len(index.samples) == 3
    assert all(f.boxes for f in index.frames)
    with pytest.raises(DataError, match="size table not found"):
        read_sun(root, size_table=tmp_path / "nope.csv")
    with pytest.raises(DataError, match="box file not found"):
        read_sun(root, box_files="nope/*.txt")
    with pytest.raises(DataError, match="no case folders matching 'patient\\*'"):
        read_sun(root, case_pattern="patient*")


def test_sun_no_size_table_is_a_clear_error(tmp_path, fixtures_dir):
    root = tmp_path / "sun"
    shutil.copytree(fixtures_dir / "sun_mini", root)
    (root / "polyp_info.csv").unlink()
    with pytest.raises(DataError, match="no size table"):
        read_sun(root)


# ---------------------------------------------------------------- manifest
def test_manifest_records_exact(fixtures_dir):
    csv_path = fixtures_dir / "manifest" / "manifest.csv"
    index = read_manifest(csv_path)
    frames = {Path(f.image_path).name: f for f in index.frames}
    assert sorted(frames) == ["a_0.jpg", "a_1.jpg", "a_2.jpg", "b_0.jpg", "b_3.jpg"]
    assert frames["a_1.jpg"].video == "vidA" and frames["a_1.jpg"].frame_index == 1
    assert [(b.box, b.polyp_id) for b in frames["a_1.jpg"].boxes] == [((12, 10, 32, 30), "p1"),
                                                                      ((34, 20, 60, 44), "p2")]
    assert frames["a_2.jpg"].boxes == ()
    assert frames["a_0.jpg"].image_path == str(csv_path.parent / "images" / "a_0.jpg")
    assert index.polyp_sizes == {"p1": 3.5, "p2": 11.0}
    assert sorted((Path(s.image_path).name, s.polyp_id) for s in index.samples) == [
        ("a_0.jpg", "p1"), ("a_1.jpg", "p1"), ("a_1.jpg", "p2")]
    reasons = [s.reason for s in index.skipped]
    assert len(reasons) == 4
    assert reasons[0].startswith("unusable size: line 6 polyp p3")
    assert reasons[1].startswith("missing field: line 7")
    assert reasons[2].startswith("size conflict: line 9 polyp p1")
    assert reasons[3] == "unreadable JPEG: truncated JPEG (no end-of-image marker)"


def test_manifest_missing_column(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("image,x1,y1,x2,y2,size_mm\nimages/a.jpg,1,2,3,4,5\n")
    with pytest.raises(DataError, match="missing column\\(s\\) polyp_id"):
        read_manifest(p)
    with pytest.raises(DataError, match="manifest CSV does not exist"):
        read_manifest(tmp_path / "none.csv")


def test_read_dataset_dispatch(fixtures_dir):
    a = read_dataset("manifest", root=fixtures_dir / "manifest" / "manifest.csv")
    b = read_dataset("realcolon", root=fixtures_dir / "realcolon_mini", negatives=False)
    assert len(a.samples) == 3 and len(b.samples) == 5
    with pytest.raises(ConfigError, match="data kind 'kvasir'"):
        read_dataset("kvasir", root="x")
    with pytest.raises(ConfigError, match="unexpected keyword"):
        read_dataset("sun", root=fixtures_dir / "sun_mini", colour="red")


# ---------------------------------------------------------------- small parts
@pytest.mark.parametrize("text,value", [("6", 6.0), ("6mm", 6.0), (" 6.5 mm", 6.5), ("6,5mm", 6.5),
                                        ("15mm-", 15.0), (">=15", 15.0), (12, 12.0)])
def test_parse_size_accepts(text, value):
    assert parse_size_mm(text) == value


@pytest.mark.parametrize("text,message", [("<5", "'<5'"), ("", "empty"), (None, "empty"),
                                          ("5-10", "'5-10'"), ("large", "'large'"), ("0", "positive")])
def test_parse_size_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        parse_size_mm(text)
    with pytest.raises(ValueError):
        parse_size_mm("15mm-", accept_lower_bound=False)


def test_jpeg_size_and_read(fixtures_dir):
    good = fixtures_dir / "realcolon_mini" / "001-001_frames" / "001-001_1.jpg"
    assert jpeg_size(good) == ((64, 48), "")
    image = read_image_rgb(good)
    assert image.shape == (48, 64, 3) and image.dtype.name == "uint8"
    # RGB order: the fixture's mucosa is red (BGR (40,60,170) when written)
    assert image[24, 50, 0] > image[24, 50, 2]
    assert read_image_rgb(fixtures_dir / "sun_mini" / "sundatabase_positive_part1" / "case2" / "image_002.jpg") is None
