#!/usr/bin/env python
"""Offline annotation at real resolutions: where the CPU goes per frame, and what users feel.

Videos: the synthetic generator's demo preset rendered at 640x480 and scaled (bicubic) to each
size asked for, 25 fps, written as H.264 CRF 18 (rendering 1080p directly costs ~0.6 s a frame
here). Models: the committed demo bundles on onnxruntime.

  --profile   per-stage CPU table (ms of CPU per frame, `time.process_time` around each stage in
              one plain loop: unthreaded decoding, one inference thread, so every stage's work
              is on the measuring thread): decode (+ colour conversion), FOV, detector input
              (letterbox, normalise), detector inference, tracking, sizer input (crops, masked
              frame), sizer inference, quality (border, blur), smoothing, overlay drawing, H.264
              encoding, and the total. Sizer inference runs only on the frames the scheduler picks.
  --throughput  hagview-annotate itself, each run in a fresh process: fps and real-time factor
              without and with --render (frames / wall time of the whole command, start-up and
              report included), the steady rate of the frame loop alone (run.json's
              stats.average_fps_out) and the fixed cost per video (wall time minus frames at that
              rate: imports, model loading, the report), peak resident memory (ru_maxrss).
              The clips last 60 s by default, so the fixed cost weighs as little as on a real
              recording (15-40 minutes) but still counts.
  --jobs      hagview-annotate --jobs 2 on four short videos against --jobs 1 (wall time).
  --memory M  resident memory over M minutes of 1080p video annotated with --render (the clip
              looped, frame indices and times running on, as one long recording): VmRSS sampled
              every 250 frames, its peak and its growth after the first minute.

  .venv/bin/python scripts/bench_offline.py --profile --throughput
  .venv/bin/python scripts/bench_offline.py --profile --sizes 1920x1080 --profile-frames 100

The machine's load average is printed and saved with the figures: on a busy machine wall-clock
figures (fps) move with the load; the CPU per stage much less. Results: a table on stdout and
JSON in bench-results/offline.json (--out).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402

FPS = 25.0
STAGES = ("decode", "fov", "detect.input", "detect.infer", "track", "size.input", "size.infer", "quality",
          "smooth", "overlay", "encode")


def make_video(path: Path, size: tuple[int, int], seconds: float, seed: int = 3) -> Path:
    """The demo preset rendered at 640x480, scaled to `size`, 25 fps H.264 (cached by name)."""
    if path.is_file():
        return path
    from pipeline.videowriter import H264Writer
    from trainer.synth import SyntheticVideo, load_synth_config
    from trainer.synth.config import apply_overrides

    cfg = apply_overrides(load_synth_config(None, "demo"), {"width": 640, "height": 480, "seconds": seconds,
                                                            "fps": FPS})
    tmp = path.with_suffix(".tmp.mp4")
    with H264Writer(tmp, fps=FPS, size=size, crf=18, threads=1) as writer:
        for frame in SyntheticVideo(cfg, seed=seed).frames():
            image = frame.image if size == (640, 480) else cv2.resize(frame.image, size, interpolation=cv2.INTER_CUBIC)
            writer.write(image, frame.time)
    tmp.rename(path)
    return path


class CpuClock:
    """CPU seconds per named stage, summed over frames (process CPU: all threads of this process)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)

    def time(self, name: str, fn, *args, **kwargs):
        start = time.process_time()
        out = fn(*args, **kwargs)
        self.seconds[name] += time.process_time() - start
        return out


def profile(video: Path, max_frames: int) -> dict:
    """One plain loop over the first `max_frames` frames, every stage timed on its own (module doc)."""
    from pipeline.config import load_run_config
    from pipeline.loading import build_analysis, default_bundle
    from pipeline.overlay import draw_overlay
    from pipeline.sources import FileSource
    from pipeline.videowriter import H264Writer
    from pipeline.work import Work

    config = load_run_config(None, {"runtime.inference_threads": 1})
    analysis, info = build_analysis(config, sizer=default_bundle("sizer"), detector=default_bundle("detector"),
                                    backend="onnxruntime", offline=True)
    clock = CpuClock()
    detector, sizer = analysis.detector, analysis.sizer
    # Split the detector's and the sizer's CPU into input preparation and inference.
    run_detector, run_sizer = detector.engine.run, sizer.engine.run
    detector.engine.run = lambda inputs: clock.time("detect.infer", run_detector, inputs)
    sizer.engine.run = lambda inputs: clock.time("size.infer", run_sizer, inputs)
    assess = analysis.smooth.quality.assess
    analysis.smooth.quality.assess = lambda *a, **k: clock.time("quality", assess, *a, **k)
    source = FileSource(video, threaded=False)
    scratch = Path(tempfile.mkdtemp(prefix="hagview-profile-"))
    writer = H264Writer(scratch / "out.mp4", fps=FPS, size=source.size, crf=config.output.render_crf,
                        preset=config.output.render_preset, threads=1)
    analysis.reset()
    frames = 0
    try:
        while frames < max_frames:
            frame = clock.time("decode", source.read)
            if frame is None:
                break
            work = Work(frame=frame, generation=analysis.generation)
            work = clock.time("fov", analysis.preprocess.process, work)
            before = clock.seconds["detect.infer"]
            work = clock.time("detect.input", analysis.detect.process, work)
            clock.seconds["detect.input"] -= clock.seconds["detect.infer"] - before
            work = clock.time("track", analysis.track.process, work)
            before = clock.seconds["size.infer"]
            work = clock.time("size.input", analysis.size.process, work)
            clock.seconds["size.input"] -= clock.seconds["size.infer"] - before
            before = clock.seconds["quality"]
            work = clock.time("smooth", analysis.smooth.process, work)
            clock.seconds["smooth"] -= clock.seconds["quality"] - before
            drawn = clock.time("overlay", draw_overlay, frame.image, work.reports or [],
                               synthetic=info["synthetic"], line_width=config.output.overlay_line_width)
            clock.time("encode", writer.write, drawn, frame.pts)
            frames += 1
    finally:
        writer.close()
        source.close()
    per_frame = {name: 1000.0 * s / max(frames, 1) for name, s in clock.seconds.items()}
    per_frame["total"] = sum(per_frame.values())
    return {"frames": frames, "cpu_ms_per_frame": per_frame}


