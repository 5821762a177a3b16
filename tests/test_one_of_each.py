"""The things the runtime has exactly one of: the media clock, the overlay join, the error line,
the argument parser and the run options shared by hagview and hagview-annotate, the live graph's
declared flows."""
from __future__ import annotations

import argparse

import pytest

from pipeline.cli_util import ArgumentParser, add_run_options
from pipeline.errors import BundleError, ConfigError, describe_error
from pipeline.graph import OverlayJoin
from pipeline.pacing import MediaClock


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_media_clock_releases_frames_at_their_media_time():
    clock = FakeClock()
    media = MediaClock(clock=clock)
    assert media.delay(5.0) == 0.0                       # the first frame anchors the clock
    assert media.delay(5.5) == pytest.approx(0.5)
    clock.now += 0.5
    assert media.delay(5.5) == pytest.approx(0.0)
    assert media.delay(6.5, speed=2.0) == pytest.approx(0.25)         # 1.5 s of media at 2x, 0.5 s gone
    media.resync()                                       # a seek: the next frame is due at once
    assert media.delay(1.0) == 0.0 and media.delay(1.04) == pytest.approx(0.04)


def test_media_clock_re_anchors_after_a_stall_and_cuts_long_waits():
    clock = FakeClock()
    late = MediaClock(max_late_s=0.25, clock=clock)
    late.delay(0.0)
    clock.now += 2.0                                     # the reader stalled for 2 s
    assert late.delay(0.04) == 0.0                       # no burst of late frames ...
    assert late.delay(0.08) == pytest.approx(0.04)       # ... real time from here
    gap = MediaClock(max_wait_s=1.0, clock=clock)
    gap.delay(0.0)
    assert gap.delay(30.0) == 1.0                        # a gap in the recording is not waited out
    assert gap.delay(30.04) == 0.0                       # and the next frame re-anchors


def test_overlay_join_takes_the_newest_overlay_at_or_before_the_frame():
    join = OverlayJoin("overlay", keep=3)
    assert join.newest_for(0, 10) is None
    join.publish(0, 4, "a")
    join.publish(0, 8, "b")
    assert join.newest_for(0, 7) == (4, "a") and join.newest_for(0, 8) == (8, "b")
    assert join.newest_for(1, 9) is None                 # another stream (after a seek)
    for i in range(9, 12):
        join.publish(0, i, str(i))
    assert join.newest_for(0, 5) is None                 # only `keep` overlays are kept
    assert join.stats()["capacity"] == 3 and join.stats()["policy"] == "newest-at-or-before"
    with pytest.raises(ValueError):
        OverlayJoin(keep=0)


def test_describe_error_is_one_line():
    assert describe_error(BundleError("b/bundle.json: bad hash")) == "b/bundle.json: bad hash"
    assert describe_error(FileNotFoundError(2, "No such file or directory", "x.mp4")) == \
        "x.mp4: No such file or directory"
    assert describe_error(RuntimeError("first\nsecond")) == "RuntimeError: first"
    assert describe_error(KeyError()) == "KeyError"


def test_run_options_are_shared_and_offer_only_real_backends():
    from pipeline.annotate import parse_args
    from pipeline.engines import BACKEND_CHOICES, BACKENDS

    parser = ArgumentParser(prog="x")
    add_run_options(parser)
    options = {a.dest: a for a in parser._actions}
    assert {"config", "set", "sizer", "detector", "backend"} <= set(options)
    assert tuple(options["backend"].choices) == BACKEND_CHOICES and set(BACKEND_CHOICES) == {"auto", *BACKENDS}
    with pytest.raises(ConfigError, match="invalid choice: 'cuda'"):
        parser.parse_args(["--backend", "cuda"])
    from gui.app import build_parser
    for argv_parser in (build_parser(), None):
        args = argv_parser.parse_args(["--backend", "onnxruntime", "--set", "a.b=1"]) if argv_parser else \
            parse_args(["v.mp4", "--out", "o", "--backend", "onnxruntime", "--set", "a.b=1"])
        assert isinstance(args, argparse.Namespace) and args.backend == "onnxruntime" and args.set == ["a.b=1"]
    with pytest.raises(ConfigError):
        parse_args(["v.mp4", "--out", "o", "--backend", "tensorrt-fp16"])


