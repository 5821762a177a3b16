"""REAL-Colon, SUN and SUN-SEG as they are released (issue 20), built in tmp_path from the official
descriptions: REAL-Colon video 001-012's `.0.jpg` frame names, SUN case folders holding several
recordings whose image numbers restart, the release's folder layout (box files of part2's cases in
part1's annotation_txt, a negative case named like a positive one), an archive unpacked one folder
deeper, the size web table exported to CSV with unquoted thousands separators and to TSV, and
SUN-SEG's tree with both of its box formats. Every test checks exact frame indices, order, box
counts and the frames a detector epoch draws, keyed by (video, frame index).
"""
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.errors import DataError
from pipeline.prep import DetectorInputSpec
from trainer.data import Skip, read_dataset, read_realcolon, read_sun
from trainer.data.detection import DetectionDataset
from trainer.data.realcolon import realcolon_frame_number
from trainer.data.sun import sun_frame_name
from trainer.data.sunseg import detect_box_format, read_sun_seg
from trainer.data.tables import join_split_thousands

W, H = 64, 48
SPEC = DetectorInputSpec(size=64)


def _jpeg(path: Path, w: int = W, h: int = H) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".jpg", np.full((h, w, 3), (40, 60, 170), np.uint8))
    assert ok
    path.write_bytes(data.tobytes())


def _epoch(frames, **kw) -> list[tuple[str, int]]:
    """The (video, frame index) of every frame a detector epoch draws, in its order."""
    ds = DetectionDataset(frames, SPEC, stride=4, sampling="uniform", **kw)
    return [(f.video, f.frame_index) for f in ds.frames]


def _reasons(index) -> list[str]:
    return sorted(s.reason for s in index.skipped)


# ---------------------------------------------------------------- REAL-Colon
def _voc(filename: str, boxes=()) -> str:
    objects = "".join(
        f"<object><name>lesion</name><unique_id>{pid}</unique_id><box_id>{n}</box_id><bndbox>"
        f"<xmin>{x1}</xmin><xmax>{x2}</xmax><ymin>{y1}</ymin><ymax>{y2}</ymax></bndbox></object>"
        for n, (pid, (x1, y1, x2, y2)) in enumerate(boxes, start=1))
    return (f"<annotation><folder>x</folder><filename>{filename}</filename><size><width>{W}</width>"
            f"<height>{H}</height><depth>3</depth></size>{objects}</annotation>")


def _realcolon(root: Path, video: str, frames: dict, *, xml_name, xml_says, disk) -> None:
    """frames: {t: boxes}; xml_name/xml_says/disk: t -> XML file name, its <filename>, the JPEG's
    name on disk (None: no JPEG)."""
    (root / f"{video}_annotations").mkdir(parents=True, exist_ok=True)
    for t, boxes in frames.items():
        (root / f"{video}_annotations" / xml_name(t)).write_text(_voc(xml_says(t), boxes))
        if disk(t) is not None:
            _jpeg(root / f"{video}_frames" / disk(t))
    lesions = root / "lesion_info.csv"
    if not lesions.exists():
        lesions.write_text("unique_object_id,unique_video_name,size [mm],site,histology_extended,"
                           "histology_class\n")
    with open(lesions, "a") as f:
        f.write(f"{video}_1,{video},7,ascending,tubular adenoma,AD\n")


def test_realcolon_frame_number_reads_like_the_official_scripts():
    assert realcolon_frame_number("001-012_9.0.jpg") == 9          # trailing digits would say 0
    assert realcolon_frame_number("001-012_10.0.xml") == 10
    assert realcolon_frame_number("002-001_18185.jpg") == 18185
    assert realcolon_frame_number("002-001_x.jpg") is None


# 001-012: frames 8..11 plus 12 (XML only); boxes on 9, 10 (10 touches the right edge: x2 = W).
FRAMES_012 = {8: (), 9: (("001-012_1", (10, 8, 30, 28)),), 10: (("001-012_1", (40, 20, W, 44)),),
              11: (), 12: ()}


@pytest.mark.parametrize("variant", ["xml says .jpg, disk .0.jpg", "xml says .0.jpg, disk .0.jpg",
                                     "xml says .0.jpg, disk .jpg"])