_MEASURE = """
import json, resource, sys, time
from pipeline.annotate import main
started = time.perf_counter()
code = main(sys.argv[1:])
wall = time.perf_counter() - started
print(json.dumps({"code": code, "wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def annotate_run(inputs: list[Path], out: Path, *extra: str) -> dict:
    """hagview-annotate in a fresh process; wall time and that process's peak resident memory."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, *map(str, inputs), "--out", str(out), "--quiet",
                           "--backend", "onnxruntime", *extra], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"hagview-annotate failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def throughput(video: Path, frames: int, scratch: Path) -> dict:
    out = {}
    for label, extra in (("annotate", ()), ("annotate --render", ("--render",))):
        directory = scratch / label.replace(" ", "")
        result = annotate_run([video], directory, *extra)
        run = json.loads((directory / video.stem / "run.json").read_text())
        if run["frames"] != frames:
            raise SystemExit(f"hagview-annotate wrote {run['frames']} frames of {video}, expected {frames}")
        fps = frames / result["wall_s"]
        steady = run["stats"]["average_fps_out"]
        out[label] = {"fps": fps, "realtime": fps / FPS, "wall_s": result["wall_s"], "steady_fps": steady,
                      "fixed_s": result["wall_s"] - frames / steady, "peak_rss_mb": result["peak_rss_mb"]}
    return out


def jobs_compare(cache: Path, seconds: float, scratch: Path) -> dict:
    videos = [make_video(cache / f"jobs-{i}-640x480-{seconds:g}s.mp4", (640, 480), seconds, seed=10 + i)
              for i in range(4)]
    one = annotate_run(videos, scratch / "jobs1", "--jobs", "1")
    two = annotate_run(videos, scratch / "jobs2", "--jobs", "2")
    return {"videos": 4, "seconds_each": seconds, "jobs1_wall_s": one["wall_s"], "jobs2_wall_s": two["wall_s"],
            "speed-up": one["wall_s"] / two["wall_s"]}


def memory(video: Path, minutes: float, scratch: Path) -> dict:
    """Annotate `minutes` of video (the clip looped as one recording) in this process with
    --render; resident memory sampled along the way."""
    from pipeline.annotate import AnnotationWriter
    from pipeline.config import load_run_config
    from pipeline.loading import build_analysis, default_bundle
    from pipeline.offline import run_offline
    from pipeline.sources import FileSource, VideoSource
    from bench_pipeline import rss_mb

    class Looped(VideoSource):
        """The clip played over and over as one recording of `frames` frames."""

        def __init__(self, frames: int) -> None:
            super().__init__()
            self.left, self.index, self.offset = frames, 0, 0.0
            self.inner = FileSource(video)
            self.name = f"{video.name} looped"

        def read(self):
            if self.left <= 0:
                return None
            frame = self.inner.read()
            if frame is None:
                self.offset = self.last_pts + 1.0 / FPS
                self.inner.close()
                self.inner = FileSource(video)
                frame = self.inner.read()
            frame.pts += self.offset
            frame.index, self.last_pts = self.index, frame.pts
            self.index += 1
            self.left -= 1
            return frame

        def close(self) -> None:
            self.inner.close()

    frames = int(minutes * 60 * FPS)
    config = load_run_config(None)
    analysis, info = build_analysis(config, sizer=default_bundle("sizer"), detector=default_bundle("detector"),
                                    backend="onnxruntime", offline=True)
    directory = scratch / "memory"
    directory.mkdir(parents=True, exist_ok=True)
    writer = AnnotationWriter(directory, render=True, mot=False, synthetic=info["synthetic"], fps=FPS,
                              thumb_size=config.output.thumbnail_size, crf=config.output.render_crf,
                              preset=config.output.render_preset, line_width=config.output.overlay_line_width)
    samples: list[tuple[int, float]] = []
    done = [0]

    def sample() -> None:
        done[0] += 1
        if done[0] % 250 == 0:
            samples.append((done[0], rss_mb()))
    started = time.perf_counter()
    source = Looped(frames)
    try:
        run_offline(source, analysis, writer, on_frame_done=sample,
                    queue_capacity=config.runtime.offline_queue_capacity)
        writer.finish("memory", {})
    finally:
        source.close()
    warm = [mb for n, mb in samples if n >= 60 * FPS] or [mb for _, mb in samples]
    return {"minutes": minutes, "frames": done[0], "wall_s": time.perf_counter() - started,
            "peak_rss_mb": max(mb for _, mb in samples), "rss_after_first_minute_mb": warm[0],
            "rss_end_mb": samples[-1][1], "growth_after_first_minute_mb": samples[-1][1] - warm[0],
            "samples": samples}