def test_live_graph_declares_its_flows(tmp_path):
    from _pipeline_media import write_clip
    from pipeline.live import LivePipeline

    clip = tmp_path / "c.mp4"
    write_clip(clip, n=4)
    pipe = LivePipeline(str(clip), boxes=str(clip.with_name("c.gt.json")))
    try:
        flows = [(f.source, f.target, f.policy, f.capacity) for f in pipe.flows()]
    finally:
        pipe.stop()
    assert flows == [("capture", "display", "call", 0),
                     ("capture", "preprocess", "latest", 1), ("preprocess", "detect", "latest", 1),
                     ("detect", "track", "latest", 1), ("track", "size", "latest", 1),
                     ("size", "smooth", "latest", 1), ("smooth", "overlay", "newest-at-or-before", 16),
                     ("overlay", "display", "call", 0)]


# --- the track label, colour, record and per-polyp history -------------------------------------
def _report(track_id, box, *, missed=0, frame_mm=None, est=None, score=0.9, quality=0.8):
    from pipeline.types import SizeEstimate, TrackReport

    estimate = None if est is None else SizeEstimate(*est)
    return TrackReport(track_id=track_id, box=box, score=score, confirmed=True, missed=missed,
                       frame_size_mm=frame_mm, estimate=estimate, quality=quality)


def _results():
    """Six frames of two polyps: #1 sized from frame 1, coasting on frame 4; #2 appears on 3."""
    import numpy as np

    from pipeline.types import Frame, FrameResult

    out = []
    for i in range(6):
        tracks = [_report(1, (10.0 + i, 12.0, 40.0 + i, 44.0), missed=int(i == 4), frame_mm=None if i in (0, 4) else 6.0 + i,
                          est=None if i == 0 else (6.0 + i / 10, 4.5, 8.1 + i / 10, "diminutive or small", i),
                          quality=0.5 + i / 10)]
        if i >= 3:
            tracks.append(_report(2, (50.0, 50.0, 70.0, 66.0), frame_mm=11.0, est=(11.5, 10.2, 13.0, "large", i - 2)))
        image = np.full((96, 128, 3), 40 * i, np.uint8)
        out.append(FrameResult(frame=Frame(index=i, pts=i / 10, image=image), tracks=tracks, overlay_frame_index=i))
    return out


@pytest.fixture(scope="module")
def qapp():
    from PyQt6.QtWidgets import QApplication

    return QApplication.instance() or QApplication(["hagview-test"])


def test_one_track_label_and_colour_for_overlay_viewer_and_panel(qapp):
    from PyQt6.QtGui import QColor

    from gui.tracks import TrackPanel
    from gui.video import track_text
    from pipeline.overlay import CLASS_COLOURS, track_colour, track_label

    def plain(text):        # the typography the viewer's fonts get: an en dash, wider gaps
        return " ".join(text.replace("\u2013", "-").split())

    results = _results()
    panel = TrackPanel()
    for result in results:
        panel.add_result(result)
    panel.refresh()
    last = {r.track_id: r for r in results[-1].tracks}
    assert set(panel.history.tracks) == set(last) == {1, 2}
    for track_id, report in last.items():
        row = panel._rows[track_id][1]
        burnt = track_label(report)
        assert burnt.startswith(f"#{track_id} ") and "mm [" in burnt
        assert plain(track_text(report)) == plain(row.title.text()) == burnt
        assert row.title.styleSheet() == f"color: {QColor(*track_colour(report)).name()};"
    assert track_colour(last[2]) == CLASS_COLOURS["large"]
    unsized = results[0].tracks[0]
    assert track_label(unsized) == "#1 sizing..." and plain(track_text(unsized)) == "#1 sizing..."
    assert track_colour(unsized) == CLASS_COLOURS[None]


