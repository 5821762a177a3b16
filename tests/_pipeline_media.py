"""Tiny real media for the pipeline tests: clips with a moving 'polyp', their ground truth, a
tiny exported sizer bundle (made once per test session), and decoding helpers."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.videowriter import H264Writer

BACKGROUND = (150, 60, 50)
POLYP = (235, 190, 170)


def clip_frames(n: int, width: int, height: int, visible_until: int | None = None):
    """Frames with one square 'polyp' moving right; returns (images, boxes (None when absent))."""
    side = max(8, min(width, height) // 5)
    images, boxes = [], []
    for i in range(n):
        img = np.empty((height, width, 3), np.uint8)
        img[:] = BACKGROUND
        img[::7, :, 1] = 90      # texture, so the tracker's appearance model has something to see
        x = int(4 + i * (width - side - 8) / max(n - 1, 1))
        y = (height - side) // 2
        box = None
        if visible_until is None or i < visible_until:
            img[y:y + side, x:x + side] = POLYP
            box = [float(x), float(y), float(x + side), float(y + side)]
        images.append(img)
        boxes.append(box)
    return images, boxes


def write_clip(path: Path, n: int = 24, width: int = 96, height: int = 64, fps: float = 10.0,
               times: list[float] | None = None, visible_until: int | None = None) -> dict:
    """An H.264 MP4 (pipeline.videowriter) plus `<stem>.gt.json`; returns the ground truth."""
    images, boxes = clip_frames(n, width, height, visible_until)
    times = times if times is not None else [i / fps for i in range(n)]
    with H264Writer(path, fps=fps, size=(width, height), crf=18, threads=1) as writer:
        for img, t in zip(images, times):
            writer.write(img, t)
    gt = {"video": path.stem, "fps": fps, "width": width, "height": height, "num_frames": n, "synthetic": True,
          "polyps": [{"id": 1, "unique_id": f"{path.stem}_1", "diameter_mm": 6.0, "shape": "sessile",
                      "colour": "pink"}],
          "frames": [{"index": i, "time": times[i],
                      "polyps": [] if boxes[i] is None else
                      [{"id": 1, "box": boxes[i], "diameter_mm": 6.0, "distance_mm": 40.0, "visible_fraction": 1.0}]}
                     for i in range(n)]}
    path.with_name(path.stem + ".gt.json").write_text(json.dumps(gt))
    return gt


def write_pyav(path: Path, n: int, width: int, height: int, *, fps: int = 10, codec: str = "libx264",
               pix_fmt: str = "yuv420p", fmt: str | None = None, options: dict | None = None) -> None:
    """A clip written with PyAV directly (odd sizes, other codecs and containers)."""
    images, _ = clip_frames(n, width, height)
    with av.open(str(path), "w", format=fmt, options=options or {}) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = width, height, pix_fmt
        for i, img in enumerate(images):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def write_audio_only(path: Path, seconds: float = 0.5) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        samples = int(16000 * seconds)
        data = (np.sin(np.arange(samples) / 10.0) * 0.3).astype(np.float32)[None, :]
        for start in range(0, samples, 1024):
            frame = av.AudioFrame.from_ndarray(data[:, start:start + 1024], format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = start
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def decode_times(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        return [float(f.time) for f in c.decode(video=0)]


def decode_images(path: Path) -> list[np.ndarray]:
    """Every frame as RGB: PyAV's plain single-threaded decoder, the sources' colour conversion."""
    from pipeline.sources.file import frame_to_rgb
    with av.open(str(path)) as c:
        return [frame_to_rgb(f) for f in c.decode(video=0)]


def tiny_sizer_bundle(tmp_path_factory) -> Path:
    """An untrained, tiny HAG ResNet sizer exported with trainer.export (once per session)."""
    from trainer.export.standin import export_untrained_sizer

    # The TorchScript ("legacy") exporter: the same bundle, seconds faster than dynamo for a test.
    return export_untrained_sizer(tmp_path_factory.getbasetemp() / "tiny-sizer-bundle", input_size=32,
                                  width_mult=0.125, hidden=8, exporter="legacy")


def tiny_detector_bundle(tmp_path_factory) -> Path:
    """An untrained, tiny HAG CenterNet detector exported with trainer.export (once per session)."""
    root = tmp_path_factory.getbasetemp() / "tiny-detector-bundle"
    if (root / "bundle.json").is_file():
        return root
    import torch

    from trainer.export.exporter import export_bundle
    from trainer.models import build_model

    torch.manual_seed(0)
    model = build_model("hag_detector", input_size=64, width_mult=0.125, neck_channels=8, head_channels=8).eval()
    spec = {"size": 64, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "fov_masking": True}
    metadata = {"kind": "detector", "architecture": "hag_detector", "init_kwargs": model.init_kwargs,
                "input_spec": spec, "data": {"kind": "synthetic", "synthetic": True}, "metrics": {}}
    export_bundle(model, metadata, root, exporter="legacy")
    return root
