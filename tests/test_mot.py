"""MOTChallenge files, the synthetic ground-truth JSON, and metrics on hand-made cases."""
import json

import pytest

from pipeline.mot import (MotBox, evaluate_mot, format_mot, read_boxes, read_ground_truth_json, read_mot,
                          tracks_to_mot, write_mot)
from pipeline.tracker import Track
from pipeline.errors import DataError


def walk(object_id, n, x0=10.0, step=5.0, y=20.0, size=30.0, first=0):
    return {first + i: [MotBox(object_id, (x0 + step * i, y, x0 + step * i + size, y + size))] for i in range(n)}


def merge(*parts):
    out = {}
    for p in parts:
        for k, v in p.items():
            out.setdefault(k, []).extend(v)
    return out


def test_write_read_round_trip(tmp_path):
    frames = merge(walk(1, 3), walk(2, 2, x0=200.0, first=1))
    frames[1] = [MotBox(2, (200.0, 20.0, 230.5, 50.25), 0.875), MotBox(1, (15.0, 20.0, 45.0, 50.0), 0.5)]
    path = tmp_path / "out" / "tracks.txt"
    write_mot(path, frames)
    lines = path.read_text().splitlines()
    assert lines[0] == "1,1,10.00,20.00,30.00,30.00,1.0000,-1,-1,-1"     # frames counted from 1
    assert lines[1].startswith("2,1,") and lines[2] == "2,2,200.00,20.00,30.50,30.25,0.8750,-1,-1,-1"
    assert len(lines) == 5
    back = read_mot(path)
    assert sorted(back) == [0, 1, 2]
    for k in frames:
        want = sorted(frames[k], key=lambda m: m.object_id)
        got = back[k]
        assert [m.object_id for m in got] == [m.object_id for m in want]
        for g, w in zip(got, want):
            assert g.box == pytest.approx(w.box, abs=0.005) and g.score == pytest.approx(w.score, abs=1e-4)
    assert not list(path.parent.glob(".*tmp*"))       # written atomically, no leftovers


def test_read_mot_accepts_space_separated_and_gt_style_rows(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_text("# comment\n1 3 10 20 30 40 1 -1 -1 -1\n\n2,3,12,20,30,40,1,-1,-1,-1\n")
    back = read_mot(path)
    assert back[0][0] == MotBox(3, (10.0, 20.0, 40.0, 60.0), 1.0) and back[1][0].box[0] == 12.0


@pytest.mark.parametrize("text, words", [
    ("1,1,10,20,30\n", "tracks.txt:1: expected at least 6 comma-separated values"),
    ("1,1,10,20,30,40\n0,1,10,20,30,40\n", "tracks.txt:2: frame must be an integer >= 1"),
    ("1,1,10,x,30,40\n", "tracks.txt:1: non-numeric value"),
    ("1,1,10,20,0,40\n", "tracks.txt:1: box width and height must be > 0"),
    ("1,1,10,20,5,5\n1,1,10,20,5,5\n", "tracks.txt:2: id 1 appears twice in frame 1"),
])
def test_malformed_mot_names_file_and_line(tmp_path, text, words):
    path = tmp_path / "tracks.txt"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        read_mot(path)
    assert words in str(err.value)


def test_missing_mot_file(tmp_path):
    with pytest.raises(DataError, match="nope.txt: cannot read MOT file"):
        read_mot(tmp_path / "nope.txt")


def gt_json(tmp_path, frames=None):
    data = {"video": "001-001", "fps": 30.0, "width": 320, "height": 240, "num_frames": 3, "synthetic": True,
            "polyps": [{"id": 1, "unique_id": "001-001_1", "diameter_mm": 6.5, "shape": "sessile", "colour": "red"}],
            "frames": frames if frames is not None else [
                {"index": 0, "time": 0.0, "polyps": [{"id": 1, "box": [10, 20, 40, 50], "diameter_mm": 6.5,
                                                      "distance_mm": 30.0, "visible_fraction": 1.0}]},
                {"index": 1, "time": 1 / 30, "polyps": []},
                {"index": 2, "time": 2 / 30, "polyps": [{"id": 1, "box": [12, 20, 42, 50], "diameter_mm": 6.5,
                                                         "distance_mm": 31.0, "visible_fraction": 0.6}]}]}
    path = tmp_path / "001-001.gt.json"
    path.write_text(json.dumps(data))
    return path


def test_read_ground_truth_json(tmp_path):
    gt = read_ground_truth_json(gt_json(tmp_path))
    assert (gt.video, gt.fps, gt.width, gt.height, gt.num_frames, gt.synthetic) == ("001-001", 30.0, 320, 240, 3, True)
    assert gt.diameters_mm == {1: 6.5}
    assert gt.frames[1] == [] and gt.frames[2][0].visible_fraction == 0.6 and gt.frames[2][0].box == (12, 20, 42, 50)
    boxes = read_boxes(gt_json(tmp_path))
    assert boxes[0] == [MotBox(1, (10.0, 20.0, 40.0, 50.0), 1.0)]


def test_malformed_ground_truth_json(tmp_path):
    bad = tmp_path / "bad.gt.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.gt.json: not valid JSON"):
        read_ground_truth_json(bad)
    path = gt_json(tmp_path, frames=[{"index": 0, "polyps": [{"id": 1}]}])
    with pytest.raises(DataError, match=r"001-001.gt.json: missing key 'box' in frames\[0\].polyps\[\]"):
        read_ground_truth_json(path)
    path = gt_json(tmp_path, frames=[{"index": 0, "polyps": [{"id": 1, "box": [10, 20, 5, 50]}]}])
    with pytest.raises(DataError, match=r"frames\[0\] has an invalid box"):
        read_ground_truth_json(path)


