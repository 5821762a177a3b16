#!/usr/bin/env python
"""Detector latency per backend at the bundle's input size, batch 1, decoding included.

For every available backend (onnxruntime, torch; torch-compile with --compile; CUDA ones where
present) the detector bundle runs through `pipeline.detecting.PolypDetector` on real synthetic
frames (640x480 by default, rendered once before timing), the way the pipeline calls it: the
video's FOV mask is cached, so a frame costs letterbox + normalise, inference, decoding and
the mapping back to frame pixels. Per backend: median, p50, p99 and mean of the whole call
and of each part (prepare, infer, decode), and frames per second. Baselines measured in the
same run: eager PyTorch (the `torch` backend) for the speed-up ratios, and the FOV estimate
per frame (what an uncached call would add). Figures are printed as a table and saved as JSON
under bench-results/.

  .venv/bin/python scripts/bench_detector.py                         # the committed demo bundle
  .venv/bin/python scripts/bench_detector.py --bundle DIR --frames 300 --threads 2
  .venv/bin/python scripts/bench_detector.py --bundle A --bundle B --backends onnxruntime   # compare
Target on a 2-core CPU: onnxruntime at most 20 ms per frame. The machine's load average (1 min)
before and after each bundle is recorded: on a shared CPU a figure taken under load is an upper
bound, so measure when the machine is quiet (the report says how quiet it was).
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from pipeline.detecting import PolypDetector  # noqa: E402
from pipeline.engines import BACKENDS, load_engine, unavailable_reason  # noqa: E402
from pipeline.fov import estimate_fov_mask  # noqa: E402
from pipeline.bundle import load_bundle  # noqa: E402
from pipeline.fsutil import write_json_atomic  # noqa: E402

log = logging.getLogger("bench_detector")
TARGET_MS = 20.0
DEFAULT_BUNDLE = ROOT / "pipeline" / "assets" / "bundles" / "detector"


def render_frames(count: int, size: tuple[int, int], seed: int) -> list[np.ndarray]:
    from trainer.synth import SynthConfig, SyntheticVideo
    from trainer.synth.config import PolypConfig

    cfg = SynthConfig(width=size[0], height=size[1], fps=25.0, seconds=count / 25.0,
                      polyps=PolypConfig(min_count=2, max_count=3))
    return [f.image for f in SyntheticVideo(cfg, seed=seed, name="bench").frames()][:count]


def stats_ms(seconds: list[float]) -> dict[str, float]:
    a = np.asarray(seconds) * 1000.0
    return {"median_ms": float(np.median(a)), "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "min_ms": float(a.min())}


def time_detector(detector: PolypDetector, frames: list[np.ndarray], fov: np.ndarray,
                  warmup: int) -> dict:
    for i in range(warmup):
        detector.detect(frames[i % len(frames)], fov)
    total, parts = [], {"prepare_s": [], "infer_s": [], "decode_s": []}
    detections = 0
    for frame in frames:
        started = time.perf_counter()
        found = detector.detect(frame, fov)
        total.append(time.perf_counter() - started)
        detections += len(found)
        for key in parts:
            parts[key].append(detector.last_timing[key])
    out = {"total": stats_ms(total), **{k[:-2]: stats_ms(v) for k, v in parts.items()}}
    out["fps"] = 1000.0 / out["total"]["median_ms"]
    out["detections_per_frame"] = detections / len(frames)
    return out


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", action="append", default=None,
                        help="detector bundle directory (repeat to compare; default: the committed one)")
    parser.add_argument("--backends", default="onnxruntime,torch",
                        help="comma-separated CPU backends to time (torch is the eager baseline)")
    parser.add_argument("--frames", type=int, default=200, help="timed frames per backend")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--frame-size", default="640x480", help="WIDTHxHEIGHT of the video frames")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per backend")
    parser.add_argument("--compile", action="store_true", help="also time torch-compile")
    parser.add_argument("--score-threshold", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=2024, help="seed of the rendered frames")
    parser.add_argument("--out", default=str(ROOT / "bench-results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    width, height = (int(v) for v in args.frame_size.lower().split("x"))
    print(f"rendering {args.frames} synthetic {width}x{height} frames ...", flush=True)
    frames = render_frames(args.frames, (width, height), args.seed)
    fov = estimate_fov_mask(frames[0])
    reports = [bench_bundle(load_bundle(path), frames, fov, (width, height), args)
               for path in (args.bundle or [str(DEFAULT_BUNDLE)])]
    if len(reports) > 1:
        print(f"\n{'bundle':<44}{'input':>6}{'onnxruntime ms':>16}{'p99':>8}{'load before/after':>20}")
        for r in reports:
            ort = r["results"].get("onnxruntime-cpu", {}).get("total", {})
            print(f"{Path(r['bundle']).name[-43:]:<44}{r['input_size'][0]:>6}{ort.get('median_ms', float('nan')):>16.2f}"
                  f"{ort.get('p99_ms', float('nan')):>8.2f}{str(r['load_average_1min']):>20}")
    return 0


def bench_bundle(bundle, frames: list[np.ndarray], fov: np.ndarray, frame_size: tuple[int, int], args) -> dict:
    width, height = frame_size
    load_before = load_average()

    fov_times = []
    for frame in frames[: min(50, len(frames))]:
        started = time.perf_counter()
        estimate_fov_mask(frame)
        fov_times.append(time.perf_counter() - started)

    backends = [b for b in args.backends.split(",") if b] + (["torch-compile"] if args.compile else [])
    results, skipped = {}, {}
    for backend in backends:
        reason = unavailable_reason(backend, bundle, "cpu")
        if reason:
            skipped[backend] = reason
            continue
        engine = load_engine(bundle, backend=backend, threads=args.threads, device="cpu")
        detector = PolypDetector(engine, score_threshold=args.score_threshold)
        print(f"timing {engine.describe()} ...", flush=True)
        results[f"{backend}-cpu"] = time_detector(detector, frames, fov, args.warmup)
    for backend in ("torch", "tensorrt"):
        if unavailable_reason(backend, bundle, "cuda") is None:
            engine = load_engine(bundle, backend=backend, device="cuda")
            detector = PolypDetector(engine, score_threshold=args.score_threshold)
            results[f"{backend}-cuda"] = time_detector(detector, frames, fov, args.warmup)
    for backend in BACKENDS:
        if backend not in backends and backend != "tensorrt":
            skipped.setdefault(backend, "not requested (--compile)" if backend == "torch-compile" else "not requested")

    baseline = results.get("torch-cpu", {}).get("total", {}).get("median_ms")
    for row in results.values():
        row["speedup_vs_torch_eager"] = baseline / row["total"]["median_ms"] if baseline else None
        row["decode_share"] = row["decode"]["median_ms"] / row["total"]["median_ms"]
    ort = results.get("onnxruntime-cpu")
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "bundle": str(bundle.path), "architecture": bundle.architecture,
        "init_kwargs": bundle.init_kwargs, "input_size": bundle.input_size,
        "frame_size": [width, height], "frames": len(frames), "batch": 1, "threads": args.threads,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "fov_estimate_per_frame": stats_ms(fov_times),
        "results": results, "skipped": skipped,
        "target_ms": TARGET_MS,
        "load_average_1min": [load_before, load_average()], "cpu_count": os.cpu_count(),
        "onnxruntime_meets_target": bool(ort and ort["total"]["median_ms"] <= TARGET_MS),
    }

    print(f"\ndetector {bundle.architecture} {bundle.init_kwargs} input {bundle.input_size[0]}px, "
          f"frames {width}x{height}, batch 1, {args.threads} thread(s), {len(frames)} frames")
    header = (f"{'backend':<18}{'median ms':>10}{'p99 ms':>9}{'prepare':>9}{'infer':>9}{'decode':>9}"
              f"{'fps':>8}{'vs eager':>10}")
    print(header)
    print("-" * len(header))
    for name, row in results.items():
        ratio = row["speedup_vs_torch_eager"]
        print(f"{name:<18}{row['total']['median_ms']:>10.2f}{row['total']['p99_ms']:>9.2f}"
              f"{row['prepare']['median_ms']:>9.2f}{row['infer']['median_ms']:>9.2f}"
              f"{row['decode']['median_ms']:>9.3f}{row['fps']:>8.1f}"
              f"{(f'{ratio:.2f}x' if ratio else '-'):>10}")
    for name, reason in skipped.items():
        print(f"{name:<18}skipped: {reason}")
    print(f"FOV estimate (uncached, per frame): median {report['fov_estimate_per_frame']['median_ms']:.2f} ms")
    if ort:
        verdict = "meets" if report["onnxruntime_meets_target"] else "MISSES"
        print(f"onnxruntime median {ort['total']['median_ms']:.2f} ms {verdict} the {TARGET_MS:.0f} ms target")
    print(f"load average (1 min) before/after: {report['load_average_1min']} on {os.cpu_count()} cores")
    path = Path(args.out) / f"detector-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S%fZ}.json"
    write_json_atomic(path, report)
    print(f"saved {path}")
    return report


if __name__ == "__main__":
    sys.exit(main())