def test_realcolon_001_012_frame_names(tmp_path, variant):
    v = "001-012"
    if variant == "xml says .jpg, disk .0.jpg":
        names = dict(xml_name=lambda t: f"{v}_{t}.xml", xml_says=lambda t: f"{v}_{t}.jpg",
                     disk=lambda t: None if t == 12 else f"{v}_{t}.0.jpg")
        on_disk = ".0.jpg"
    elif variant == "xml says .0.jpg, disk .0.jpg":
        names = dict(xml_name=lambda t: f"{v}_{t}.0.xml", xml_says=lambda t: f"{v}_{t}.0.jpg",
                     disk=lambda t: None if t == 12 else f"{v}_{t}.0.jpg")
        on_disk = ".0.jpg"
    else:
        names = dict(xml_name=lambda t: f"{v}_{t}.xml", xml_says=lambda t: f"{v}_{t}.0.jpg",
                     disk=lambda t: None if t == 12 else f"{v}_{t}.jpg")
        on_disk = ".jpg"
    _realcolon(tmp_path, v, FRAMES_012, **names)
    index = read_realcolon(tmp_path)

    assert [(f.video, f.frame_index) for f in index.frames] == [(v, 8), (v, 9), (v, 10), (v, 11)]
    assert [Path(f.image_path).name for f in index.frames] == [f"{v}_{t}{on_disk}" for t in (8, 9, 10, 11)]
    assert all(Path(f.image_path).is_file() for f in index.frames)
    assert [len(f.boxes) for f in index.frames] == [0, 1, 1, 0]
    # the box touching the right edge keeps x2 = W (continuous edges, not the COCO export's W-1)
    assert index.frames[2].boxes[0].box == (40, 20, W, 44)
    assert [(s.frame_index, s.polyp_id, s.size_mm) for s in index.samples] == [(9, "001-012_1", 7.0),
                                                                             (10, "001-012_1", 7.0)]
    # frame 12 has an XML but no JPEG: reported, not indexed as a negative pointing nowhere
    assert [(Path(s.file).name, s.reason) for s in index.skipped] == [
        (f"{v}_12{'.0.jpg' if 'says .0' in variant else '.jpg'}", "unreadable JPEG: image file is missing")]
    # names that differ from the XML's are said so, once per video
    if variant == "xml says .0.jpg, disk .0.jpg":
        assert index.warnings == []
    else:
        xml_says = "jpg" if variant == "xml says .jpg, disk .0.jpg" else "0.jpg"
        found = "0.jpg" if xml_says == "jpg" else "jpg"
        assert index.warnings == [Skip(str(tmp_path / f"{v}_frames"), (
            f"renamed frames: 4 frame file(s) of {v} found by frame number under another name than "
            f"their XML gives (e.g. {v}_8.{found} for {v}_8.{xml_says})"))]

    assert _epoch(index.frames, negative_fraction=0.5) == [(v, 8), (v, 9), (v, 10), (v, 11)]
    assert _epoch(index.frames, positives_per_polyp=1, negative_fraction=0.5) == [(v, 10), (v, 11)]


def test_realcolon_duplicate_frame_numbers_are_reported(tmp_path, caplog):
    v = "001-001"
    _realcolon(tmp_path, v, {4: (("001-001_1", (10, 8, 30, 28)),), 5: (), 6: ()},
               xml_name=lambda t: f"{v}_{t}.xml", xml_says=lambda t: f"{v}_{t}.jpg", disk=lambda t: f"{v}_{t}.jpg")
    # a second XML (and image) for frames 5 and 6, written `_<t>.0`
    _realcolon(tmp_path, v, {5: (("001-001_1", (12, 10, 32, 30)),), 6: ()},
               xml_name=lambda t: f"{v}_{t}.0.xml", xml_says=lambda t: f"{v}_{t}.0.jpg",
               disk=lambda t: f"{v}_{t}.0.jpg")
    with caplog.at_level(logging.WARNING, logger="hagview.data"):
        index = read_realcolon(tmp_path)
    assert [(f.frame_index, Path(f.image_path).name, len(f.boxes)) for f in index.frames] == [
        (4, f"{v}_4.jpg", 1), (5, f"{v}_5.0.jpg", 1), (6, f"{v}_6.0.jpg", 0)]
    assert [(Path(s.file).name, s.reason) for s in index.skipped] == [
        (f"{v}_5.jpg", f"duplicate frame index: frame 5 of {v} is also {v}_5.0.jpg (kept)"),
        (f"{v}_6.jpg", f"duplicate frame index: frame 6 of {v} is also {v}_6.0.jpg (kept)")]
    assert index.skip_counts()["duplicate frame index"] == 2
    assert any(f"{v}: 2 frame(s) share a frame number" in r.getMessage() for r in caplog.records)
    assert _epoch(index.frames, negative_fraction=0.25) == [(v, 4), (v, 5), (v, 6)]


