"""Real stream servers on 127.0.0.1 for the live-source tests and scripts/bench_reconnect.py.

Each server is a separate process that can be killed mid-stream (the network loss) and started
again on the same port (the return):
- "udp": `ffmpeg` pushing MPEG-TS (H.264) to udp://127.0.0.1:PORT, where the viewer listens;
- "http": `ffmpeg -listen 1` serving MPEG-TS at http://127.0.0.1:PORT/live.ts (one client);
- "rtsp-tcp" / "rtsp-udp": GStreamer's RTSP server (tests/_rtsp_server.py) at
  rtsp://127.0.0.1:PORT/live, read with RTP over TCP or UDP;
- "srt": `ffmpeg` as SRT listener, when both that ffmpeg and PyAV's FFmpeg have libsrt.
`unavailable(kind)` says why a kind cannot run here (None when it can). Every server stops by
itself after `seconds`, so a test that dies leaves nothing behind for long.
"""
from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

KINDS = ("udp", "http", "rtsp-tcp", "rtsp-udp", "srt")
SYSTEM_PYTHON = "/usr/bin/python3"      # Debian's interpreter, which python3-gi belongs to
RTSP_SERVER = Path(__file__).with_name("_rtsp_server.py")
SIZE, FPS = (320, 240), 25


def free_port(kind: str = "tcp") -> int:
    family_type = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, family_type) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.lru_cache(maxsize=None)
def _ffmpeg_protocols() -> frozenset[str]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return frozenset()
    out = subprocess.run([ffmpeg, "-hide_banner", "-protocols"], capture_output=True, text=True, timeout=30).stdout
    return frozenset(line.strip() for line in out.splitlines())


@functools.lru_cache(maxsize=None)
def _pyav_has_protocol(name: str) -> bool:
    import av
    try:
        av.open(f"{name}://127.0.0.1:9?mode=caller", timeout=(0.5, 0.5)).close()
    except av.error.ProtocolNotFoundError:
        return False
    except Exception:
        return True
    return True


@functools.lru_cache(maxsize=None)
def _rtsp_server_problem() -> str | None:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} is missing (the RTSP server runs on Debian's python3 with python3-gi)"
    probe = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
             "from gi.repository import Gst; Gst.init(None);"
             "missing = [e for e in ('videotestsrc', 'x264enc', 'rtph264pay') if Gst.ElementFactory.find(e) is None];"
             "print(' '.join(missing))")
    done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return ("GStreamer's RTSP server is not installed (apt: python3-gi gir1.2-gst-rtsp-server-1.0 "
                "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly)")
    if done.stdout.strip():
        return f"GStreamer elements missing: {done.stdout.strip()} (apt: gstreamer1.0-plugins-good/-ugly)"
    return None


def unavailable(kind: str) -> str | None:
    """Why this kind of server cannot run here, or None."""
    if kind in ("udp", "http", "srt") and shutil.which("ffmpeg") is None:
        return "ffmpeg is not installed (apt: ffmpeg)"
    if kind == "srt":
        if "srt" not in _ffmpeg_protocols():
            return "the installed ffmpeg has no libsrt"
        if not _pyav_has_protocol("srt"):
            return "PyAV's bundled FFmpeg has no libsrt, so hagview cannot read srt:// streams"
    if kind.startswith("rtsp"):
        return _rtsp_server_problem()
    return None


def _listening(port: int, proto: str) -> bool:
    """Whether a socket is bound to 127.0.0.1:port (TCP: listening), read from /proc/net so that
    no test connection is made (`ffmpeg -listen 1` serves exactly one client)."""
    wanted = f"0100007F:{port:04X}"
    try:
        lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if fields[1] == wanted and (proto != "tcp" or fields[3] == "0A"):
            return True
    return False


