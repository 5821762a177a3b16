"""Video sources: file decoding (timestamps, seeking, threads), reconnects, network loopback."""
from __future__ import annotations

import functools
import http.server
import socketserver
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from _pipeline_media import decode_images, write_clip, write_pyav
from pipeline.sources import FileSource, open_source, source_kind
from pipeline.sources.base import ReconnectingSource, SourceAbsent, SourceStatus, VideoSource
from pipeline.sources.network import open_network, redact, stream_options
from pipeline.errors import SourceError


def test_file_source_frames_and_timestamps(tmp_path):
    path = tmp_path / "cfr.mp4"
    write_clip(path, n=15, fps=10)
    with FileSource(path) as source:
        frames = list(source)
        assert source.counters["corrupt_packets"] == 0 and source.counters["truncated"] == 0
        assert source.fps == pytest.approx(10.0)
        assert source.size == (96, 64)
        assert source.num_frames == 15
    assert [f.index for f in frames] == list(range(15))
    assert [f.pts for f in frames] == pytest.approx([i / 10 for i in range(15)], abs=1e-6)
    assert all(f.image.dtype == np.uint8 and f.image.shape == (64, 96, 3) and f.image.flags.c_contiguous
               for f in frames)
    # Threaded decoding gives the very same pixels as the reference decoder, in order.
    reference = decode_images(path)
    assert all(np.array_equal(a.image, b) for a, b in zip(frames, reference))


def test_frame_to_rgb_matches_swscale_and_defers_to_it_for_other_colour_spaces(tmp_path):
    import av

    from pipeline.sources.file import frame_to_rgb

    path = tmp_path / "colour.mp4"
    write_clip(path, n=3, width=96, height=64)
    with av.open(str(path)) as c:
        frame = next(iter(c.decode(video=0)))
    assert frame.format.name == "yuv420p"
    fast, reference = frame_to_rgb(frame), frame.to_ndarray(format="rgb24")
    assert fast.shape == reference.shape and fast.dtype == np.uint8 and fast.flags.c_contiguous
    diff = np.abs(fast.astype(int) - reference)
    # Same BT.601 limited-range matrix; only rounding and chroma interpolation differ.
    assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 6, (diff.mean(), diff.max())
    # A BT.709-tagged frame (HD content) and a full-range one go through swscale, which honours them.
    planes = frame.to_ndarray()
    for attribute, value in (("colorspace", 1), ("color_range", 2)):
        tagged = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        setattr(tagged, attribute, value)
        assert np.array_equal(frame_to_rgb(tagged), tagged.to_ndarray(format="rgb24"))


def test_variable_frame_rate_keeps_its_timestamps(tmp_path):
    times = [0.0, 0.1, 0.15, 0.4, 0.45, 0.5, 0.9, 1.0, 1.05, 1.3]
    path = tmp_path / "vfr.mp4"
    write_clip(path, n=len(times), times=times)
    with FileSource(path, threaded=False) as source:
        assert [f.pts for f in source] == pytest.approx(times, abs=1e-4)


def test_seek_lands_on_the_exact_frame(tmp_path):
    times = [0.0, 0.1, 0.15, 0.4, 0.45, 0.5, 0.9, 1.0, 1.05, 1.3]
    path = tmp_path / "vfr.mp4"
    write_clip(path, n=len(times), times=times)
    reference = decode_images(path)
    with FileSource(path) as source:
        for target, index in ((0.42, 4), (1.0, 7), (0.0, 0), (0.9, 6), (5.0, 9)):
            source.seek(target)
            frame = source.read()
            assert frame.index == index and frame.pts == pytest.approx(times[index], abs=1e-4)
            assert np.array_equal(frame.image, reference[index])
        nxt = source.read()
        assert nxt is None       # sought to the end (5.0 -> last frame): nothing after it


