"""The runtime: LivePipeline (replay, pause, step, seek, states, stats) and the offline runner."""
from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from _pipeline_media import tiny_sizer_bundle, write_clip
from pipeline.config import load_run_config
from pipeline.runtime import Analysis, BoxProvider, LivePipeline, run_offline, run_sequential
from pipeline.live import CallbackSink
from pipeline.sizing import TrackSizingStage
from pipeline.sources import FileSource
from pipeline.errors import SourceError


@pytest.fixture(scope="module")
def sizer(tmp_path_factory):
    return tiny_sizer_bundle(tmp_path_factory)


@pytest.fixture
def clip(tmp_path):
    path = tmp_path / "replay.mp4"
    write_clip(path, n=20, width=96, height=64, fps=10.0)
    return path


class Collector:
    def __init__(self):
        self.results = []
        self.states = []
        self.cond = threading.Condition()

    def on_result(self, result):
        with self.cond:
            self.results.append(result)
            self.cond.notify_all()

    def on_state(self, status):
        with self.cond:
            self.states.append(status)
            self.cond.notify_all()

    def wait(self, predicate, timeout=10.0):
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self), timeout), \
                f"timed out: {len(self.results)} results, states {[s.state for s in self.states]}"


def test_replay_sends_every_frame_with_the_newest_overlay(clip, sizer):
    got = Collector()
    pipe = LivePipeline(str(clip), config=load_run_config(None, {"track.min_hits": 1}), sizer=str(sizer),
                        boxes=str(clip.with_name("replay.gt.json")), on_result=got.on_result, on_state=got.on_state)
    assert pipe.duration == pytest.approx(2.0) and pipe.backend_name == "onnxruntime"
    assert pipe.model_info["synthetic"] is True and pipe.model_info["boxes"].endswith("replay.gt.json")
    pipe.set_speed(4.0)
    pipe.start()
    try:
        got.wait(lambda c: any(s.state == "ended" for s in c.states))
        stats = pipe.stats()
    finally:
        pipe.stop()
    assert [r.frame.index for r in got.results] == list(range(20))       # the video path loses nothing
    assert all(r.overlay_frame_index <= r.frame.index for r in got.results)
    assert all(r.overlay_age_frames == r.frame.index - r.overlay_frame_index for r in got.results)
    with_tracks = [r for r in got.results if r.tracks]
    assert len(with_tracks) >= 10
    assert any(t.estimate is not None and t.estimate.low_mm <= t.estimate.size_mm <= t.estimate.high_mm
               for r in with_tracks for t in r.tracks)
    states = [s.state for s in got.states]
    assert states[0] == "playing" and states[-1] == "ended"
    assert stats["frames_in"] == 20 and stats["frames_out"] == 20
    assert stats["annotation_delay"]["count"] >= 1 and stats["annotation_delay"]["p99_ms"] > 0
    assert {"capture", "detect", "track", "size", "smooth"} <= set(stats["latency"])
    assert set(stats["drops"]) == {"in:preprocess", "in:detect", "in:track", "in:size", "in:smooth"}
    assert stats["latency"]["display_path"]["count"] == 20
    assert all(e["max_depth"] <= 1 for e in stats["edges"].values())    # latest-wins: nothing queues
    # Frames went out at the paced rate: 20 frames at 4x of 10 fps take about half a second.
    span = got.results[-1].frame.stamps["output"] - got.results[0].frame.stamps["output"]
    assert 0.35 < span < 2.0


