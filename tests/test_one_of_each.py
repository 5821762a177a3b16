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