def test_snapshot_tracks_are_the_frames_jsonl_record(qapp, tmp_path):
    import json

    from gui.snapshot import save_snapshot
    from pipeline.annotate import AnnotationWriter
    from pipeline.polyps import track_record

    result = _results()[-1]
    files = save_snapshot(result, tmp_path / "snap")
    snap = json.loads(files.tracks.read_text())["tracks"]
    writer = AnnotationWriter(tmp_path, render=False, mot=False, synthetic=False, fps=10.0, thumb_size=32,
                              crf=23, preset="ultrafast", line_width=0)
    writer(result)
    writer.finish("t", {})
    line = json.loads((tmp_path / "frames.jsonl").read_text().splitlines()[0])
    assert [{k: v for k, v in t.items() if k != "track_id"} for t in snap] == line["tracks"] == \
        [track_record(r) for r in result.tracks]
    assert [t["track_id"] for t in snap] == [1, 2]


def test_one_per_polyp_history_for_annotate_and_the_track_panel(qapp, tmp_path):
    import json

    from gui.tracks import TrackPanel
    from pipeline.annotate import AnnotationWriter
    from pipeline.polyps import PolypHistory

    results = _results()
    panel = TrackPanel()
    writer = AnnotationWriter(tmp_path, render=False, mot=False, synthetic=False, fps=10.0, thumb_size=32,
                              crf=23, preset="ultrafast", line_width=0)
    for result in results:
        panel.add_result(result)
        writer(result)
    polyps = {p["id"]: p for p in json.loads(json.dumps(writer.finish("t", {})))}
    on_disk = {p["id"]: p for p in json.loads((tmp_path / "polyps.json").read_text())["polyps"]}
    assert polyps == on_disk
    history = panel.history.tracks
    assert all(type(h) is PolypHistory for h in history.values())
    for track_id, h in history.items():
        p = polyps[track_id]
        assert (p["first_frame"], p["last_frame"], p["frames"]) == (h.first_frame, h.last_frame, h.frames_seen)
        assert (p["first_time"], p["last_time"]) == (round(h.first_time, 4), round(h.last_time, 4))
        assert p["size_mm"] == round(h.estimate.size_mm, 3) and p["class"] == h.estimate.size_class
    # #1: seen on frames 0-3 and 5 (coasting on 4), a per-frame size on 1, 2, 3 and 5
    one = history[1]
    assert (one.first_frame, one.last_frame, one.frames_seen, one.frames_sized) == (0, 5, 5, 4)
    assert (history[2].first_frame, history[2].frames_seen) == (3, 3)
    # the sparkline's points: frames where it was seen and had a smoothed size (1, 2, 3, 5)
    times, sizes, lows, highs = one.size_points()
    assert times.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.5]) and sizes.tolist() == pytest.approx([6.1, 6.2, 6.3, 6.5])
    assert len(one) == 6 and one.rows()[4]["frame_mm"] is None and one.rows()[0]["smoothed_mm"] is None


def test_polyp_history_keeps_about_max_rows():
    from pipeline.polyps import PolypHistory

    history = PolypHistory(7, max_rows=10)
    for i in range(35):
        history.add(i, i / 10, _report(7, (0.0, 0.0, 5.0, 5.0), frame_mm=5.0, est=(5.0 + i, 4.0, 6.0 + i, "small", i)))
        assert len(history) < 20                            # trimmed to the newest 10 at 20 rows
    assert len(history) == 15 and history.frames_seen == 35 and history.size_points_added == 35
    times, sizes, _, _ = history.size_points(limit=10)
    assert sizes.tolist() == [5.0 + i for i in range(25, 35)] and history.rows()[-1]["time"] == pytest.approx(3.4)
