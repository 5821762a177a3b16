"""pipeline.videowriter: H.264 MP4 writing, timestamps, crash safety (normal and fragmented)."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.errors import DataError
from pipeline.videowriter import H264Writer

ROOT = Path(__file__).resolve().parents[1]


def _frames(n, width=64, height=48):
    """Smooth moving gradients (what a codec with 4:2:0 chroma can reproduce closely)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for i in range(n):
        r = 128 + 100 * np.sin((x + 3 * i) / 9.0)
        g = 128 + 90 * np.cos((y - 2 * i) / 7.0)
        b = 0.5 * (r + g)
        out.append(np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8))
    return out


def _decode(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [(frame.time, frame.to_ndarray(format="rgb24")) for frame in container.decode(stream)]
    return frames


def test_constant_rate_frame_count_and_times(tmp_path):
    path = tmp_path / "cfr.mp4"
    images = _frames(17)
    with H264Writer(path, fps=25, size=(64, 48), crf=18) as writer:
        for image in images:
            writer.write(image)
    decoded = _decode(path)
    assert len(decoded) == 17
    assert [round(t, 6) for t, _ in decoded] == [round(i / 25, 6) for i in range(17)]
    # Lossy, but close to the input at crf 18 (mean absolute error in 8-bit levels).
    assert np.abs(decoded[5][1].astype(int) - images[5].astype(int)).mean() < 4


def test_variable_rate_pts_round_trip(tmp_path):
    path = tmp_path / "vfr.mp4"
    times = [0.0, 0.031, 0.07, 0.1003, 0.2, 0.2101, 0.5, 0.5333]
    with H264Writer(path, fps=30, size=(64, 48)) as writer:
        for t, image in zip(times, _frames(len(times))):
            writer.write(image, pts_seconds=t)
    decoded = _decode(path)
    assert len(decoded) == len(times)
    # 90 kHz time base: every timestamp comes back within one tick.
    for (got, _), want in zip(decoded, times):
        assert abs(got - want) <= 1 / 90000 + 1e-9


def test_exception_leaves_no_file_under_final_name(tmp_path):
    path = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError):
        with H264Writer(path, fps=10, size=(64, 48)) as writer:
            writer.write(_frames(1)[0])
            raise RuntimeError("simulated crash")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []          # the temporary file is gone too


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="even frame size"):
        H264Writer(tmp_path / "odd.mp4", fps=10, size=(63, 48))
    with H264Writer(tmp_path / "ok.mp4", fps=10, size=(64, 48)) as writer:
        with pytest.raises(DataError, match="expected RGB uint8 48x64x3"):
            writer.write(np.zeros((48, 64), dtype=np.uint8))
        writer.write(_frames(1)[0], pts_seconds=0.5)
        with pytest.raises(DataError, match="timestamps must increase"):
            writer.write(_frames(1)[0], pts_seconds=0.5)


def test_fragmented_file_survives_sigkill(tmp_path):
    path = tmp_path / "recording.mp4"
    written = 40
    script = textwrap.dedent(f"""
        import os, signal, sys
        import numpy as np
        sys.path.insert(0, {str(ROOT)!r})
        from pipeline.videowriter import H264Writer
        writer = H264Writer({str(path)!r}, fps=10, size=(64, 48), fragmented=True, keyframe_interval_s=0.5)
        rng = np.random.default_rng(1)
        for i in range({written}):
            writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert path.exists()
    decoded = _decode(path)
    # Everything up to the last completed fragment (one keyframe interval = 5 frames) plays.
    assert written - 5 <= len(decoded) <= written
    assert [round(t, 6) for t, _ in decoded] == [round(i / 10, 6) for i in range(len(decoded))]