def test_perfect_tracks_score_one():
    gt = merge(walk(1, 20), walk(2, 20, x0=150.0, step=-3.0, y=100.0))
    hyp = {k: [MotBox(m.object_id + 10, m.box) for m in v] for k, v in gt.items()}   # ids need not agree
    m = evaluate_mot(gt, hyp)
    assert m["mota"] == 1.0 and m["idf1"] == 1.0 and m["id_switches"] == 0
    assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["gt_ids"] == 2 and m["frames"] == 20
    assert m["motp"] == pytest.approx(0.0, abs=1e-9)


def test_one_id_swap_gives_one_switch_and_half_idf1():
    gt = walk(1, 10)
    hyp = {k: [MotBox(5 if k < 5 else 7, v[0].box)] for k, v in gt.items()}
    m = evaluate_mot(gt, hyp)
    assert m["id_switches"] == 1
    assert m["mota"] == pytest.approx(0.9)           # 1 - 1 switch / 10 boxes
    assert m["idf1"] == pytest.approx(0.5)           # best id covers 5 of 10 frames on both sides


def test_misses_false_positives_and_iou_threshold():
    gt = walk(1, 10)
    hyp = {k: [MotBox(1, v[0].box)] for k, v in gt.items() if k >= 2}     # 2 misses
    hyp[3] = hyp[3] + [MotBox(9, (250.0, 200.0, 280.0, 230.0))]          # 1 false positive
    m = evaluate_mot(gt, hyp)
    assert (m["misses"], m["false_positives"], m["id_switches"]) == (2, 1, 0)
    assert m["recall"] == pytest.approx(0.8) and m["precision"] == pytest.approx(8 / 9)
    assert m["mota"] == pytest.approx(1 - 3 / 10)
    # a box shifted by a third of its width: IoU 0.5, matches at 0.5 but not at 0.6
    shifted = {k: [MotBox(1, (v[0].box[0] + 10, v[0].box[1], v[0].box[2] + 10, v[0].box[3]))] for k, v in gt.items()}
    assert evaluate_mot(gt, shifted, iou_threshold=0.5)["recall"] == 1.0
    assert evaluate_mot(gt, shifted, iou_threshold=0.6)["recall"] == 0.0
    assert evaluate_mot({}, {})["mota"] is None
    with pytest.raises(ValueError, match="iou_threshold"):
        evaluate_mot(gt, hyp, iou_threshold=0)


def test_tracks_to_mot_keeps_confirmed_tracks_seen_now():
    def track(i, confirmed, missed):
        return Track(id=i, box=(1.0, 2.0, 3.0, 4.0), score=0.7, confirmed=confirmed, hits=3, missed=missed, age=3,
                     first_frame_index=0, last_frame_index=2, first_seen_time=0.0, last_seen_time=0.1,
                     velocity=(0.0, 0.0), detection_index=0 if missed == 0 else None)
    rows = tracks_to_mot([track(1, True, 0), track(-1, False, 0), track(2, True, 3)])
    assert rows == [MotBox(1, (1.0, 2.0, 3.0, 4.0), 0.7)]
    assert format_mot({4: rows}) == "5,1,1.00,2.00,2.00,2.00,0.7000,-1,-1,-1\n"
