"""hagview-annotate end to end on tiny real videos: outputs, frame counts, timestamps, options."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from _pipeline_media import decode_images, decode_times, tiny_detector_bundle, tiny_sizer_bundle, write_clip
from pipeline.annotate import main as annotate
from pipeline.config import load_run_config, run_config_to_dict
from pipeline.mot import read_mot
from pipeline.overlay import CLASS_COLOURS
from pipeline.smoothing import SIZE_CLAIMS
from pipeline.cli_util import EXIT_FAILURE, EXIT_OK, EXIT_USAGE


@pytest.fixture(scope="module")
def sizer(tmp_path_factory):
    return tiny_sizer_bundle(tmp_path_factory)


@pytest.fixture
def clip(tmp_path):
    path = tmp_path / "case1.mp4"
    gt = write_clip(path, n=30, width=96, height=64, fps=10.0, visible_until=24)
    return path, gt


def test_full_annotation_with_given_boxes(tmp_path, clip, sizer):
    path, gt = clip
    out = tmp_path / "out"
    code = annotate([str(path), "--out", str(out), "--boxes", str(path.with_name("case1.gt.json")),
                     "--sizer", str(sizer), "--render", "--mot", "--quiet", "--set", "output.overlay_line_width=4"])
    assert code == EXIT_OK
    d = out / "case1"
    assert sorted(p.name for p in d.iterdir()) == ["accuracy.json", "annotated.mp4", "frames.jsonl", "mot.txt",
                                                   "polyps.json", "report.html", "run.json", "thumbs"]
    input_times = decode_times(path)
    rows = [json.loads(line) for line in (d / "frames.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(30))
    assert [r["time"] for r in rows] == pytest.approx(input_times, abs=1e-6)
    # The tracker confirms after min_hits=3 frames and coasts after the polyp leaves at frame 24.
    seen = [r for r in rows if any(t["missed"] == 0 for t in r["tracks"])]
    assert [r["index"] for r in seen] == list(range(2, 24))
    track = seen[-1]["tracks"][0]
    assert track["id"] == 1 and track["box"] == gt["frames"][23]["polyps"][0]["box"]
    assert track["size_mm"] > 0 and track["low_mm"] <= track["smoothed_mm"] <= track["high_mm"]
    # the class names the interval ("small or large" while it straddles 10 mm): tests/test_labels.py
    assert track["class"] in SIZE_CLAIMS.values() and 0 < track["quality"] <= 1

    polyps = json.loads((d / "polyps.json").read_text())["polyps"]
    assert len(polyps) == 1
    p = polyps[0]
    assert (p["id"], p["first_frame"], p["last_frame"], p["frames"]) == (1, 2, 23, 22)
    assert p["first_time"] == pytest.approx(0.2) and p["last_time"] == pytest.approx(2.3)
    assert p["size_mm"] == pytest.approx(track["smoothed_mm"], abs=1e-3) and p["frames_sized"] == 22
    assert (d / p["thumbnail"]).is_file()

    html = (d / "report.html").read_text()
    assert "<svg" in html and p["thumbnail"] in html and "SYNTHETIC-TRAINED MODEL" in html
    # the given boxes are the clip's ground truth: what clinicians read, against it (6 mm polyp)
    accuracy = json.loads((d / "accuracy.json").read_text())
    assert accuracy["per_frame"]["count"] == 22 and accuracy["per_polyp"]["count"] == 1
    assert accuracy["per_polyp"]["mae_mm"] == pytest.approx(abs(p["size_mm"] - 6.0), abs=1e-3)
    assert accuracy["per_polyp"]["ba_bias_mm"] == pytest.approx(p["size_mm"] - 6.0, abs=1e-3)
    first = accuracy["time_to_first_size"]
    assert first["polyps"] == 1 and first["never_sized_rate"] == 0
    assert first["median_s"] == pytest.approx(0.2 - 0.1 * next(i for i, f in enumerate(gt["frames"]) if f["polyps"]))
    assert "Size accuracy against ground truth" in html and "Bland-Altman, per frame" in html

    # Same frame count and timestamps as the input, with the overlay burnt in.
    assert decode_times(d / "annotated.mp4") == pytest.approx(input_times, abs=1e-6)
    frames = decode_images(d / "annotated.mp4")
    original = decode_images(path)
    x1, y1, x2, y2 = (int(v) for v in track["box"])
    edge = frames[23][y1 + (y2 - y1) // 2, max(x1 - 1, 0):x1 + 2].astype(int)
    colour = np.array(CLASS_COLOURS[track["class"]])
    assert np.abs(edge - colour).sum(axis=1).min() < 60          # the box line, coloured by class
    def banner(image):      # the synthetic-data mark: white text on dark red along the bottom
        bottom = image[-14:].astype(int)
        return int(((bottom[..., 0] > 110) & (bottom[..., 1] < 40) & (bottom[..., 2] < 40)).sum())
    assert banner(frames[0]) > 50 and banner(original[0]) == 0

    mot = read_mot(d / "mot.txt")
    assert sorted(mot) == list(range(2, 24)) and all(b.object_id == 1 for boxes in mot.values() for b in boxes)
    run = json.loads((d / "run.json").read_text())
    assert run["frames"] == 30 and run["models"]["synthetic"] is True
    assert run["stats"]["frames_out"] == 30 and sum(run["stats"]["drops"].values()) == 0
    assert {"detect", "track", "size", "smooth", "output", "end_to_end"} <= set(run["stats"]["latency"])


def test_every_n_samples_frames_but_renders_all(tmp_path, clip):
    path, _ = clip
    out = tmp_path / "out"
    assert annotate([str(path), "--out", str(out), "--boxes", "auto", "--no-sizer", "--every", "4",
                     "--render", "--quiet", "--set", "track.min_hits=1"]) == EXIT_OK
    rows = [json.loads(line) for line in (out / "case1" / "frames.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(0, 30, 4))
    assert len(decode_times(out / "case1" / "annotated.mp4")) == 30


def test_many_inputs_resume_and_names(tmp_path, capsys):
    a = tmp_path / "a" / "same.mp4"
    b = tmp_path / "b" / "same.mp4"
    a.parent.mkdir()
    b.parent.mkdir()
    write_clip(a, n=8)
    write_clip(b, n=9)
    out = tmp_path / "out"
    args = [str(a), str(b), "--out", str(out), "--boxes", "auto", "--no-sizer", "--quiet"]
    assert annotate(args) == EXIT_OK
    assert json.loads((out / "same" / "run.json").read_text())["frames"] == 8
    assert json.loads((out / "same-2" / "run.json").read_text())["frames"] == 9
    before = (out / "same-2" / "run.json").stat().st_mtime_ns
    capsys.readouterr()
    assert annotate(args + ["--resume"]) == EXIT_OK
    assert capsys.readouterr().err.count("already done") == 2
    assert (out / "same-2" / "run.json").stat().st_mtime_ns == before
    # --resume redoes an input whose finished output lacks what is asked for now.
    assert annotate(args + ["--resume", "--mot"]) == EXIT_OK
    assert (out / "same" / "mot.txt").is_file()


def test_unwritable_output_fails_cleanly(tmp_path, clip, capsys):
    path, _ = clip
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = annotate([str(path), "--out", str(blocker / "out"), "--boxes", "auto", "--no-sizer", "--quiet"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.count("\n") == 1 and "not writable" in err and str(blocker / "out") in err


def test_usage_errors_name_the_problem(tmp_path, clip, capsys):
    path, _ = clip
    out = str(tmp_path / "out")
    assert annotate([str(path), "--out", out, "--set", "track.min_hitz=2", "--boxes", "auto"]) == EXIT_USAGE
    assert "track.min_hitz" in capsys.readouterr().err
    assert annotate([str(path), "--out", out, "--detector", str(tmp_path / "nope")]) == EXIT_USAGE
    assert str(tmp_path / "nope") in capsys.readouterr().err
    assert annotate([str(path), str(path), "--out", out, "--boxes", "x.txt"]) == EXIT_USAGE
    assert "--boxes given 1 times for 2 inputs" in capsys.readouterr().err
    missing = tmp_path / "nogt.mp4"
    write_clip(missing, n=4)
    missing.with_name("nogt.gt.json").unlink()
    assert annotate([str(missing), "--out", out, "--boxes", "auto", "--quiet"]) == EXIT_FAILURE
    assert "neither nogt.gt.json nor nogt.gt.txt" in capsys.readouterr().err


def test_default_config_file_documents_every_default():
    from pathlib import Path
    documented = yaml.safe_load((Path(__file__).parents[1] / "configs" / "run" / "default.yaml").read_text())
    assert documented == run_config_to_dict(load_run_config(None))
    for name in ("live", "offline"):
        load_run_config(Path(__file__).parents[1] / "configs" / "run" / f"{name}.yaml")


def test_detector_bundle_end_to_end(tmp_path, clip, sizer, tmp_path_factory):
    """Detections from a real (tiny, untrained) detector bundle, two detect workers, in order."""
    path, _ = clip
    detector = tiny_detector_bundle(tmp_path_factory)
    out = tmp_path / "out"
    code = annotate([str(path), "--out", str(out), "--detector", str(detector), "--sizer", str(sizer), "--quiet",
                     "--set", "detect.score_threshold=0.0", "--set", "track.min_score=0.0",
                     "--set", "track.new_track_min_score=0.0", "--set", "track.min_hits=1",
                     "--set", "detect.workers=2"])
    assert code == EXIT_OK
    rows = [json.loads(line) for line in (out / "case1" / "frames.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(30))
    boxes = [t["box"] for r in rows for t in r["tracks"] if t["missed"] == 0]
    assert boxes and all(0 <= b[0] < b[2] <= 96 and 0 <= b[1] < b[3] <= 64 for b in boxes)
    run = json.loads((out / "case1" / "run.json").read_text())
    assert run["models"]["detector"]["path"] == str(detector) and run["boxes"] is None
    assert run["stats"]["latency"]["detect"]["count"] == 30