class StreamServer:
    """One server process of `kind`; `url` is what the viewer opens. start()/stop() may repeat."""

    def __init__(self, kind: str, *, seconds: float = 120.0, log_dir: Path | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown stream kind {kind!r}")
        self.kind = kind
        self.seconds = seconds
        self.log_dir = log_dir
        self.port = free_port("udp" if kind in ("udp", "srt") else "tcp")
        self.process: subprocess.Popen | None = None
        host = f"127.0.0.1:{self.port}"
        self.url = {"udp": f"udp://{host}", "http": f"http://{host}/live.ts", "srt": f"srt://{host}?mode=caller",
                    "rtsp-tcp": f"rtsp://{host}/live", "rtsp-udp": f"rtsp://{host}/live"}[kind]
        self.rtsp_transport = "udp" if kind == "rtsp-udp" else "tcp"
        self.starts = 0

    def _command(self) -> list[str]:
        if self.kind.startswith("rtsp"):
            return [SYSTEM_PYTHON, str(RTSP_SERVER), "--port", str(self.port), "--size", f"{SIZE[0]}x{SIZE[1]}",
                    "--fps", str(FPS), "--seconds", str(self.seconds)]
        source = ["-re", "-f", "lavfi", "-i", f"testsrc2=size={SIZE[0]}x{SIZE[1]}:rate={FPS}", "-t", str(self.seconds),
                  "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", str(FPS),
                  "-pix_fmt", "yuv420p", "-f", "mpegts"]
        host = f"127.0.0.1:{self.port}"
        target = {"udp": [f"udp://{host}?pkt_size=1316"], "http": ["-listen", "1", f"http://{host}/live.ts"],
                  "srt": [f"srt://{host}?mode=listener"]}[self.kind]
        return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", *source, *target]

    def start(self, timeout: float = 20.0) -> float:
        """Start the server; returns the monotonic time at which it is ready (listening, or for
        UDP, sending)."""
        assert self.process is None, "already running"
        self.starts += 1
        log = subprocess.DEVNULL
        if self.log_dir is not None:
            log = open(self.log_dir / f"{self.kind}-{self.starts}.log", "wb")
        self.process = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True)
        if log is not subprocess.DEVNULL:
            log.close()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited at start with code {self.process.returncode}")
            if self.kind == "udp" or _listening(self.port, "udp" if self.kind == "srt" else "tcp"):
                return time.monotonic()
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.kind} server did not listen on port {self.port} within {timeout} s")

    def stop(self) -> float:
        """Kill the server at once, as a cable pulled or an encoder switched off; returns the
        monotonic time of the kill."""
        killed = time.monotonic()
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(10)
            self.process = None
        return killed

    def __enter__(self) -> "StreamServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Watcher:
    """Collects a pipeline's states and the frames it sends to the display, with their times."""

    def __init__(self) -> None:
        self.states: list[tuple[float, object]] = []       # (monotonic time, SourceStatus)
        self.frames: list[tuple[float, int]] = []          # (monotonic time, frame index)

    def on_state(self, status) -> None:
        self.states.append((time.monotonic(), status))

    def on_result(self, result) -> None:
        self.frames.append((time.monotonic(), result.frame.index))

    def frames_since(self, t: float) -> list[tuple[float, int]]:
        return [f for f in list(self.frames) if f[0] >= t]

    def first_state_since(self, t: float, state: str):
        return next(((when, s) for when, s in list(self.states) if when >= t and s.state == state), None)

    def wait(self, condition, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > end:
                names = [s.state + (f" ({s.message})" if s.message else "") for _, s in self.states]
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; states: {names}")
            time.sleep(0.01)


def loss_and_return(server: StreamServer, pipeline, watcher: Watcher, *, frames_before: int = 10,
                    down_s: float = 2.0, frames_after: int = 10, timeout: float = 30.0) -> dict:
    """Play `server`'s stream in the started `pipeline` (a LivePipeline reporting to `watcher`),
    kill the server, wait `down_s`, start it again, and measure:
    - no_signal_s: from the kill to the "no signal" state;
    - backlog_s: from the kill to the last frame the display got before that (frames already
      sent, which a reader behind the stream still hands out; ~0 unless the machine is starved);
    - no_signal_after_last_frame_s: what the pipeline itself guarantees (no_signal_after_s);
    - reconnect_s: from the server being ready again to the first frame the display gets.
    The server must be running already."""
    watcher.wait(lambda: len(watcher.frames) >= frames_before, timeout, f"{frames_before} frames")
    killed = server.stop()
    watcher.wait(lambda: watcher.first_state_since(killed, "no signal") is not None, timeout, "no signal")
    lost_at = watcher.first_state_since(killed, "no signal")[0]
    last_frame = max(t for t, _ in list(watcher.frames) if t <= lost_at)
    time.sleep(max(0.0, killed + down_s - time.monotonic()))
    running_while_down = pipeline.error is None and all(t.is_alive() for t in pipeline._threads)
    frames_while_down = len(watcher.frames_since(lost_at))
    ready = server.start()
    watcher.wait(lambda: len(watcher.frames_since(ready)) >= frames_after, timeout, f"{frames_after} frames after the return")
    after = watcher.frames_since(ready)
    return {"kind": server.kind, "no_signal_s": lost_at - killed, "backlog_s": max(0.0, last_frame - killed),
            "no_signal_after_last_frame_s": lost_at - last_frame, "reconnect_s": after[0][0] - ready,
            "down_s": down_s, "frames_while_down": frames_while_down, "running_while_down": running_while_down,
            "states_after_return": [s.state for when, s in list(watcher.states) if when >= ready],
            "indices": [i for _, i in list(watcher.frames)], "source_counters": dict(pipeline.source.counters)}