# ---------------------------------------------------------------- SUN (release layout)
DATE = "case_M_20181001100941_0U62372100109341_1_005"
A2 = f"{DATE}_001-1_a2_ayy"          # sequence 001, recording a2
A10 = f"{DATE}_001-1_a10_ayy"        # sequence 001, recording a10 (after a2, before it by name)
S2A1 = f"{DATE}_002-1_a1_ayy"        # sequence 002: after every recording of 001
NEG = "case_M_20181112091255_0U62368112098555_1_001_001-1_Negative_ayy"
NEG2 = "case_M_20181112091255_0U62368112098555_1_001_001-1_Negative_2_ayy"

# case1 (positive, part1): numbers restart in every recording; listed here in the SUN-SEG order
CASE1 = [(A2, 1), (A2, 2), (A2, 3), (A10, 1), (A10, 2), (S2A1, 1)]
CASE1_BOXES = {(A2, 1): "10,8,30,28,0", (A2, 2): "11,8,31,28,0", (A2, 3): "12,8,32,28,0 40,5,60,20,0",
               (A10, 1): "10,10,30,30,0", (A10, 2): "10,10,30,30,0 40,5,60,20,1", (S2A1, 1): "5,5,25,25,0"}
CASE3 = [(f"{DATE}_001-1_a1_ayy", 1), (f"{DATE}_001-1_a1_ayy", 2)]
NEG_CASE1 = [(NEG, 1), (NEG, 2), (NEG, 3), (NEG2, 1), (NEG2, 2)]

SIZES_CSV = ("ID,Number of frames,Shape,Size,Location,Pathological diagnosis\n"
             "1,1,313,Is,6mm,C,Low-grade adenoma\n"         # 1,313 frames: the naive export's extra cell
             "2,980,Is,18mm,R,High-grade adenoma\n"
             "3,2,101,Ip,15mm-,S,Low-grade adenoma\n"
             "4,1,31,Is,4mm,S,Low-grade adenoma\n")         # 1,31 is no thousands separator: misaligned
SIZES_TSV = ("ID\tNumber of frames\tShape\tSize\tLocation\tPathological diagnosis\n"
             "1\t1,313\tIs\t6mm\tC\tLow-grade adenoma\n"
             "2\t980\tIs\t18mm\tR\tHigh-grade adenoma\n"
             "3\t2,101\tIp\t15mm-\tS\tLow-grade adenoma\n")


def _name(clip: str, n: int, digits: int = 4) -> str:
    return f"{clip}_image{n:0{digits}d}.jpg"


def _sun_release(base: Path, sizes: str = SIZES_CSV, table: str = "sun_sizes.csv") -> None:
    """The release's layout: positive part1 (case1, case2 and every case's box file), positive
    part2 (case3), negative part1 (case1 again, frames restarting per recording)."""
    p1, p2, n1 = base / "sundatabase_positive_part1", base / "sundatabase_positive_part2", base / "sundatabase_negative_part1"
    for clip, n in CASE1:
        _jpeg(p1 / "case1" / _name(clip, n))
    _jpeg(p1 / "case2" / _name(A2, 1))
    _jpeg(p1 / "case2" / _name(A2, 2))
    for clip, n in CASE3:
        _jpeg(p2 / "case3" / _name(clip, n))
    for clip, n in NEG_CASE1:
        _jpeg(n1 / "case1" / _name(clip, n, digits=6))
    ann = p1 / "annotation_txt"
    ann.mkdir()
    (ann / "case1.txt").write_text("".join(f"{_name(c, n)} {CASE1_BOXES[c, n]}\n" for c, n in CASE1))
    (ann / "case2.txt").write_text(f"{_name(A2, 1)} 20,10,44,40,0\n{_name(A2, 2)} 20,10,44,40,0\n")
    (ann / "case3.txt").write_text("".join(f"{_name(c, n)} 30,20,50,40,0\n" for c, n in CASE3))
    (base / table).write_text(sizes)


