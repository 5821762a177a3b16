"""Malformed inputs: each gives the right result or a one-line error naming the file."""
from __future__ import annotations

import json
import os

import pytest

from _pipeline_media import decode_times, write_audio_only, write_clip, write_pyav
from pipeline.annotate import main as annotate
from pipeline.sources import FileSource
from pipeline.errors import SourceError


def _one_line_error(path, match):
    with pytest.raises(SourceError) as err:
        FileSource(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and match in message, message


def test_zero_bytes(tmp_path):
    path = tmp_path / "zero.mp4"
    path.write_bytes(b"")
    _one_line_error(path, "empty file")


def test_random_bytes(tmp_path):
    path = tmp_path / "random.mp4"
    path.write_bytes(os.urandom(4096))
    _one_line_error(path, "cannot open as video")


def test_directory_and_missing(tmp_path):
    _one_line_error(tmp_path, "is a directory")
    _one_line_error(tmp_path / "nope.mp4", "no such file")


def test_no_video_stream(tmp_path):
    path = tmp_path / "audio.m4a"
    write_audio_only(path)
    _one_line_error(path, "no video stream (streams: audio)")


def test_truncated_mp4_without_index_is_an_error(tmp_path):
    full = tmp_path / "full.mp4"
    write_clip(full, n=30)     # moov at the end: cutting the file loses the index
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    _one_line_error(cut, "cannot open as video")


def test_truncated_faststart_mp4_reads_up_to_the_damage(tmp_path):
    full = tmp_path / "fs.mp4"
    write_pyav(full, 60, 96, 64, options={"movflags": "faststart"})
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.85)])
    with FileSource(cut) as source:
        frames = list(source)
        assert source.counters["truncated"] == 1
    reference = decode_times(full)
    assert 10 < len(frames) < 60
    assert [f.pts for f in frames] == pytest.approx(reference[: len(frames)], abs=1e-6)


def test_truncated_and_corrupt_transport_stream(tmp_path):
    full = tmp_path / "s.ts"
    write_pyav(full, 30, 96, 64, codec="mpeg4", fmt="mpegts")
    data = full.read_bytes()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with FileSource(cut) as source:
        assert 5 < len(list(source)) < 30
    damaged = bytearray(data)
    for offset in range(len(damaged) // 3, len(damaged) // 3 + 400):
        damaged[offset] ^= 0x5A
    bad = tmp_path / "corrupt.ts"
    bad.write_bytes(bytes(damaged))
    with FileSource(bad) as source:
        frames = list(source)
        assert source.counters["corrupt_packets"] >= 1
    assert 25 <= len(frames) < 30
    assert [f.index for f in frames] == list(range(len(frames)))


def test_odd_dimensions_decode_and_render(tmp_path, capsys):
    path = tmp_path / "odd.mp4"
    write_pyav(path, 12, 63, 47, pix_fmt="yuv444p")
    with FileSource(path) as source:
        frames = list(source)
    assert len(frames) == 12 and frames[0].image.shape == (47, 63, 3)
    boxes = tmp_path / "odd.txt"
    boxes.write_text("".join(f"{i + 1},1,10,10,12,12,1,-1,-1,-1\n" for i in range(12)))
    out = tmp_path / "out"
    assert annotate([str(path), "--out", str(out), "--boxes", str(boxes), "--no-sizer", "--render", "--quiet"]) == 0
    rendered = out / "odd" / "annotated.mp4"
    assert decode_times(rendered) == pytest.approx(decode_times(path), abs=1e-4)
    lines = (out / "odd" / "frames.jsonl").read_text().splitlines()
    assert len(lines) == 12 and json.loads(lines[-1])["tracks"][0]["box"] == [10.0, 10.0, 22.0, 22.0]


def test_variable_frame_rate_through_annotate(tmp_path):
    times = [0.0, 0.04, 0.2, 0.25, 0.5, 0.55, 0.6, 1.1, 1.15, 1.2, 1.6, 1.62]
    path = tmp_path / "vfr.mp4"
    write_clip(path, n=len(times), times=times)
    out = tmp_path / "out"
    assert annotate([str(path), "--out", str(out), "--boxes", "auto", "--no-sizer", "--render", "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "vfr" / "frames.jsonl").read_text().splitlines()]
    assert [r["time"] for r in rows] == pytest.approx(times, abs=1e-4)
    assert decode_times(out / "vfr" / "annotated.mp4") == pytest.approx(times, abs=1e-4)


def test_bad_inputs_fail_alone(tmp_path, capsys):
    good = tmp_path / "good.mp4"
    write_clip(good, n=10)
    zero = tmp_path / "zero.mp4"
    zero.write_bytes(b"")
    audio = tmp_path / "audio.m4a"
    write_audio_only(audio)
    out = tmp_path / "out"
    code = annotate([str(zero), str(good), str(audio), "--out", str(out), "--boxes", "auto", "--no-sizer", "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 2, err
    assert any(str(zero) in line and "empty file" in line for line in error_lines)
    assert any(str(audio) in line for line in error_lines)
    assert "Traceback" not in err
    assert (out / "good" / "run.json").is_file() and (out / "good" / "polyps.json").is_file()
    assert not (out / "zero").exists() and not (out / "audio").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]    # no temporary leftovers