def test_open_source_dispatch(tmp_path):
    assert source_kind("demo") == "demo"
    assert source_kind("/dev/video3") == "capture" and source_kind("2") == "capture"
    for url in ("rtsp://cam/1", "udp://127.0.0.1:5000", "srt://h:1", "https://x/y.m3u8"):
        assert source_kind(url) == "network"
    assert source_kind(str(tmp_path / "a.mp4")) == "file"
    with pytest.raises(SourceError, match="unsupported stream scheme"):
        source_kind("gopher://x")
    with pytest.raises(SourceError, match="no such file"):
        open_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(SourceError, match="no such capture device"):
        open_source("/dev/video99", live=False)      # offline work fails; the viewer waits (below)
    not_a_device = tmp_path / "video0"
    not_a_device.write_bytes(b"\0" * 64)
    from pipeline.sources.capture import open_capture
    for backend in ("pyav", "opencv"):
        with pytest.raises(SourceError, match="cannot open"):
            open_capture(str(not_a_device), backend=backend, open_timeout_s=1.0)


def test_network_options_bound_every_wait():
    opts = stream_options("rtsp://cam/1", 2.0)
    assert opts["timeout"] == "2000000" and opts["rtsp_transport"] == "tcp"
    assert stream_options("http://h/x.ts", 1.5)["rw_timeout"] == "1500000"
    assert stream_options("udp://127.0.0.1:5000", 0.5)["timeout"] == "500000"
    assert redact("rtsp://user:secret@cam:554/s") == "rtsp://user:***@cam:554/s"


class _FlakyOpener:
    """Opens a short real file; fails `failures` times before each later successful open."""

    def __init__(self, path, failures: int):
        self.path, self.failures, self.calls, self._left = path, failures, 0, 0

    def __call__(self):
        self.calls += 1
        if self._left > 0:
            self._left -= 1
            raise SourceError("device unplugged")
        self._left = self.failures    # the next loss takes `failures` attempts to recover
        return FileSource(self.path, threaded=False)


def test_reconnecting_source_recovers_after_the_stream_stops(tmp_path):
    path = tmp_path / "short.mp4"
    write_clip(path, n=5, fps=10)
    states: list[SourceStatus] = []
    opener = _FlakyOpener(path, failures=3)
    source = ReconnectingSource(opener, "cam", no_signal_after_s=0.15, backoff_initial_s=0.05,
                                backoff_max_s=0.1, on_state=states.append)
    source.open()
    frames = [source.read() for _ in range(12)]     # 5 frames, lost, 5 frames, lost, 2 frames
    source.close()
    assert [f.index for f in frames] == list(range(12))
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:])), pts
    assert pts[5] == pytest.approx(0.5, abs=1e-6)      # continues one nominal frame after 0.4
    names = [s.state for s in states]
    assert names[0] == "playing"
    assert "no signal" in names and "reconnecting" in names
    assert names.index("no signal") < len(names) - 1 and names[-1] == "playing"
    assert source.counters["reconnects"] == 2 and source.counters["open_failures"] == 6
    assert opener.calls == 1 + 2 * 4


def test_reconnecting_source_gives_up_when_told_to(tmp_path):
    def opener():
        raise SourceError("cam: no such capture device")
    source = ReconnectingSource(opener, "cam", backoff_initial_s=0.01, backoff_max_s=0.02, max_attempts=3)
    with pytest.raises(SourceError, match="gave up after 3"):
        source.read()


def test_interrupt_ends_a_reconnect_wait():
    def opener():
        raise SourceError("gone")
    source = ReconnectingSource(opener, "cam", backoff_initial_s=5.0, backoff_max_s=5.0)
    threading.Timer(0.2, source.interrupt).start()
    started = time.monotonic()
    assert source.read() is None
    assert time.monotonic() - started < 2.0


class _Handler(http.server.SimpleHTTPRequestHandler):
    stall_after: int | None = None
    release = threading.Event()

    def log_message(self, *args):
        pass

    def copyfile(self, source, outputfile):
        if self.path.endswith("stall.ts"):
            outputfile.write(source.read(self.stall_after))
            outputfile.flush()
            self.release.wait(5.0)          # hold the connection open, sending nothing
            return
        super().copyfile(source, outputfile)