def _check_release(index, prefix: str = "") -> None:
    pos1, neg1 = f"{prefix}sundatabase_positive_part1/case1", f"{prefix}sundatabase_negative_part1/case1"
    frames = [(f.video, f.frame_index, Path(f.image_path).name, len(f.boxes), f.clip) for f in index.frames]
    # case folders in path order, each case's frames in SUN-SEG order
    assert frames == (
        [(neg1, i, _name(c, n, 6), 0, c) for i, (c, n) in enumerate(NEG_CASE1)]
        + [(pos1, i, _name(c, n), b, c) for i, ((c, n), b) in enumerate(zip(CASE1, [1, 1, 2, 1, 1, 1]))]
        + [("case2", 0, _name(A2, 1), 1, A2), ("case2", 1, _name(A2, 2), 1, A2)]
        + [("case3", i, _name(c, n), 1, c) for i, (c, n) in enumerate(CASE3)])
    assert index.polyp_sizes == {"case1": 6.0, "case2": 18.0, "case3": 15.0}
    assert sorted((s.video, s.frame_index, s.polyp_id) for s in index.samples) == sorted(
        [("case2", 0, "case2"), ("case2", 1, "case2"), ("case3", 0, "case3"), ("case3", 1, "case3")]
        + [(pos1, i, "case1") for i, k in enumerate([1, 1, 2, 1, 1, 1]) for _ in range(k)])
    # every frame of every case in one epoch: nothing collapses onto a shared (video, index)
    keys = [(f.video, f.frame_index) for f in index.frames]
    assert _epoch(index.frames, negative_fraction=0.45) == sorted(keys)
    # three positives of case1, evenly spaced over its six frames in SUN-SEG order
    case1 = [f for f in index.frames if f.video == pos1]
    assert _epoch(case1, positives_per_polyp=3, negative_fraction=0.0) == [(pos1, 1), (pos1, 3), (pos1, 5)]


def test_sun_frame_names_order_like_sun_seg():
    names = [_name(c, n) for c, n in CASE1]
    shuffled = [names[i] for i in (5, 3, 0, 4, 2, 1)]
    assert sorted(shuffled, key=lambda n: sun_frame_name(n).order) == names
    assert sorted(shuffled) != names                      # plain name order puts a10 before a2
    parsed = sun_frame_name(_name(A10, 2))
    assert (parsed.clip, parsed.number) == (A10, 2)
    negs = [_name(c, n, 6) for c, n in NEG_CASE1]
    assert sorted(reversed(negs), key=lambda n: sun_frame_name(n).order) == negs
    assert sun_frame_name("image_007.jpg")[:2] == ("", 7)   # the paper code's renamed copies


def test_sun_release_layout(tmp_path):
    _sun_release(tmp_path)
    index = read_sun(tmp_path)
    _check_release(index)
    assert _reasons(index) == [
        "misaligned row: row 5 has 7 cells for 6 columns (4, 1, 31, Is, 4mm, S, Low-grade adenoma); "
        "an unquoted comma inside a cell? size not read"]
    assert index.warnings == [Skip(str(tmp_path / "sun_sizes.csv"), (
        "split thousands: 2 row(s) had a frame count split at its unquoted thousands separator "
        "(line 2, 4); read with the count joined"))]


def test_sun_size_table_as_tsv(tmp_path):
    _sun_release(tmp_path, SIZES_TSV, "sun_sizes.tsv")
    index = read_sun(tmp_path)
    _check_release(index)
    assert index.skipped == [] and index.warnings == []