def test_prepare_runs_while_a_replayed_frame_waits_and_its_result_travels(clip):
    got = Collector()
    prepared = {}

    def prepare(frame):       # the viewer scales the frame here
        prepared.setdefault(frame.index, []).append((time.perf_counter(), "capture" in frame.stamps))
        return ("display", frame.index)
    pipe = LivePipeline(str(clip), boxes=str(clip.with_name("replay.gt.json")),
                        display=CallbackSink(got.on_result, prepare=prepare), on_state=got.on_state)
    pipe.set_speed(4.0)
    pipe.start()
    try:
        got.wait(lambda c: any(s.state == "ended" for s in c.states))
        pipe.seek(0.5)                       # paused at the end: the seek shows where it landed
        got.wait(lambda c: len(c.results) == 21)
    finally:
        pipe.stop()
    played, seek_shown = got.results[:20], got.results[20]
    assert [r.display for r in played] == [("display", i) for i in range(20)]
    # Played frames were prepared before their release at media time (no capture stamp yet) ...
    first = {r.frame.index: prepared[r.frame.index][0] for r in played}
    assert not any(had_capture for _, had_capture in first.values())
    assert all(first[r.frame.index][0] < r.frame.stamps["capture"] for r in played)
    # ... while waiting: 20 frames at 4x of 10 fps are 25 ms apart, so the wait is most of that.
    ahead = sorted(r.frame.stamps["capture"] - first[r.frame.index][0] for r in played[1:])
    assert ahead[len(ahead) // 2] > 0.010
    # A frame shown at once (after a seek, a step) is prepared as it goes out.
    assert seek_shown.frame.index == 5 and seek_shown.display == ("display", 5)
    assert prepared[5][-1][1] is True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread scheduling settings are a Linux feature")
def test_inference_worker_threads_run_at_the_analysis_priority(clip, sizer):
    def threads() -> set[int]:
        return {int(tid) for tid in os.listdir("/proc/self/task")}

    before = threads()
    config = load_run_config(None, {"runtime.inference_threads": 3, "runtime.analysis_priority": "idle"})
    pipe = LivePipeline(str(clip), config=config, sizer=str(sizer), boxes=str(clip.with_name("replay.gt.json")))
    try:
        policies = {}
        for tid in threads() - before:
            try:
                policies[tid] = os.sched_getscheduler(tid)
            except OSError:          # a thread that has ended meanwhile
                pass
        # onnxruntime made its pool (2 threads beside the caller) with the session, on the
        # loading thread, so the pool does not spin at normal priority waiting for an idle stage.
        assert len(policies) >= 2
        assert set(policies.values()) == {os.SCHED_IDLE}
    finally:
        pipe.stop()
    assert os.sched_getscheduler(0) != os.SCHED_IDLE, "the caller keeps its own priority"


def test_pause_step_seek_and_resume(clip):
    got = Collector()
    pipe = LivePipeline(str(clip), boxes=str(clip.with_name("replay.gt.json")),
                        on_result=got.on_result, on_state=got.on_state)
    pipe.set_speed(2.0)
    pipe.start()
    try:
        pipe.pause()
        got.wait(lambda c: any(s.state == "paused" for s in c.states))
        time.sleep(0.3)
        count = len(got.results)
        time.sleep(0.3)
        assert len(got.results) == count                      # paused: nothing new
        pipe.seek(1.0)
        got.wait(lambda c: len(c.results) > count and c.results[-1].frame.index == 10)
        assert got.results[-1].frame.pts == pytest.approx(1.0)
        pipe.step()
        got.wait(lambda c: c.results[-1].frame.index == 11)
        pipe.seek(0.5)                                        # backwards: the analysis starts over
        got.wait(lambda c: c.results[-1].frame.index == 5)
        after_seek = len(got.results)
        pipe.set_speed(None)
        pipe.resume()
        got.wait(lambda c: c.states[-1].state == "ended")
    finally:
        pipe.stop()
    tail = [r.frame.index for r in got.results[after_seek:]]
    assert tail and tail[-1] == 19 and tail == sorted(tail)
    assert all(r.overlay_frame_index <= r.frame.index for r in got.results)
    assert pipe.error is None


def test_live_threshold_hides_weak_detections(clip, tmp_path):
    boxes = tmp_path / "weak.txt"
    boxes.write_text("".join(f"{i + 1},1,10,10,20,20,0.5,-1,-1,-1\n" for i in range(20)))
    got = Collector()
    pipe = LivePipeline(str(clip), config=load_run_config(None, {"track.new_track_min_score": 0.3}),
                        boxes=str(boxes), on_result=got.on_result, on_state=got.on_state)
    pipe.set_score_threshold(0.6)
    pipe.set_speed(None)
    pipe.start()
    try:
        got.wait(lambda c: any(s.state == "ended" for s in c.states))
    finally:
        pipe.stop()
    assert got.results and not any(r.tracks for r in got.results)
    with pytest.raises(ValueError):
        pipe.set_score_threshold(1.5)


def test_analysis_failure_is_reported_and_video_goes_on(clip, tmp_path):
    got = Collector()
    pipe = LivePipeline(str(clip), boxes=str(clip.with_name("replay.gt.json")),
                        on_result=got.on_result, on_state=got.on_state)

    def broken(work):
        raise RuntimeError("sizer crashed")
    pipe.analysis.size = broken
    pipe.graph.stages[3].process = broken
    pipe.set_speed(None)
    pipe.start()
    try:
        got.wait(lambda c: any(s.state == "error" for s in c.states) and len(c.results) >= 20)
    finally:
        pipe.stop()
    error = next(s for s in got.states if s.state == "error")
    assert "sizer crashed" in error.message and "\n" not in error.message
    assert [r.frame.index for r in got.results] == list(range(20))


def test_bad_source_is_a_one_line_error(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        LivePipeline(str(tmp_path / "missing.mp4"), boxes="ground-truth")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match="empty file"):
        LivePipeline(str(empty), boxes="ground-truth")


def test_offline_equals_the_sequential_loop(clip, sizer):
    config = load_run_config(None)

    def analysis():
        return Analysis(config, boxes=BoxProvider(clip.with_name("replay.gt.json")),
                        sizer=TrackSizingStage.from_bundle(sizer))
    piped, plain = [], []
    stats = run_offline(FileSource(clip), analysis(), piped.append, queue_capacity=2)
    assert run_sequential(FileSource(clip), analysis(), plain.append) == 20
    assert [r.frame.index for r in piped] == list(range(20)) and stats["frames_out"] == 20
    # Two threads, one bounded edge before each; every stage still timed under its own name.
    assert set(stats["edges"]) == {"in:preprocess+detect", "in:track+size+smooth+output"}
    assert all(edge["max_depth"] <= 2 and edge["policy"] == "blocking" for edge in stats["edges"].values())
    assert all(stats["latency"][name]["count"] == 20 for name in ("preprocess", "detect", "track", "size", "smooth",
                                                                   "output"))
    for a, b in zip(piped, plain):
        assert [(t.track_id, t.box, t.frame_size_mm) for t in a.tracks] == \
               [(t.track_id, t.box, t.frame_size_mm) for t in b.tracks]
        assert [t.estimate for t in a.tracks] == [t.estimate for t in b.tracks]
    assert sum(1 for r in piped for t in r.tracks if t.frame_size_mm is not None) >= 15


def test_offline_threads_keep_multi_worker_stages_apart(clip, sizer):
    from pipeline.graph import Stage

    def plan(overrides):
        config = load_run_config(None, overrides)
        analysis = Analysis(config, boxes=BoxProvider(clip.with_name("replay.gt.json")),
                            sizer=TrackSizingStage.from_bundle(sizer, backend="onnxruntime"))
        return [(stage.name, stage.workers) for stage in analysis.offline_threads(Stage("output", lambda w: w))]

    assert plan([]) == [("preprocess+detect", 1), ("track+size+smooth+output", 1)]
    assert plan(["size.workers=2"]) == [("preprocess+detect", 1), ("track", 1), ("size", 2), ("smooth+output", 1)]


def test_sizing_policy_round_robin_under_a_budget():
    from pipeline.sizing import SizingPolicy, SizingScheduler
    scheduler = SizingScheduler(SizingPolicy(min_interval_frames=1, max_tracks_per_frame=8, time_budget_ms=10.0))
    ids = [1, 2, 3, 4, 5]
    first = scheduler.choose(ids, 0)
    assert first == [0, 1, 2, 3, 4]                                  # cost unknown: up to the batch limit
    scheduler.record([ids[i] for i in first], 0, seconds=0.025)      # 5 ms per box measured
    sized = []
    for frame in range(1, 6):
        chosen = scheduler.choose(ids, frame)
        assert len(chosen) == 2                                      # 10 ms budget / 5 ms per box
        sized.append([ids[i] for i in chosen])
        scheduler.record([ids[i] for i in chosen], frame, seconds=0.010)
    assert sized[:3] == [[1, 2], [3, 4], [5, 1]]                     # least recently sized first
    spaced = SizingScheduler(SizingPolicy(min_interval_frames=3))
    assert spaced.choose([7], 0) == [0]
    spaced.record([7], 0, 0.001)
    assert spaced.choose([7], 1) == [] and spaced.choose([7], 2) == [] and spaced.choose([7], 3) == [0]


def test_demo_runs_live_on_its_ground_truth(monkeypatch):
    from trainer.synth import load_synth_config
    from trainer.synth.config import apply_overrides
    small = apply_overrides(load_synth_config(None, "demo"), {"width": 160, "height": 120, "seconds": 2.0})
    monkeypatch.setattr("trainer.synth.load_synth_config", lambda path=None, preset=None: small)
    got = Collector()
    pipe = LivePipeline("demo", config=load_run_config(None, {"track.min_hits": 1}),
                        on_result=got.on_result, on_state=got.on_state)
    assert pipe.duration is None and pipe.model_info["boxes"] == "ground-truth"
    pipe.start()
    try:
        got.wait(lambda c: len(c.results) >= 20, timeout=20)
        pipe.pause()
        time.sleep(0.1)
        paused_at = len(got.results)
        time.sleep(0.5)
        assert len(got.results) == paused_at              # nothing shown while paused ...
        pipe.resume()
        got.wait(lambda c: len(c.results) >= paused_at + 5, timeout=20)
        stats = pipe.stats()
    finally:
        pipe.stop()
    results = got.results
    assert stats["frames_discarded_paused"] >= 5          # ... but the live source kept being read
    resumed = results[paused_at].frame.index
    assert resumed >= results[paused_at - 1].frame.index + 5   # fresh frames after resuming, no backlog
    assert [r.frame.index for r in results[:20]] == list(range(20))
    assert all(r.frame.ground_truth is not None for r in results)
    assert any(r.tracks for r in results[5:])
    assert got.states[0].state == "playing"