@pytest.fixture
def http_server(tmp_path):
    handler = functools.partial(_Handler, directory=str(tmp_path))
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _Handler.release.set()
    server.shutdown()
    server.server_close()
    _Handler.release.clear()


def test_network_stream_over_loopback_reconnects_when_it_ends(tmp_path, http_server):
    write_pyav(tmp_path / "live.ts", n=8, width=64, height=48, codec="mpeg4", fmt="mpegts")
    states = []
    source = open_network(f"{http_server}/live.ts", read_timeout_s=1.0, backoff_initial_s=0.05,
                          on_state=states.append)
    frames = [source.read() for _ in range(20)]
    source.close()
    assert [f.index for f in frames] == list(range(20))
    assert [f.pts for f in frames[:8]] == pytest.approx([i / 10 for i in range(8)], abs=1e-6)
    assert all(b.pts > a.pts for a, b in zip(frames, frames[1:]))
    assert source.counters["reconnects"] == 2            # 8 + 8 + 4 frames
    assert [s.state for s in states].count("reconnecting") == 2


def test_network_stall_reports_no_signal_then_reconnects(tmp_path, http_server):
    path = tmp_path / "stall.ts"
    write_pyav(path, n=30, width=64, height=48, codec="mpeg4", fmt="mpegts")
    _Handler.stall_after = path.stat().st_size // 2
    states = []
    started = time.monotonic()
    source = open_network(f"{http_server}/stall.ts", read_timeout_s=0.5, no_signal_after_s=0.5,
                          backoff_initial_s=0.05, on_state=lambda s: states.append((time.monotonic() - started, s)))
    frames = []
    while len(frames) < 20:
        frames.append(source.read())
    source.close()
    names = [s.state for _, s in states]
    assert "no signal" in names, names
    lost_at = next(t for t, s in states if s.state == "no signal")
    assert 0.4 < lost_at < 3.0
    assert names[-1] == "playing" and source.counters["reconnects"] >= 1
    assert [f.index for f in frames] == list(range(20))


def test_bad_stream_url_is_one_line(http_server):
    with pytest.raises(SourceError) as err:
        open_network(f"{http_server}/missing.ts", open_timeout_s=2.0)
    assert "404" in str(err.value) and "\n" not in str(err.value)


def _small_demo_config(seconds=1.0):
    from trainer.synth import load_synth_config
    from trainer.synth.config import apply_overrides
    return apply_overrides(load_synth_config(None, "demo"), {"width": 160, "height": 120, "seconds": seconds})


def test_demo_source_is_paced_and_carries_ground_truth():
    from pipeline.sources.demo import DemoSource
    config = _small_demo_config(seconds=0.6)      # 15 frames at 25 fps
    source = DemoSource(synth_config=config, seed=3, paced=True, loop=True)
    assert source.is_live and source.fps == 25.0 and source.size == (160, 120)
    started = time.perf_counter()
    frames = [source.read() for _ in range(20)]    # runs into the second (looped) video
    elapsed = time.perf_counter() - started
    source.close()
    assert elapsed >= 19 / 25 - 0.02                 # never faster than real time
    assert [f.index for f in frames] == list(range(20))
    assert all(b.pts > a.pts for a, b in zip(frames, frames[1:]))
    assert frames[16].pts == pytest.approx(16 / 25, abs=1e-6)
    assert all(f.image.shape == (120, 160, 3) for f in frames)
    truth = [g for f in frames[:15] for g in f.ground_truth]
    assert truth and all(g.diameter_mm > 0 and g.box[2] > g.box[0] for g in truth)
    later = [g.polyp_id for f in frames[15:] for g in f.ground_truth]
    assert all(pid > 1000 for pid in later)          # ids of the next loop cannot collide


def test_demo_source_offline_is_finite():
    from pipeline.sources.demo import DemoSource
    source = DemoSource(synth_config=_small_demo_config(seconds=0.4), paced=False, loop=False)
    assert source.num_frames == 10 and source.duration == pytest.approx(0.4)
    assert len(list(source)) == 10