def test_sun_archive_unpacked_one_folder_deeper(tmp_path):
    _sun_release(tmp_path / "SUN")
    # a wrapper folder named like a case (case1/case1/...) is not taken for an empty case
    _jpeg(tmp_path / "SUN" / "sundatabase_positive_part1" / "case9" / "case9" / _name(A2, 1))
    index = read_sun(tmp_path, case_pattern="case[123]")
    _check_release(index, prefix="SUN/")


def test_sun_nothing_found_names_the_root(tmp_path):
    deep = tmp_path / "a" / "b" / "c" / "d" / "e"
    _sun_release(deep)
    with pytest.raises(DataError, match=f"^{tmp_path}: no case folders matching 'case\\*' with images "
                                        f"within 5 folder levels below it"):
        read_sun(tmp_path)
    empty = tmp_path / "empty"
    (empty / "case1").mkdir(parents=True)
    with pytest.raises(DataError, match=f"^{empty}: no case folders"):
        read_sun(empty)


def test_sun_empty_case_folder_is_reported(tmp_path):
    _sun_release(tmp_path, SIZES_TSV, "sun_sizes.tsv")
    (tmp_path / "sundatabase_positive_part2" / "case4").mkdir()
    index = read_sun(tmp_path)
    assert [(Path(s.file).name, s.reason) for s in index.skipped] == [
        ("case4", "empty case folder: case4 holds no .jpg/.png images")]


def test_join_split_thousands():
    rows = [["ID", "Number of frames", "Size"], ["1", "1", "313", "6mm"], ["2", "980", "18mm"],
            ["3", "12", "345", "7mm", ""], ["4", "1", "31", "4mm"]]
    out, joined = join_split_thousands(rows, [1])
    assert out == [["ID", "Number of frames", "Size"], ["1", "1313", "6mm"], ["2", "980", "18mm"],
                   ["3", "12345", "7mm"], ["4", "1", "31", "4mm"]]
    assert joined == [2, 4]


# ---------------------------------------------------------------- SUN-SEG
def _coco(images: list[tuple[str, str, list]], case_key: str = "annotation") -> str:
    import json
    return json.dumps({
        "info": {"year": 2021, "version": "v1.0"},
        "images": [{"id": f"{case}-{name}", "width": W, "height": H, "case_name": case, "file_name": name}
                   for case, name, _ in images],
        case_key: [{"id": f"{case}-{name}", "bbox": b} for case, name, boxes in images for b in boxes]})


def _sun_seg(root: Path) -> None:
    """TrainDataset (boxes [x, y, w, h], clips case1_1 and case1_2) and TestEasyDataset/Seen
    (boxes [x1, y1, x2, y2], clip case2_1), plus SUN-SEG's own case table as Markdown."""
    train = root / "SUN-SEG" / "TrainDataset"
    c11 = [(A2, 1), (A2, 2)]
    c12 = [(A10, 1), (A10, 2), (A10, 3)]          # A10 image 3 is not in the JSON
    for clip_dir, frames in (("case1_1", c11), ("case1_2", c12)):
        for c, n in frames:
            _jpeg(train / "Frame" / clip_dir / _name(c, n))
    xywh = [("case1_1", _name(A2, 9)[:-4], [[30, 20, 12, 10]]),             # no such image on disk
            ("case1_1", _name(A2, 1)[:-4], [[30, 20, 12, 10]]),             # w < x: not corners
            ("case1_1", _name(A2, 2)[:-4], [[50, 30, 14, 18]]),             # reaches the right edge
            ("case1_2", _name(A10, 1)[:-4], [[30, 20, 12, 10], [5, 5, 9, 9]]),   # 2nd fits both
            ("case1_2", _name(A10, 2)[:-4], [])]                            # no polyp visible
    (train / "Detection").mkdir(parents=True)
    (train / "Detection" / "bbox_annotation.json").write_text(_coco(xywh))
    seen = root / "SUN-SEG" / "TestEasyDataset" / "Seen"
    for n in (1, 2):
        _jpeg(seen / "Frame" / "case2_1" / _name(S2A1, n))
    xyxy = [("case2_1", _name(S2A1, 1)[:-4], [[5, 6, 62, 40]]),               # x + w past the image
            ("case2_1", _name(S2A1, 2)[:-4], [[6, 6, 60, 40]])]
    (seen / "Detection").mkdir(parents=True)
    (seen / "Detection" / "bbox_annotation.json").write_text(_coco(xyxy, "annotations"))
    (root / "INFO_POSITIVE_CASES.md").write_text(
        "| ID | Frames | Duration (s) | Shape | Size | Location | Pathological diagnosis |\n"
        "|---|---|---|---|---|---|---|\n| 1_1 | 150 | 5.00 | Is | 6mm | C | Low-grade adenoma |\n"
        "| 1_2 | 216 | 7.20 | Is | 6mm | C | Low-grade adenoma |\n"
        "| 2_1 | 150 | 5.00 | Is | 18mm | R | High-grade adenoma |\n")