def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", action="store_true", help="per-stage CPU table")
    p.add_argument("--throughput", action="store_true", help="hagview-annotate fps with and without --render")
    p.add_argument("--jobs", action="store_true", help="--jobs 2 against --jobs 1 on four short videos")
    p.add_argument("--memory", type=float, metavar="MINUTES", help="resident memory over MINUTES of 1080p video")
    p.add_argument("--sizes", nargs="+", type=_size, default=[(640, 480), (1920, 1080), (1350, 1080)])
    p.add_argument("--seconds", type=float, default=60.0, help="length of each test video (default 60)")
    p.add_argument("--profile-frames", type=int, default=300, help="frames the --profile loop times (default 300)")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "hagview" / "bench-offline"))
    p.add_argument("--out", default=str(ROOT / "bench-results" / "offline.json"))
    args = p.parse_args()
    if not (args.profile or args.throughput or args.jobs or args.memory):
        args.profile = args.throughput = True
    from pipeline.tuning import share_cores_between_threads
    share_cores_between_threads()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="hagview-bench-offline-"))
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_average_before": os.getloadavg()}, "sizes": {}}
    for size in args.sizes:
        name = f"{size[0]}x{size[1]}"
        video = make_video(cache / f"demo-{name}-{args.seconds:g}s.mp4", size, args.seconds)
        entry = result["sizes"][name] = {}
        if args.profile:
            entry["profile"] = profile(video, args.profile_frames)
        if args.throughput:
            frames = int(round(args.seconds * FPS))
            entry["throughput"] = throughput(video, frames, scratch)
    if args.jobs:
        result["jobs"] = jobs_compare(cache, min(args.seconds, 4.0), scratch)
    if args.memory:
        clip = make_video(cache / f"demo-1920x1080-{args.seconds:g}s.mp4", (1920, 1080), args.seconds)
        result["memory"] = memory(clip, args.memory, scratch)
    result["machine"]["load_average_after"] = os.getloadavg()
    print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nsaved {out}")
    return 0


def print_table(result: dict) -> None:
    sizes = list(result["sizes"])
    load = result["machine"]
    print(f"load average before {load['load_average_before'][0]:.2f}, after {load['load_average_after'][0]:.2f} "
          f"({load['cpus']} CPUs)")
    if any("profile" in result["sizes"][s] for s in sizes):
        print("\nCPU ms per frame        " + "".join(f"{s:>12}" for s in sizes))
        for stage in (*STAGES, "total"):
            row = [result["sizes"][s].get("profile", {}).get("cpu_ms_per_frame", {}).get(stage) for s in sizes]
            print(f"  {stage:<21}" + "".join(f"{v:12.2f}" if v is not None else f"{'':>12}" for v in row))
    if any("throughput" in result["sizes"][s] for s in sizes):
        print("\nhagview-annotate" + " " * 16 + "".join(f"{s:>12}" for s in sizes))
        for label in ("annotate", "annotate --render"):
            for key, unit in (("fps", "fps"), ("realtime", "x real time"), ("steady_fps", "steady fps"),
                              ("fixed_s", "fixed s"), ("peak_rss_mb", "MB peak")):
                row = [result["sizes"][s].get("throughput", {}).get(label, {}).get(key) for s in sizes]
                print(f"  {label + ' ' + unit:<30}" + "".join(f"{v:12.2f}" if v is not None else
                                                                            f"{'':>12}" for v in row))
    if "memory" in result:
        m = result["memory"]
        print(f"\nmemory, {m['minutes']:g} min of 1080p with --render ({m['frames']} frames, {m['wall_s']:.0f} s): "
              f"peak {m['peak_rss_mb']:.0f} MB, {m['rss_after_first_minute_mb']:.0f} MB after the first minute, "
              f"{m['rss_end_mb']:.0f} MB at the end")
    if "jobs" in result:
        j = result["jobs"]
        print(f"\n--jobs 2 vs --jobs 1 on {j['videos']} videos of {j['seconds_each']:g} s: "
              f"{j['jobs2_wall_s']:.1f} s vs {j['jobs1_wall_s']:.1f} s ({j['speed-up']:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