def test_udp_stream_on_loopback_survives_a_pause_in_the_sender(tmp_path):
    import socket
    path = tmp_path / "u.ts"
    write_pyav(path, 30, 64, 48, codec="mpeg4", fmt="mpegts")
    data = path.read_bytes()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    sending, stop = threading.Event(), threading.Event()
    sending.set()

    def sender():
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        while not stop.is_set():
            if not sending.wait(0.05):
                continue
            for i in range(0, len(data), 1316):
                out.sendto(data[i:i + 1316], ("127.0.0.1", port))
                time.sleep(0.0005)
            time.sleep(0.3)        # 30 frames per 0.3 s: about 100 fps, so the receiver never lags far
        out.close()
    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    states = []
    source = open_network(f"udp://127.0.0.1:{port}", open_timeout_s=2.0, read_timeout_s=0.5,
                          no_signal_after_s=0.5, backoff_initial_s=0.05, on_state=states.append)
    try:
        frames = [source.read() for _ in range(10)]
        sending.clear()                                   # the sender goes quiet ...
        resume = threading.Timer(1.5, sending.set)        # ... and comes back
        resume.start()
        while not any(s.state == "no signal" for s in states) and len(frames) < 300:
            frames.append(source.read())                  # what was already buffered, then no signal
        frames += [source.read() for _ in range(10)]
        resume.join()
    finally:
        stop.set()
        source.close()
        thread.join(2)
    names = [s.state for s in states]
    assert "no signal" in names and names[-1] == "playing", names
    assert len(frames) < 300 and [f.index for f in frames] == list(range(len(frames)))
    assert all(b.pts > a.pts for a, b in zip(frames, frames[1:]))
    assert frames[0].image.shape == (48, 64, 3) and source.counters["reconnects"] >= 1


# --- capture devices through the spec-string route -------------------------------------------------
class FileBackedDevice(VideoSource):
    """Stands in for `capture.PyAVCapture` (same constructor): plays a real H.264 file paced at its
    frame rate, looping as a camera never ends, behind the device interface. `nodes` maps a device
    path to a node file: absent node = device absent (SourceAbsent at open); a node removed while
    playing = the cable pulled (the next read fails, as V4L2's ENODEV does)."""

    is_live = True
    nodes: dict[str, Path] = {}
    requests: list[tuple] = []

    def __init__(self, device: str, *, width: int, height: int, fps: float, pixel_format: str,
                 open_timeout_s: float, read_timeout_s: float) -> None:
        super().__init__()
        self.name = device
        self._node = self.nodes.get(device)
        if self._node is None or not self._node.exists():
            raise SourceAbsent(f"{device}: no such capture device")
        if pixel_format not in ("mjpeg", "yuyv422"):
            raise SourceError(f"{device}: cannot open capture device (Invalid argument)")
        self.requests.append((device, width, height, fps, pixel_format))
        self._file = FileSource(self._node.resolve(), threaded=False)
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._index = 0

    @property
    def fps(self):
        return self._file.fps

    @property
    def size(self):
        return self._file.size

    def read(self):
        if not self._node.exists():
            raise SourceError(f"{self.name}: read failed (No such device)")
        frame = self._file.read()
        if frame is None:
            self._file.seek(0.0)
            frame = self._file.read()
        frame.index, frame.pts = self._index, self._index / self.fps
        self._index += 1
        if self._stop.wait(max(0.0, self._start + frame.pts - time.monotonic())):
            return None
        return frame

    def interrupt(self):
        self._stop.set()

    def close(self):
        self._file.close()