def test_sun_seg_tree_with_both_box_formats(tmp_path):
    _sun_seg(tmp_path)
    index = read_sun_seg(tmp_path)
    frames = [(f.video, f.frame_index, Path(f.image_path).parent.name, f.clip, [b.box for b in f.boxes])
              for f in index.frames]
    assert frames == [
        ("case1", 0, "case1_1", A2, [(30, 20, 42, 30)]),
        ("case1", 1, "case1_1", A2, [(50, 30, 64, 48)]),              # x + w = W stays W
        ("case1", 2, "case1_2", A10, [(30, 20, 42, 30), (5, 5, 14, 14)]),
        ("case1", 3, "case1_2", A10, []),
        ("case2", 0, "case2_1", S2A1, [(5, 6, 62, 40)]),
        ("case2", 1, "case2_1", S2A1, [(6, 6, 60, 40)])]
    assert index.polyp_sizes == {"case1": 6.0, "case2": 18.0}
    assert len(index.samples) == 6 and {s.polyp_id for s in index.samples} == {"case1", "case2"}
    train_json = tmp_path / "SUN-SEG/TrainDataset/Detection/bbox_annotation.json"
    seen_json = tmp_path / "SUN-SEG/TestEasyDataset/Seen/Detection/bbox_annotation.json"
    assert [(Path(s.file).name, s.reason) for s in index.skipped] == [
        ("bbox_annotation.json", f"image missing: {_name(A2, 9)} (case1_1) is not on disk"),
        (_name(A10, 3), f"no box entry: {_name(A10, 3)[:-4]} is not in {train_json}")]
    # the format each file uses is detected and said
    assert index.warnings == [
        Skip(str(seen_json), "boxes read as [x1, y1, x2, y2]: 2 of 2 reach past the image as [x, y, w, h]"),
        Skip(str(train_json), "boxes read as [x, y, w, h]: 4 of 5 have x2 <= x1 or y2 <= y1 as [x1, y1, x2, y2]")]

    assert _epoch(index.frames, negative_fraction=0.2) == [
        ("case1", 0), ("case1", 1), ("case1", 2), ("case1", 3), ("case2", 0), ("case2", 1)]
    assert _epoch(index.frames, positives_per_polyp=1, negative_fraction=0.0) == [("case1", 1), ("case2", 1)]
    same = read_dataset("sun_seg", root=tmp_path, negatives=False)
    assert [(f.video, f.frame_index) for f in same.frames] == [
        ("case1", 0), ("case1", 1), ("case1", 2), ("case2", 0), ("case2", 1)]


def test_sun_seg_box_format_undecidable(tmp_path):
    _sun_seg(tmp_path)
    path = tmp_path / "SUN-SEG/TestEasyDataset/Seen/Detection/bbox_annotation.json"
    path.write_text(_coco([("case2_1", _name(S2A1, 1)[:-4], [[5, 6, 20, 30]])]))   # fits both
    with pytest.raises(DataError, match="fits both .* pass box_format='xyxy' or 'xywh'"):
        read_sun_seg(tmp_path)
    index = read_sun_seg(tmp_path, box_format="xywh")
    assert [b.box for f in index.frames if f.video == "case2" for b in f.boxes] == [(5, 6, 25, 36)]
    # the second frame of case2_1 is now missing from the JSON
    assert index.skip_counts()["no box entry"] == 2
    with pytest.raises(ValueError, match="fit neither format: 1 of 2 cannot be"):
        detect_box_format([([30, 20, 12, 10], (W, H)), ([5, 6, 62, 40], (W, H))])
