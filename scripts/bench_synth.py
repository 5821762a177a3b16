#!/usr/bin/env python
"""Synthetic generator benchmark: frames per second on ONE core.

For each frame size it renders the demo preset and times, per frame:
  render            SyntheticVideo.render (image + ground truth), the streaming path
  render+jpeg       plus JPEG encoding (what writing frames adds)
  full write        generate_dataset end to end: JPEG + VOC XML files, H.264 MP4 (libx264 on
                    one thread), gt.json and gt.txt, in a temporary directory
and the per-video set-up time (texture, lookup tables, camera path). Reported: median, p50/p99
per-frame wall time, fps, the ratio of fps to the 60 fps requirement, and the same from CPU
time (what a frame costs one core even while other processes share the machine).
Printed as a table and saved as JSON under bench-results/.

  .venv/bin/python scripts/bench_synth.py                     # ~1 minute
  .venv/bin/python scripts/bench_synth.py --sizes 640x480 1280x720 --frames 200
"""
from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"          # before numpy loads: one core, as required
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.fsutil import write_json_atomic  # noqa: E402
from trainer.synth import SyntheticVideo, load_synth_config  # noqa: E402
from trainer.synth.writer import generate_dataset  # noqa: E402

TARGET_FPS = 60.0


def _stats(seconds: list[float], cpu_seconds: list[float]) -> dict:
    arr = np.asarray(seconds) * 1e3
    cpu = np.asarray(cpu_seconds) * 1e3
    median = float(np.median(arr))
    cpu_median = float(np.median(cpu))
    return {"frames": len(arr), "median_ms": round(median, 3), "p50_ms": round(float(np.percentile(arr, 50)), 3),
            "p99_ms": round(float(np.percentile(arr, 99)), 3), "fps": round(1e3 / median, 1),
            "ratio_to_60fps": round(1e3 / median / TARGET_FPS, 2),
            # CPU time of this thread: what the frame costs one core even when others share the machine.
            "cpu_median_ms": round(cpu_median, 3), "cpu_fps": round(1e3 / cpu_median, 1)}


def bench_size(width: int, height: int, frames: int, seed: int) -> dict:
    cfg = replace(load_synth_config(preset="demo"), width=width, height=height)
    setup = []
    for k in range(3):
        start = time.perf_counter()
        video = SyntheticVideo(cfg, seed=seed + k)
        setup.append(time.perf_counter() - start)
    step = max(1, video.num_frames // frames)
    indices = list(range(0, video.num_frames, step))[:frames]
    video.render(indices[0])                           # warm caches
    render, with_jpeg, render_cpu, with_jpeg_cpu = [], [], [], []
    for i in indices:
        start, start_cpu = time.perf_counter(), time.thread_time()
        frame = video.render(i)
        mid, mid_cpu = time.perf_counter(), time.thread_time()
        ok, _ = cv2.imencode(".jpg", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        end, end_cpu = time.perf_counter(), time.thread_time()
        render.append(mid - start)
        with_jpeg.append(end - start)
        render_cpu.append(mid_cpu - start_cpu)
        with_jpeg_cpu.append(end_cpu - start_cpu)

    # End to end through the writer, on a clip of about `frames` frames.
    seconds = frames / cfg.fps
    write_cfg = replace(cfg, seconds=seconds)
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        start, start_cpu = time.perf_counter(), time.process_time()
        generate_dataset(Path(tmp) / "run", write_cfg, videos=1, seed=seed, progress=False, encoder_threads=1)
        total, total_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    n_written = write_cfg.num_frames
    full = {"frames": n_written, "total_s": round(total, 3), "mean_ms": round(total / n_written * 1e3, 3),
            "fps": round(n_written / total, 1), "ratio_to_60fps": round(n_written / total / TARGET_FPS, 2),
            "cpu_mean_ms": round(total_cpu / n_written * 1e3, 3), "cpu_fps": round(n_written / total_cpu, 1)}
    return {"size": f"{width}x{height}", "setup_ms_median": round(float(np.median(setup)) * 1e3, 1),
            "render": _stats(render, render_cpu), "render+jpeg": _stats(with_jpeg, with_jpeg_cpu),
            "full_write": full}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["640x480"], help="frame sizes WIDTHxHEIGHT")
    parser.add_argument("--frames", type=int, default=300, help="frames timed per size")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench-results"), help="directory for the JSON")
    args = parser.parse_args()
    cv2.setNumThreads(1)

    results = []
    for size in args.sizes:
        width, height = (int(v) for v in size.lower().split("x"))
        results.append(bench_size(width, height, args.frames, args.seed))

    header = (f"{'size':>10} {'stage':>12} {'median ms':>10} {'p99 ms':>8} {'fps':>8} {'x 60fps':>8} "
              f"{'cpu ms':>8} {'cpu fps':>8}")
    print(header)
    print("-" * len(header))
    for r in results:
        for stage in ("render", "render+jpeg"):
            s = r[stage]
            print(f"{r['size']:>10} {stage:>12} {s['median_ms']:>10.2f} {s['p99_ms']:>8.2f} {s['fps']:>8.1f} "
                  f"{s['ratio_to_60fps']:>8.2f} {s['cpu_median_ms']:>8.2f} {s['cpu_fps']:>8.1f}")
        f = r["full_write"]
        print(f"{r['size']:>10} {'full write':>12} {f['mean_ms']:>10.2f} {'(mean)':>8} {f['fps']:>8.1f} "
              f"{f['ratio_to_60fps']:>8.2f} {f['cpu_mean_ms']:>8.2f} {f['cpu_fps']:>8.1f}")
        print(f"{r['size']:>10} {'video setup':>12} {r['setup_ms_median']:>10.1f}")

    load = [round(v, 2) for v in os.getloadavg()]
    print(f"load average (1/5/15 min) during the run: {load[0]} / {load[1]} / {load[2]} on {os.cpu_count()} CPUs "
          "(wall-clock fps drops when other processes share the cores; cpu ms is this thread's own cost)")
    stamp = dt.datetime.now(dt.timezone.utc)
    report = {"benchmark": "synth", "date": stamp.isoformat(timespec="seconds"), "threads": 1,
              "target_fps": TARGET_FPS, "machine": {"platform": platform.platform(),
                                                    "processor": platform.processor() or platform.machine(),
                                                    "cpus": os.cpu_count(), "load_average": load, "opencv": cv2.__version__,
                                                    "numpy": np.__version__},
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "results": results}
    out = Path(args.out) / f"synth-{stamp.strftime('%Y%m%dT%H%M%SZ')}.json"
    write_json_atomic(out, report)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