@pytest.fixture
def fake_device(tmp_path, monkeypatch):
    """("/dev/video7", plug(), unplug()): the device opener replaced by FileBackedDevice."""
    from pipeline.sources import capture

    clip = tmp_path / "camera.mp4"
    write_clip(clip, n=20, width=96, height=64, fps=25)
    node = tmp_path / "video7"
    monkeypatch.setattr(capture, "PyAVCapture", FileBackedDevice)
    monkeypatch.setattr(FileBackedDevice, "nodes", {"/dev/video7": node})
    monkeypatch.setattr(FileBackedDevice, "requests", [])
    return "/dev/video7", lambda: node.symlink_to(clip), node.unlink


def _device_pipeline(spec, tmp_path, states, frames):
    from pipeline.config import load_run_config
    from pipeline.runtime import LivePipeline

    config = load_run_config(None, {"source.width": 96, "source.height": 64, "source.fps": 25})
    return LivePipeline(spec, config, boxes=tmp_path / "camera.gt.json",
                        on_state=lambda s: states.append((time.monotonic(), s)),
                        on_result=lambda r: frames.append((time.monotonic(), r.frame.index)))


def _wait(condition, what, timeout=20.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_capture_device_plays_through_the_pipeline_and_survives_unplug_and_replug(fake_device, tmp_path):
    spec, plug, unplug = fake_device
    plug()
    states, frames = [], []
    pipe = _device_pipeline(spec, tmp_path, states, frames)
    try:
        pipe.start()
        _wait(lambda: len(frames) >= 10, "frames")
        assert FileBackedDevice.requests[0] == ("/dev/video7", 96, 64, 25.0, "mjpeg")   # the config reached it
        unplugged = time.monotonic()
        unplug()
        _wait(lambda: any(t >= unplugged and s.message == "waiting for /dev/video7" for t, s in states), "waiting")
        lost = next(t for t, s in states if t >= unplugged and s.state == "no signal")
        assert lost - unplugged <= 2.0
        time.sleep(0.6)                       # the program keeps running, waiting for the device
        assert pipe.error is None and pipe.state == SourceStatus("no signal", "waiting for /dev/video7")
        replugged = time.monotonic()
        plug()
        _wait(lambda: len([f for f in frames if f[0] >= replugged]) >= 10, "frames after the replug")
    finally:
        pipe.stop()
    # The device is looked for every reconnect_initial_s (0.5 s) while absent; it then opens at once.
    first_after = next(t for t, _ in frames if t >= replugged)
    assert first_after - replugged <= 0.5 + 5.0, "found by the next look (0.5 s) plus its opening"
    names = [s.state for t, s in states if t >= unplugged]
    assert names[0] == "no signal" and names[-1] == "playing", names
    assert [i for _, i in frames] == list(range(len(frames)))
    assert pipe.source.counters["reconnects"] == 1


def test_absent_device_is_waited_for_then_connected(fake_device, tmp_path):
    spec, plug, _ = fake_device
    states, frames = [], []
    # The state is reported from inside the constructor (this raised AttributeError before the
    # pipeline built its control state before opening the source).
    pipe = _device_pipeline(spec, tmp_path, states, frames)
    try:
        assert pipe.state == SourceStatus("no signal", "waiting for /dev/video7")
        pipe.start()
        time.sleep(1.2)       # past no_signal_after_s: still the same, nothing else reported
        assert not frames and [s for _, s in states] == [SourceStatus("no signal", "waiting for /dev/video7")]
        plug()
        _wait(lambda: len(frames) >= 5, "frames once the device appears")
    finally:
        pipe.stop()
    assert pipe.error is None and states[-1][1].state == "playing"
    assert [i for _, i in frames] == list(range(len(frames)))


def test_annotate_fails_in_one_line_for_a_missing_file_or_a_device(tmp_path, capsys):
    from pipeline.annotate import main as annotate
    from pipeline.cli_util import EXIT_FAILURE

    for spec, message in ((str(tmp_path / "missing.mp4"), "no such file"),
                          ("/dev/video99", "reads files (live sources: use hagview --source)")):
        assert annotate([spec, "--out", str(tmp_path / "out"), "--boxes", "ground-truth", "--quiet"]) == EXIT_FAILURE
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and spec in err[0], err
