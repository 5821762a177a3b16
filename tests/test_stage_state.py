"""Stages own their state: in the live graph every analysis stage runs on its own thread, so the
tracker, the sizing scheduler and the size smoothers must each be used by one thread only;
what another stage needs (the ids still remembered) travels with the work item."""
from __future__ import annotations

import sys
import threading
from collections import defaultdict

import numpy as np
import pytest

from _pipeline_media import tiny_sizer_bundle, write_clip
from pipeline.config import load_run_config
from pipeline.graph import StageGraph
from pipeline.runtime import Analysis, BoxProvider, LivePipeline, Work
from pipeline.sizing import SizingScheduler, TrackSizingStage
from pipeline.smoothing import TrackSizer
from pipeline.tracker import Tracker
from pipeline.types import Frame


@pytest.fixture(scope="module")
def sizer(tmp_path_factory):
    return tiny_sizer_bundle(tmp_path_factory)


def _record_threads(monkeypatch, cls, names, seen):
    """Wrap `cls`'s methods/properties `names` to note which threads call them."""
    for name in names:
        original = cls.__dict__[name]
        if isinstance(original, property):
            def getter(self, _get=original.fget, _name=name):
                seen[(cls.__name__, id(self))].add(threading.get_ident())
                return _get(self)
            monkeypatch.setattr(cls, name, property(getter))
        else:
            def method(self, *args, _fn=original, **kwargs):
                seen[(cls.__name__, id(self))].add(threading.get_ident())
                return _fn(self, *args, **kwargs)
            monkeypatch.setattr(cls, name, method)


def test_live_stage_state_is_used_by_one_thread_each(tmp_path, sizer, monkeypatch):
    """Deterministic: the tracker, the sizing scheduler and the smoothers of a live run are each
    called from exactly one thread (reset() runs while the graph holds every stage idle)."""
    clip = tmp_path / "clip.mp4"
    write_clip(clip, n=30, width=96, height=64, fps=10.0)
    seen: dict = defaultdict(set)
    _record_threads(monkeypatch, Tracker, ["update", "remembered_ids"], seen)
    _record_threads(monkeypatch, SizingScheduler, ["choose", "record", "forget"], seen)
    _record_threads(monkeypatch, TrackSizer, ["add", "estimate", "retain"], seen)
    ended = threading.Event()
    # Normal priority: at the default (idle) a busy machine may leave the analysis no time at all.
    config = load_run_config(None, {"track.min_hits": 1, "runtime.analysis_priority": "normal"})
    pipe = LivePipeline(str(clip), config=config, sizer=str(sizer),
                        boxes=str(clip.with_name("clip.gt.json")),
                        on_state=lambda s: ended.set() if s.state == "ended" else None)
    pipe.set_speed(3.0)
    pipe.start()
    try:
        assert ended.wait(20)
        for _ in range(100):        # the analysis (idle priority) finishes the last frame it took
            if pipe.stats()["frames_analysed"] >= 5:
                break
            ended.wait(0.1)
    finally:
        pipe.stop()
    classes = {cls for cls, _ in seen}
    assert classes == {"Tracker", "SizingScheduler", "TrackSizer"}, classes
    shared = {key: len(threads) for key, threads in seen.items() if len(threads) != 1}
    assert not shared, f"state used by several threads: {shared}"


def _churning_boxes(path, frames: int, per_frame: int) -> None:
    """MOTChallenge boxes: every frame a new set of small boxes at new places, so tracks are
    created and dropped on every frame (the dictionaries of per-track state change size)."""
    lines = []
    for f in range(frames):
        for k in range(per_frame):
            x = (k * 7 + f * 3) % 150
            y = (k * 11 + f * 5) % 110
            lines.append(f"{f + 1},{k + 1},{x},{y},8,8,0.9,-1,-1,-1\n")
    path.write_text("".join(lines))


def test_stress_stages_on_their_own_threads(tmp_path, sizer):
    """The live graph's shape (one thread per stage, every stage busy with a different frame) at
    a 10 us interpreter switch interval, with tracks created and dropped on every frame. On the
    code before stages owned their state, the smooth thread's `SizingScheduler.forget` iterated
    the dictionary the size thread was changing and raised "dictionary changed size during
    iteration" within a few hundred frames."""
    boxes = tmp_path / "churn.txt"
    frames, per_frame = 300, 24
    _churning_boxes(boxes, frames, per_frame)
    config = load_run_config(None, {"track.min_hits": 1, "track.max_missed_frames": 0,
                                    "track.reid_window_s": 2.0, "track.reid_threshold": 0.0,
                                    "track.layout_tolerance": 0.0, "track.iou_threshold": 0.9,
                                    "track.centre_gate": 0.0, "size.max_tracks_per_frame": 64,
                                    "detect.max_detections": 64,
                                    "preprocess.fov_masking": False})
    analysis = Analysis(config, boxes=BoxProvider(boxes), sizer=TrackSizingStage.from_bundle(sizer, threads=1))
    done = []
    graph = StageGraph(analysis.stages(), sink=done.append, policy="blocking", capacity=4)
    # Noise: every box looks different, so no new track is taken for a lost one (ids churn)
    # while the lost ones are remembered for 2 s: the per-track dictionaries hold thousands.
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        graph.start()
        for i in range(frames):
            if not graph.feed(Work(frame=Frame(index=i, pts=i / 25.0, image=image))):
                break
        graph.close_input()
        graph.join(120.0)
    finally:
        sys.setswitchinterval(previous)
        graph.stop()
    assert graph.error is None, f"{type(graph.error).__name__}: {graph.error}"
    assert len(done) == frames
    # Tracks really churned: far more ids than boxes on one frame, and every frame was sized.
    ids = {r.track_id for w in done for r in (w.reports or [])}
    assert len(ids) > 4 * per_frame
    assert sum(1 for w in done if any(r.frame_size_mm is not None for r in w.reports or [])) >= frames - 1
