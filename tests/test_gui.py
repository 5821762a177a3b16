"""The viewer in a real (offscreen) Qt window: frames, overlay, track panel, controls, recordings.

QT_QPA_PLATFORM=offscreen is set in conftest.py. The demo source streams the synthetic
generator live; a 3-second 320x240 synthetic file with its ground-truth JSON stands in for a
recorded procedure (seekable). When the committed demo bundles are not there yet, a tiny
untrained sizer bundle is exported here so sizes, classes and colours are exercised.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from PyQt6.QtCore import QEventLoop, QPoint, Qt
from PyQt6.QtTest import QTest
from PyQt6.QtWidgets import QApplication

from gui.app import main as hagview_main
from gui.bridge import DISPLAY_WAIT_S, PipelineBridge
from gui.video import qimage_to_rgb
from gui.window import ViewerOptions, ViewerWindow
from pipeline.config import load_run_config
from pipeline.graph import GATE_WAIT_S
from pipeline.overlay import track_colour
from pipeline.runtime import default_bundle
from pipeline.types import Frame, FrameResult
from pipeline.boxes import box_iou

ROOT = Path(__file__).resolve().parents[1]


# --- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qapp():
    return QApplication.instance() or QApplication(["hagview-test"])


@pytest.fixture(scope="module")
def sizer_bundle(tmp_path_factory):
    committed = default_bundle("sizer")
    if committed is not None:
        return committed
    from trainer.export.standin import export_untrained_sizer

    return export_untrained_sizer(tmp_path_factory.mktemp("bundles") / "sizer", input_size=64, head="both",
                                  width_mult=0.125, hidden=16, mean=(0.5, 0.45, 0.4), std=(0.25, 0.25, 0.25),
                                  exporter="legacy")


@pytest.fixture(scope="module")
def synth_file(tmp_path_factory):
    """(video.mp4, ground-truth JSON): 3 s, 25 fps, 320x240."""
    from trainer.synth import generate_dataset, load_synth_config

    cfg = dataclasses.replace(load_synth_config(None, "demo"), width=320, height=240, seconds=3.0)
    root = tmp_path_factory.mktemp("synth") / "data"
    (name,) = generate_dataset(root, cfg, videos=1, seed=3, progress=False)
    return root / f"{name}.mp4", root / f"{name}.gt.json"


def wait_for(condition, timeout: float = 20.0, what: str = "condition") -> None:
    app = QApplication.instance()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def settle(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.instance().processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        time.sleep(0.01)


def open_viewer(source: str, tmp_path: Path, *, sizer=None, boxes=None, truth_at: dict | None = None):
    """`truth_at`: filled with {frame index: ground truth} of every frame the pipeline sends out."""
    config = load_run_config(None, {"source.demo_loop": False})
    bridge = PipelineBridge(config=config, sizer=sizer, boxes=boxes, stats_interval_s=0.2)
    if truth_at is not None:
        deliver = bridge._on_result

        def recording(session, result):
            truth_at[result.frame.index] = result.frame.ground_truth
            deliver(session, result)
        bridge._on_result = recording
    window = ViewerWindow(bridge, ViewerOptions(source=source, output_dir=tmp_path / "out"))
    window.resize(1000, 600)
    window.show()
    bridge.open(source)
    return bridge, window


def close_viewer(bridge, window) -> None:
    window.close()
    bridge.shutdown()


def colour_pixels(image: np.ndarray, colour, region) -> int:
    """Pixels within 40 per channel of `colour` inside region (x1, y1, x2, y2) of an RGB image."""
    x1, y1, x2, y2 = (int(round(v)) for v in region)
    patch = image[max(0, y1):y2, max(0, x1):x2].astype(np.int32)
    return int(np.count_nonzero(np.all(np.abs(patch - np.array(colour)) <= 40, axis=-1)))


def box_in_window(window, box, margin: float = 4.0):
    """A frame box (image pixels) as a region of the grabbed window, grown by `margin`."""
    rect = window.video.image_rect()
    scale = rect.width() / window.video.result.frame.image.shape[1]
    origin = window.video.mapTo(window, QPoint(0, 0))
    x1, y1, x2, y2 = box
    return (origin.x() + rect.x() + x1 * scale - margin, origin.y() + rect.y() + y1 * scale - margin,
            origin.x() + rect.x() + x2 * scale + margin, origin.y() + rect.y() + y2 * scale + margin)


def best_match(truth, box):
    """(the ground-truth polyp that overlaps `box` most, that IoU)."""
    ious = box_iou([g.box for g in truth], [box])[:, 0]
    return truth[int(ious.argmax())], float(ious.max())


# --- the demo: overlay, track panel, overlay toggle, pause/step, snapshot, recording ---------
def test_demo_window_shows_polyps_and_controls_work(qapp, tmp_path, sizer_bundle):
    truth_at = {}
    bridge, window = open_viewer("demo", tmp_path, sizer=sizer_bundle, truth_at=truth_at)
    try:
        wait_for(lambda: window.video.frames_painted >= 25 and window.panel.history.tracks and any(
            r.confirmed and r.missed == 0 and r.estimate is not None for r in window.latest.tracks),
            what="sized tracks on the demo")
        assert window.state == "playing"
        assert window.synthetic, "the exported sizer says it was trained on synthetic data"
        bridge.pause()
        wait_for(lambda: window.state == "paused", what="paused state")
        settle(0.4)

        # The overlay: each confirmed track seen sits on a ground-truth polyp of the frame it was
        # computed for, and its class colour is painted around its box in the grabbed window.
        # The overlay is the newest one ready when the shown frame went out, so on a busy machine
        # it can be frames older than the shown frame (the polyp has moved on since): the boxes
        # given here are the generator's own, so on their frame they match it exactly.
        result = window.video.result
        seen = [r for r in result.tracks if r.confirmed and r.missed == 0 and r.estimate is not None]
        assert seen
        truth = truth_at[result.overlay_frame_index]
        shot = qimage_to_rgb(window.grab().toImage())
        counts = {}
        for report in seen:
            _, overlap = best_match(truth, report.box)
            assert overlap > 0.9, "tracks carry the demo's ground-truth boxes of their frame"
            region = box_in_window(window, report.box)
            counts[report.track_id] = colour_pixels(shot, track_colour(report), region)
            assert counts[report.track_id] >= 12, f"no class colour around polyp {report.track_id}"

        # The track panel lists each polyp with its size and class.
        window.panel.refresh()
        ids = set(window.panel.row_ids())
        assert window.panel.row_count == len(window.panel.history.tracks) >= 1
        assert {r.track_id for r in seen} <= ids
        row = window.panel._rows[seen[0].track_id][1]
        assert "mm" in row.title.text() and seen[0].estimate.size_class in row.title.text()

        # Selecting a row highlights that polyp in the video.
        window.panel.select(seen[0].track_id)
        assert window.video.selected_id == seen[0].track_id
        window.panel.select(None)
        assert window.video.selected_id is None
        # ... and so does a click on its box in the video.
        rect, scale = window.video.image_rect(), window.video.image_rect().width() / result.frame.image.shape[1]
        x1, y1, x2, y2 = seen[-1].box
        centre = QPoint(round(rect.x() + (x1 + x2) / 2 * scale), round(rect.y() + (y1 + y2) / 2 * scale))
        QTest.mouseClick(window.video, Qt.MouseButton.LeftButton, pos=centre)
        assert window.panel.selected_id() == seen[-1].track_id == window.video.selected_id
        window.panel.select(None)

        # Overlay off (key O): the box pixels are gone from the same frame.
        window.activateWindow()
        QTest.keyClick(window, Qt.Key.Key_O)
        assert not window.video.overlay_enabled
        clean = qimage_to_rgb(window.grab().toImage())
        for report in seen:
            gone = colour_pixels(clean, track_colour(report), box_in_window(window, report.box))
            assert gone <= counts[report.track_id] // 4, (gone, counts[report.track_id])
        QTest.keyClick(window, Qt.Key.Key_O)
        assert window.video.overlay_enabled

        # Paused: the frame index stops advancing. A step shows one frame: on a live source the
        # newest one (the device keeps being drained while paused), then it stays paused.
        index, painted = window.video.painted_index, window.video.frames_painted
        settle(0.6)
        assert window.video.painted_index == index and window.video.frames_painted == painted
        QTest.keyClick(window, Qt.Key.Key_Period)
        wait_for(lambda: window.video.frames_painted == painted + 1, timeout=10, what="one step")
        settle(0.4)
        assert window.video.frames_painted == painted + 1 and window.video.painted_index > index

        # Snapshot: raw and annotated PNGs (frame size) and the tracks as JSON.
        future = bridge.snapshot(window.latest, tmp_path / "snaps", synthetic=window.synthetic, selected_id=None)
        files = future.result(timeout=20)
        raw, annotated = cv2.imread(str(files.raw)), cv2.imread(str(files.annotated))
        height, width = window.latest.frame.image.shape[:2]
        assert raw.shape == annotated.shape == (height, width, 3)
        assert np.array_equal(cv2.cvtColor(raw, cv2.COLOR_BGR2RGB), window.latest.frame.image)
        assert np.abs(raw.astype(int) - annotated.astype(int)).sum() > 0
        snap = json.loads(files.tracks.read_text())
        assert snap["frame_index"] == window.latest.frame.index
        assert {t["track_id"] for t in snap["tracks"]} == {r.track_id for r in window.latest.tracks if r.confirmed}

        # Recording (annotated): every frame written is in the MP4.
        window.record_mode.setCurrentText("annotated")
        window._start_recording(tmp_path / "rec.mp4")
        bridge.resume()
        wait_for(lambda: bridge.recorder is not None and bridge.recorder.frames_written >= 12, what="recording")
        summary = bridge.stop_recording().result(timeout=20)
        assert summary.error is None and summary.frames_written >= 12
        with av.open(str(summary.path)) as container:
            decoded = sum(1 for _ in container.decode(video=0))
        assert decoded == summary.frames_written

        # Live confidence threshold: the slider reaches the running analysis.
        window.threshold.setValue(80)
        wait_for(lambda: bridge.pipeline.analysis.score_threshold == pytest.approx(0.8), timeout=5,
                 what="the new threshold in the pipeline")
        assert "0.80" in window.threshold_label.text()

        # Full screen (F11) and back (Esc).
        QTest.keyClick(window, Qt.Key.Key_F11)
        wait_for(window.isFullScreen, timeout=5, what="full screen")
        QTest.keyClick(window, Qt.Key.Key_Escape)
        wait_for(lambda: not window.isFullScreen(), timeout=5, what="leaving full screen")

        # Space pauses and plays.
        QTest.keyClick(window, Qt.Key.Key_Space)
        wait_for(lambda: window.state == "paused", timeout=5, what="paused by Space")
        QTest.keyClick(window, Qt.Key.Key_Space)
        wait_for(lambda: window.state == "playing", timeout=5, what="playing by Space")

        # The status line says what runs.
        wait_for(lambda: (window._stats.get("fps_in") or 0) > 0, timeout=5, what="pipeline statistics")
        settle(0.3)
        text = window.status_text()
        fps_in = re.search(r"([0-9.]+) in \u00b7 ([0-9.]+) out \u00b7 ([0-9.]+) shown fps", text)
        assert fps_in and float(fps_in.group(1)) > 0 and float(fps_in.group(3)) > 0, text
        assert re.search(r"overlay delay \d+ / \d+ ms", text), text
        assert bridge.info.backend != "none" and bridge.info.backend in text
        assert bridge.info.model_info["sizer"]["architecture"] in text and "SYNTHETIC" in text
    finally:
        close_viewer(bridge, window)


# --- the live confidence threshold with the demo detector ----------------------------------
def test_live_threshold_changes_what_is_detected(qapp, tmp_path):
    detector = default_bundle("detector")
    if detector is None:
        pytest.skip("the committed demo detector bundle is not there yet")
    config = load_run_config(None, {"source.demo_loop": False})
    bridge = PipelineBridge(config=config, detector=detector, stats_interval_s=0.2)
    window = ViewerWindow(bridge, ViewerOptions(source="demo", output_dir=tmp_path / "out"))
    window.show()
    seen_on_frame: list[bool] = []
    window.video.frame_painted.connect(lambda index: seen_on_frame.append(
        any(r.confirmed and r.missed == 0 for r in window.video.result.tracks)))
    bridge.open("demo")
    try:
        window.threshold.setValue(5)           # 0.05: the detector's weakest outputs count
        wait_for(lambda: sum(seen_on_frame) >= 3, timeout=30, what="polyps detected at threshold 0.05")
        window.threshold.setValue(100)         # 1.0: nothing the detector outputs passes
        wait_for(lambda: bridge.pipeline.analysis.score_threshold == 1.0, timeout=5, what="threshold 1.0")
        count = len(seen_on_frame)
        # Tracks coast for a few frames; after that no polyp is seen on any frame.
        wait_for(lambda: len(seen_on_frame) >= count + 40, timeout=30, what="40 more frames")
        assert not any(seen_on_frame[count + 20:])
    finally:
        close_viewer(bridge, window)


# --- a file: seek and the seek bar ---------------------------------------------------------
def test_file_seek_moves_position(qapp, tmp_path, synth_file):
    video, truth = synth_file
    bridge, window = open_viewer(str(video), tmp_path, boxes=truth)
    try:
        wait_for(lambda: window.video.frames_painted >= 5, what="frames from the file")
        assert window.seek_bar.isEnabled() and window.seek_bar.maximum() == pytest.approx(3000, abs=60)
        bridge.pause()
        wait_for(lambda: window.state == "paused", what="paused")
        settle(0.3)
        window.seek_to(2.0)
        wait_for(lambda: window.latest is not None and abs(window.latest.frame.pts - 2.0) < 0.1,
                 timeout=10, what="the frame at 2.0 s")
        settle(0.3)
        assert window.seek_bar.value() == pytest.approx(2000, abs=100)
        assert window.time_label.text().startswith("00:02 / 00:03")
        # A file steps frame by frame.
        index = window.latest.frame.index
        QTest.keyClick(window, Qt.Key.Key_Period)
        wait_for(lambda: window.latest.frame.index == index + 1, timeout=10, what="the next frame")
        settle(0.3)
        assert window.latest.frame.index == index + 1
        window.seek_to(0.5)
        wait_for(lambda: abs(window.latest.frame.pts - 0.5) < 0.1, timeout=10, what="the frame at 0.5 s")

        # 4x: the remaining 2.5 s of media play in well under 2.5 s of wall time.
        window.speed.setCurrentIndex(4)
        started = time.monotonic()
        bridge.resume()
        wait_for(lambda: window.state == "ended", timeout=15, what="the end of the file")
        assert time.monotonic() - started < 2.0
        assert window.latest.frame.pts > 2.8
    finally:
        close_viewer(bridge, window)


# --- errors are shown, the program keeps running ----------------------------------------------
def test_bad_source_shows_error_and_app_keeps_running(qapp, tmp_path, synth_file):
    missing = tmp_path / "no-such-video.mp4"
    bridge, window = open_viewer(str(missing), tmp_path)
    try:
        wait_for(lambda: window.state == "error", what="the error state")
        assert str(missing) in window.status_text() and "no such file" in window.status_text()
        assert window.isVisible()
        # A lost live signal is shown over the last picture and in the status line.
        bridge.state_changed.emit("no signal", "read timed out")
        settle(0.1)
        assert window.video.state == "no signal" and "no signal: read timed out" in window.status_text()
        # The same window goes on with a good source.
        video, truth = synth_file
        bridge.boxes = truth
        window.open_source(str(video))
        wait_for(lambda: window.video.frames_painted >= 3, what="frames after the error")
        assert window.state in ("playing", "ended")
    finally:
        close_viewer(bridge, window)


# --- the command line ---------------------------------------------------------------------
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert hagview_main(["--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.yaml" in err[0] and "not found" in err[0]
    assert hagview_main(["--screenshot", str(tmp_path / "s.png")]) == 2
    assert "--exit-after" in capsys.readouterr().err
    assert hagview_main(["--sizer", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_cli_scripted_screenshot(qapp, tmp_path, synth_file):
    video, truth = synth_file
    shot = tmp_path / "shot.png"
    code = hagview_main(["--source", str(video), "--boxes", str(truth), "--screenshot", str(shot),
                         "--exit-after", "10", "--output-dir", str(tmp_path / "out")])
    assert code == 0
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 600


def test_recording_survives_sigkill(tmp_path, synth_file):
    video, truth = synth_file
    record = tmp_path / "killed.mp4"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gui.app", "--source", str(video), "--boxes", str(truth),
                             "--record", str(record), "--record-mode", "raw", "--output-dir", str(tmp_path)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 40
        # Keyframes every second: once 2 s have been written, at least one fragment is complete.
        while time.monotonic() < deadline and proc.poll() is None:
            if record.exists() and record.stat().st_size > 20_000:
                time.sleep(1.8)
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    with av.open(str(record)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) >= 25, f"only {len(frames)} frames survived the kill"
    assert frames[0].shape == (240, 320, 3)


def test_recorder_keeps_time_going_forward_across_a_seek(tmp_path):
    from gui.recorder import Recorder
    from pipeline.types import Frame, FrameResult

    recorder = Recorder(tmp_path / "seek.mp4", mode="raw", fps=25.0)
    pts = [i / 25 for i in range(20)] + [0.2 + i / 25 for i in range(10)]     # a seek back to 0.2 s
    for i, t in enumerate(pts):
        image = np.full((49, 65, 3), (i * 8) % 256, np.uint8)                   # odd sides: cropped to even
        assert recorder.offer(FrameResult(Frame(i, t, image), [], i))        # 2 s of queue: none dropped
    summary = recorder.stop()
    assert summary.error is None and summary.frames_written == 30 and summary.frames_dropped == 0
    with av.open(str(summary.path)) as container:
        frames = list(container.decode(video=0))
    times = [float(f.pts * f.time_base) for f in frames]
    assert len(frames) == 30 and frames[0].width == 64 and frames[0].height == 48
    assert all(b > a for a, b in zip(times, times[1:]))
    assert times[-1] == pytest.approx(29 / 25, abs=1e-3)      # continued one frame after the seek


# --- the display gate and the display buffers --------------------------------------------------
def test_display_gate_is_shut_from_arrival_to_paint_and_analysis_goes_on(qapp, tmp_path, synth_file):
    video, truth = synth_file
    gc.unfreeze()
    bridge, window = open_viewer(str(video), tmp_path, boxes=truth)
    at_arrival, after_paint, held = [], [], []
    bridge_on_result = bridge._on_result

    def watch(session, result):               # on the capture thread, as the pipeline calls it
        at_arrival.append(bridge.display_idle.is_set())
        started = time.perf_counter()
        bridge_on_result(session, result)
        held.append(time.perf_counter() - started)
        after_paint.append(bridge.display_idle.is_set())
    bridge._on_result = watch
    try:
        wait_for(lambda: window.video.frames_painted >= 30 and any(r.confirmed for r in window.latest.tracks),
                 what="30 painted frames with tracks")
        pipe = bridge.pipeline
        assert pipe.graph.gate is bridge.display_idle
        # The viewer is the graph's display sink: a latest-wins slot of one to the GUI thread,
        # the display gate in the scheduling, not in the topology.
        assert pipe.scheduling.display_gate is bridge.display_idle
        flows = [(f.source, f.target, f.policy, f.capacity) for f in pipe.flows()]
        assert flows[0] == ("capture", "display", "latest", 1) and flows[-1] == ("overlay", "display", "call", 0)
        # The capture thread shut the gate before handing each frame on; a paint opened it
        # again, or the capture thread went on after the bound (this test's event loop only
        # runs every 10 ms or so).
        assert at_arrival and not any(at_arrival)
        assert any(after_paint)
        assert max(held) < DISPLAY_WAIT_S + 0.05
        # The analysis kept up behind the gate: most frames were analysed, and stages waited
        # about the bound at most (p95: a stage thread runs at idle priority, so on a busy
        # machine its wake-up after the bound can itself wait for a core; test_graph checks
        # the bound exactly).
        stats = pipe.stats()
        assert stats["latency"]["track"]["count"] >= 0.7 * window.video.frames_painted
        gated = {k: v["p95_ms"] for k, v in stats["latency"].items() if k.endswith(".gate")}
        assert gated and all(ms <= 1000 * GATE_WAIT_S + 10 for ms in gated.values()), gated
    finally:
        close_viewer(bridge, window)
    assert bridge.display_idle.is_set(), "a stopped pipeline leaves the gate open"
    # What was loaded is out of the collector's reach: no full collection walks it mid-video.
    # (Counted once the video has stopped: counting walks the frozen objects holding the lock.)
    assert gc.get_freeze_count() > 50_000


@pytest.mark.parametrize("source, area", [((1920, 1080), (1586, 892)), ((1920, 1080), (1585, 891)),
                                          ((1350, 1080), (1000, 700)), ((1920, 1080), (800, 450)),
                                          ((1280, 720), (1586, 892)), ((1920, 1080), (1919, 1079))])
def test_display_scaling_on_two_threads_is_the_one_thread_picture(source, area):
    """The capture thread and a helper share the bands of a shrunk frame, cut where an output row
    maps onto a whole source row (odd sizes too); the picture is the one-thread one within a grey
    level, bilinear and area-averaged alike (an enlarged frame is scaled on one thread). A helper
    that never runs only means this thread does every band."""
    from concurrent.futures import ThreadPoolExecutor

    from gui.video import _exact_cuts, scale_for_display

    image = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 255, source[::-1] + (3,), dtype=np.uint8), (5, 5), 1)
    one = scale_for_display(image, area)
    with ThreadPoolExecutor(1) as helper:
        two = scale_for_display(image, area, helper=helper)
    assert two.shape == one.shape
    assert np.abs(two.astype(int) - one.astype(int)).max() <= 1
    for rows, source_rows in _exact_cuts(source[1], one.shape[0]):
        assert 0 < rows < one.shape[0] and rows * source[1] == source_rows * one.shape[0]
    with ThreadPoolExecutor(1) as stuck:          # a helper busy elsewhere never takes a band
        release = threading.Event()
        stuck.submit(release.wait, 10)
        alone = scale_for_display(image, area, helper=stuck)
        release.set()
    assert np.abs(alone.astype(int) - one.astype(int)).max() <= 1


def test_display_buffers_are_reused_but_never_one_in_use(qapp):
    from gui.video import scale_for_display

    bridge = PipelineBridge(stats_interval_s=0.2)
    try:
        rng = np.random.default_rng(0)
        frames = [Frame(index=i, pts=i / 30, image=rng.integers(0, 255, (1080, 1920, 3), dtype=np.uint8))
                  for i in range(6)]
        bridge.display_area = lambda: (1586, 892)
        session = bridge._session

        def arrive(index):                    # prepared ahead, then handed over at its media time
            display = bridge._prepare(session, frames[index])
            assert display.shape == (892, 1586, 3)
            np.testing.assert_allclose(display, scale_for_display(frames[index].image, (1586, 892)), atol=1)
            waiting = bridge.frames.peek()
            in_use = [bridge._shown, bridge._painting, waiting.display if waiting else None]
            assert not any(display is other for other in in_use)
            bridge._on_result(session, FrameResult(frame=frames[index], tracks=[], overlay_frame_index=index,
                                                   display=display))
            return display

        handed = [arrive(0)]
        bridge.frame_shown(bridge.take_result().display)     # 0 on screen
        handed.append(arrive(1))
        painting = bridge.take_result()                       # the GUI is painting 1 ...
        handed += [arrive(2), arrive(3)]                      # ... 2 waits and is replaced by 3 ...
        handed.append(arrive(4))                              # ... so 2's buffer is free again
        assert handed[4] is handed[2] and bridge.gui_skipped == 2
        bridge.frame_shown(painting.display)
        assert bridge.frames.peek().frame.index == 4
        buffers = {id(b) for b in bridge._buffers}
        assert len(buffers) == 4 and {id(d) for d in handed} == buffers, "four buffers in turn, no fresh arrays"
        bridge.display_area = lambda: (1920, 1080)
        assert bridge._prepare(session, frames[5]) is None, "a frame that fits is shown as it is"
        assert bridge._prepare(session + 1, frames[5]) is None, "nothing for a replaced session"
    finally:
        bridge.shutdown()
