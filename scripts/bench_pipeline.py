#!/usr/bin/env python
"""Streaming pipeline benchmark: offline throughput, live behaviour, accuracy on synthetic truth.

Offline (one synthetic 30 fps video, annotation with --render, all measured in this run):
  pipelined     run_offline: decode, preprocess, detect, track, size, smooth, output (JSONL,
                thumbnails, H.264 render) on their own threads joined by blocking queues
  sequential    the same components called one after another in a plain loop
  stage alone   each stage's own throughput: decoding alone over the whole file, and every
                analysis/output stage's busy time measured inside the sequential loop
  -> ratio pipelined / slowest stage alone (target >= 0.85) and pipelined / sequential
     (target >= 1.3); medians over --repeats runs.
Live (a recording replayed as a paced 30 fps camera, looped, for --live-minutes):
  every frame reaches the output (index gaps counted), annotation delay (capture -> overlay
  ready) p50/p95/p99/max, the display path's own delay, drops per edge (analysis may skip
  frames; the video may not), deepest queue per edge (<= 1), resident memory growth from
  /proc/self/status VmRSS after a warm-up (target < 50 MB).
Accuracy (every synthetic video, with given boxes and, when a detector bundle exists, detected):
  per-track MAE (final smoothed size; unweighted, weighted by the track's frame count, and per
  polyp: the track covering most of each ground-truth polyp's frames) versus per-frame MAE (each
  sizer output), triclass accuracy per frame, track and polyp, tracks per polyp, class flips
  per 100 frames before (per-frame sizes) and after (class shown with hysteresis) smoothing,
  and IDF1 / MOTA / ID switches (py-motmetrics).

Models: --sizer/--detector, else the committed demo bundles in pipeline/assets/bundles. With no
sizer bundle at all an untrained hag_resnet18 (224 px, the demo architecture) is exported to the
cache as a stand-in: throughput figures hold, size accuracy is then meaningless (marked so).
Without a detector bundle the throughput runs use given boxes (the paper's setting).

  .venv/bin/python scripts/bench_pipeline.py                          # ~8 minutes (5 min live)
  .venv/bin/python scripts/bench_pipeline.py --live-minutes 0.5 --seconds 10 --videos 1
  .venv/bin/python scripts/bench_pipeline.py --only accuracy      # ~2 minutes, no timing parts
Results: a table on stdout and JSON in bench-results/pipeline.json (--out).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from pipeline.annotate import AnnotationWriter  # noqa: E402
from pipeline.config import load_run_config  # noqa: E402
from pipeline.mot import MotBox, evaluate_mot, read_ground_truth_json  # noqa: E402
from pipeline.runtime import (Analysis, BoxProvider, LivePipeline, Work, build_analysis,  # noqa: E402
                              default_bundle, run_offline, share_cores_between_threads)
from pipeline.sizing import TrackSizingStage, sizing_policy  # noqa: E402
from pipeline.smoothing import count_class_flips  # noqa: E402
from pipeline.sources import FileSource  # noqa: E402
from pipeline.sources.base import PacedSource, ReconnectingSource  # noqa: E402
from pipeline.boxes import box_iou  # noqa: E402
from pipeline.fsutil import write_json_atomic  # noqa: E402
from pipeline.size_metrics import clinician_report  # noqa: E402
from pipeline.sizeclass import triclass_index  # noqa: E402

CACHE = Path(os.environ.get("HAGVIEW_CACHE", Path.home() / ".cache" / "hagview"))
TARGET_VS_SLOWEST = 0.85
TARGET_VS_SEQUENTIAL = 1.3
TARGET_MEMORY_GROWTH_MB = 50.0
STAGES = ("preprocess", "detect", "track", "size", "smooth")
PARTS = ("offline", "live", "accuracy")


# ---------------------------------------------------------------------------------------------
# Data and models
# ---------------------------------------------------------------------------------------------

def synthetic_data(args) -> Path:
    """Demo-preset videos at the benchmark's size and rate (cached by their settings)."""
    if args.data:
        return Path(args.data)
    from trainer.synth import load_synth_config
    from trainer.synth.writer import generate_dataset

    width, height = args.size
    key = f"bench-pipeline-{width}x{height}-{args.fps:g}fps-{args.seconds:g}s-{args.videos}v-seed{args.seed}"
    out = CACHE / key
    if (out / "video_info.csv").is_file():
        return out
    cfg = replace(load_synth_config(preset="demo"), width=width, height=height, fps=args.fps, seconds=args.seconds)
    print(f"[bench] rendering {args.videos} synthetic video(s) into {out}", file=sys.stderr)
    generate_dataset(out, cfg, videos=args.videos, seed=args.seed, progress=True, overwrite=True)
    return out


def stand_in_sizer() -> Path:
    """An untrained hag_resnet18 sizer at 224 px (throughput only), exported once."""
    from trainer.export.standin import export_untrained_sizer

    return export_untrained_sizer(CACHE / "bench-pipeline-untrained-sizer", input_size=224)


# ---------------------------------------------------------------------------------------------
# Offline throughput
# ---------------------------------------------------------------------------------------------

def new_writer(directory: Path, synthetic: bool, fps: float, config) -> AnnotationWriter:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    return AnnotationWriter(directory, render=True, mot=True, synthetic=synthetic, fps=fps,
                            thumb_size=config.output.thumbnail_size, crf=config.output.render_crf,
                            preset=config.output.render_preset,
                            line_width=config.output.overlay_line_width)


def offline_pipelined(video: Path, analysis: Analysis, info, config, scratch: Path) -> dict:
    writer = new_writer(scratch / "pipelined", info["synthetic"], 30.0, config)
    source = FileSource(video, threaded=config.source.threaded_decoding)
    started, cpu = time.perf_counter(), time.process_time()
    stats = run_offline(source, analysis, writer, queue_capacity=config.runtime.offline_queue_capacity)
    writer.finish("bench", {})
    elapsed = time.perf_counter() - started
    source.close()
    frames = stats["frames_out"]
    return {"frames": frames, "seconds": elapsed, "fps": frames / elapsed,
            "cores_used": (time.process_time() - cpu) / elapsed,
            "max_queue_depth": max(e["max_depth"] for e in stats["edges"].values()),
            "latency": {k: stats["latency"][k] for k in ("end_to_end", *STAGES, "output") if k in stats["latency"]}}


def offline_sequential(video: Path, analysis: Analysis, info, config, scratch: Path) -> dict:
    """The same work in one loop; also each stage's busy time (its throughput run alone)."""
    from pipeline.types import FrameResult

    writer = new_writer(scratch / "sequential", info["synthetic"], 30.0, config)
    source = FileSource(video, threaded=config.source.threaded_decoding)
    analysis.reset()
    busy = {name: 0.0 for name in (*STAGES, "output")}
    functions = {s.name: s.process for s in analysis.stages()}
    frames = 0
    started, cpu = time.perf_counter(), time.process_time()
    while True:
        frame = source.read()
        if frame is None:
            break
        work = Work(frame=frame, generation=analysis.generation)
        for name in STAGES:
            t = time.perf_counter()
            work = functions[name](work)
            busy[name] += time.perf_counter() - t
        t = time.perf_counter()
        writer(FrameResult(frame=frame, tracks=work.reports or [], overlay_frame_index=frame.index))
        busy["output"] += time.perf_counter() - t
        frames += 1
    writer.finish("bench", {})
    elapsed = time.perf_counter() - started
    source.close()
    return {"frames": frames, "seconds": elapsed, "fps": frames / elapsed,
            "cores_used": (time.process_time() - cpu) / elapsed,
            "stage_fps": {name: frames / max(seconds, 1e-9) for name, seconds in busy.items()}}


def decode_alone(video: Path, config) -> dict:
    source = FileSource(video, threaded=config.source.threaded_decoding)
    started = time.perf_counter()
    frames = sum(1 for _ in source)
    elapsed = time.perf_counter() - started
    source.close()
    return {"frames": frames, "fps": frames / elapsed}


def bench_offline(video: Path, analysis: Analysis, info, config, repeats: int) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="hagview-bench-"))
    try:
        # Warm-up: engines, caches and the page cache see the data once before timing.
        offline_sequential(video, analysis, info, config, scratch)
        runs = []
        for r in range(repeats):
            decode = decode_alone(video, config)
            sequential = offline_sequential(video, analysis, info, config, scratch)
            pipelined = offline_pipelined(video, analysis, info, config, scratch)
            stage_fps = {"decode": decode["fps"], **sequential["stage_fps"]}
            slowest = min(stage_fps, key=stage_fps.get)
            runs.append({"pipelined_fps": pipelined["fps"], "sequential_fps": sequential["fps"],
                         "stage_alone_fps": stage_fps, "slowest_stage": slowest,
                         "slowest_stage_fps": stage_fps[slowest],
                         "vs_slowest": pipelined["fps"] / stage_fps[slowest],
                         "vs_sequential": pipelined["fps"] / sequential["fps"],
                         "pipelined_cores_used": pipelined["cores_used"],
                         "sequential_cores_used": sequential["cores_used"],
                         "frames": pipelined["frames"], "max_queue_depth": pipelined["max_queue_depth"],
                         "pipelined_latency": pipelined["latency"]})
            print(f"[bench] offline run {r + 1}/{repeats}: pipelined {pipelined['fps']:.1f} fps, "
                  f"sequential {sequential['fps']:.1f} fps, slowest stage {slowest} "
                  f"{stage_fps[slowest]:.1f} fps", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    return {"video": str(video), "frames": runs[0]["frames"], "repeats": repeats,
            "pipelined_fps": med("pipelined_fps"), "sequential_fps": med("sequential_fps"),
            "slowest_stage_fps": med("slowest_stage_fps"),
            "slowest_stage": statistics.mode(r["slowest_stage"] for r in runs),
            "vs_slowest": med("vs_slowest"), "vs_sequential": med("vs_sequential"),
            "target_vs_slowest": TARGET_VS_SLOWEST, "target_vs_sequential": TARGET_VS_SEQUENTIAL,
            "pass_vs_slowest": med("vs_slowest") >= TARGET_VS_SLOWEST,
            "pass_vs_sequential": med("vs_sequential") >= TARGET_VS_SEQUENTIAL,
            "stage_alone_fps_median": {k: statistics.median(r["stage_alone_fps"][k] for r in runs)
                                       for k in runs[0]["stage_alone_fps"]},
            "max_queue_depth": max(r["max_queue_depth"] for r in runs),
            # CPU seconds per wall second: on a busy machine (or under a CPU quota) the pipeline
            # cannot use more cores than the sequential loop, and the ratios say little.
            "pipelined_cores_used": med("pipelined_cores_used"),
            "sequential_cores_used": med("sequential_cores_used"),
            "runs": runs}


# ---------------------------------------------------------------------------------------------
# Live
# ---------------------------------------------------------------------------------------------

def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def bench_live(video: Path, gt_json: Path, args, config) -> dict:
    num_frames = FileSource(video).num_frames

    def opener():
        return FileSource(video, threaded=False)
    looped = ReconnectingSource(opener, f"{video.name} (looped)", no_signal_after_s=5.0, backoff_initial_s=0.05)
    looped.open()
    camera = PacedSource(looped, speed=1.0)
    boxes = None if args.detector_bundle else str(gt_json)
    seen = {"count": 0, "gaps": 0, "last": -1}
    lock = threading.Lock()

    def on_result(result):
        with lock:
            if result.frame.index != seen["last"] + 1:
                seen["gaps"] += result.frame.index - seen["last"] - 1
            seen["last"] = result.frame.index
            seen["count"] += 1

    pipe = LivePipeline(camera, config=config, sizer=args.sizer_bundle, detector=args.detector_bundle,
                        backend=args.backend, on_result=on_result, boxes=boxes)
    if boxes is not None:     # the looped recording's boxes repeat every num_frames
        pipe.analysis.boxes = BoxProvider(boxes, period=num_frames)
    duration = args.live_minutes * 60.0
    warmup = min(15.0, duration / 4)
    samples = []
    pipe.start()
    started = time.perf_counter()
    baseline = None
    try:
        while True:
            elapsed = time.perf_counter() - started
            if elapsed >= duration:
                break
            time.sleep(min(5.0, duration - elapsed))
            now = time.perf_counter() - started
            rss = rss_mb()
            samples.append((round(now, 1), round(rss, 1)))
            if baseline is None and now >= warmup:
                baseline = rss
                pipe.latency.reset()      # latency over the steady state only
        stats = pipe.stats()
    finally:
        pipe.stop()
    final = rss_mb()
    frames_in, frames_out = stats["frames_in"], seen["count"]
    growth = final - (baseline if baseline is not None else samples[0][1])
    edges = {name: {"drops": e["drops"], "max_depth": e["max_depth"]} for name, e in stats["edges"].items()}
    return {"minutes": args.live_minutes, "source_fps": looped.fps, "frames_in": frames_in,
            "frames_out": frames_out, "frames_missing_at_output": seen["gaps"] + (frames_in - frames_out),
            "every_frame_reached_output": seen["gaps"] == 0 and frames_out >= frames_in - 1,
            "average_fps_in": stats["average_fps_in"], "average_fps_out": stats["average_fps_out"],
            "frames_analysed": stats["frames_analysed"],
            "annotation_delay_ms": stats["annotation_delay"],
            "display_path_ms": stats["latency"].get("display_path"),
            "overlay_age_frames": stats["overlay_age_frames"],
            "edges": edges, "queues_bounded": all(e["max_depth"] <= 1 for e in edges.values()),
            "rss_baseline_mb": baseline, "rss_final_mb": final, "rss_growth_mb": growth,
            "target_rss_growth_mb": TARGET_MEMORY_GROWTH_MB, "pass_memory": growth < TARGET_MEMORY_GROWTH_MB,
            "rss_samples": samples, "backend": stats["backend"], "sizer": stats.get("sizer")}


# ---------------------------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------------------------

def accuracy_on(videos: list[tuple[Path, Path]], make_analysis, config) -> dict:
    """Size and identity accuracy of one way of finding polyps over `videos` (mp4, gt.json).

    Per-track figures use each track's final smoothed estimate against the polyp it covers most
    often: unweighted (every track counts once, a 5-frame fragment as much as a 500-frame
    track), weighted by the track's frame count, and per polyp (for each ground-truth polyp, the
    track that covers most of its frames: the one figure a clinician reads off the report).
    """
    frame_errors, frame_hits = [], []
    track_errors, track_hits, track_frames = [], [], []
    polyp_errors, polyp_hits, tracks_per_polyp = [], [], []
    polyps_without_track = 0
    flips_raw = flips_smoothed = frames_counted = 0
    mot = []
    # what clinicians read (pipeline.size_metrics): (predicted, true) per sized frame and per polyp,
    # and per polyp the media time it first shows and the first time a size is shown for it
    frame_pairs, polyp_pairs = [], []
    first_visible, first_sized = {}, {}
    for video, gt_path in videos:
        gt = read_ground_truth_json(gt_path)
        analysis = make_analysis(gt_path)
        results = []
        run_offline(FileSource(video), analysis, results.append,
                    queue_capacity=config.runtime.offline_queue_capacity)
        hyps: dict[int, list[MotBox]] = {}
        per_track: dict[int, dict] = {}
        for result in results:
            index = result.frame.index
            truth = gt.frames.get(index, [])
            for g in truth:
                first_visible.setdefault((video.name, g.polyp_id), result.frame.pts)
            hyps[index] = [MotBox(t.track_id, t.box, t.score) for t in result.tracks if t.missed == 0]
            for t in result.tracks:
                if t.missed != 0:
                    continue
                ious = box_iou([g.box for g in truth], [t.box])[:, 0]
                matched = truth[int(ious.argmax())] if truth and ious.max() >= 0.5 else None
                track = per_track.setdefault(t.track_id, {"votes": {}, "raw": [], "shown": [], "estimate": None,
                                                          "frames": 0})
                track["frames"] += 1
                if t.estimate is not None:
                    track["estimate"] = t.estimate
                if t.frame_size_mm is not None:
                    track["raw"].append(t.frame_size_mm)
                    track["shown"].append(t.estimate.size_class if t.estimate else None)
                    if matched is not None:
                        frame_pairs.append((t.frame_size_mm, matched.diameter_mm))
                        frame_errors.append(abs(t.frame_size_mm - matched.diameter_mm))
                        frame_hits.append(triclass_index(t.frame_size_mm) == triclass_index(matched.diameter_mm))
                if matched is not None:
                    track["votes"][matched.polyp_id] = track["votes"].get(matched.polyp_id, 0) + 1
                    if t.estimate is not None:
                        first_sized.setdefault((video.name, matched.polyp_id), result.frame.pts)
        for track in per_track.values():
            if track["raw"]:
                flips_raw += count_class_flips(track["raw"])
                shown = [s for s in track["shown"] if s is not None]
                flips_smoothed += sum(1 for a, b in zip(shown, shown[1:]) if a != b)
                frames_counted += len(track["raw"])
            if track["votes"] and track["estimate"] is not None:
                polyp = max(track["votes"], key=track["votes"].get)
                truth_mm = gt.diameters_mm[polyp]
                track_errors.append(abs(track["estimate"].size_mm - truth_mm))
                track_hits.append(triclass_index(track["estimate"].size_mm) == triclass_index(truth_mm))
                track_frames.append(track["frames"])
        seen_polyps = {g.polyp_id for boxes in gt.frames.values() for g in boxes}
        for polyp in sorted(seen_polyps):
            covering = {tid: tr["votes"][polyp] for tid, tr in per_track.items() if tr["votes"].get(polyp)}
            tracks_per_polyp.append(len(covering))
            best = max(covering, key=covering.get, default=None)
            if best is None or per_track[best]["estimate"] is None:
                polyps_without_track += 1
                continue
            truth_mm = gt.diameters_mm[polyp]
            polyp_pairs.append((per_track[best]["estimate"].size_mm, truth_mm))
            polyp_errors.append(abs(per_track[best]["estimate"].size_mm - truth_mm))
            polyp_hits.append(triclass_index(per_track[best]["estimate"].size_mm) == triclass_index(truth_mm))
        mot.append(evaluate_mot(gt.boxes(), hyps, frames=range(len(results))))

    def mean(values):
        return float(np.mean(values)) if values else None
    total = lambda key: sum((m[key] or 0) for m in mot)  # noqa: E731
    return {
        "videos": len(videos),
        "per_frame_mae_mm": mean(frame_errors), "per_track_mae_mm": mean(track_errors),
        "per_track_mae_frame_weighted_mm": float(np.average(track_errors, weights=track_frames))
        if track_errors else None,
        "per_polyp_mae_mm": mean(polyp_errors),
        "per_frame_triclass_accuracy": mean(frame_hits), "per_track_triclass_accuracy": mean(track_hits),
        "per_polyp_triclass_accuracy": mean(polyp_hits),
        "sized_frames": len(frame_errors), "tracks_scored": len(track_errors),
        "polyps": len(tracks_per_polyp), "polyps_without_track": polyps_without_track,
        "tracks_per_polyp": mean(tracks_per_polyp),
        "class_flips_per_100_frames_per_frame_sizes": 100.0 * flips_raw / frames_counted if frames_counted else None,
        "class_flips_per_100_frames_smoothed": 100.0 * flips_smoothed / frames_counted if frames_counted else None,
        "idf1_mean": mean([m["idf1"] for m in mot if m["idf1"] is not None]),
        "mota_mean": mean([m["mota"] for m in mot if m["mota"] is not None]),
        "id_switches": total("id_switches"),
        "per_video_mot": mot,
        "clinician": clinician_report([p for p, _ in frame_pairs], [t for _, t in frame_pairs],
                                      [p for p, _ in polyp_pairs], [t for _, t in polyp_pairs],
                                      first_visible_s=first_visible, first_sized_s=first_sized),
    }


def bench_accuracy(videos, args, config) -> dict:
    sizing = TrackSizingStage.from_bundle(args.sizer_bundle, backend=args.backend,
                                          threads=config.runtime.inference_threads or None,
                                          policy=sizing_policy(config))
    out = {"given_boxes": accuracy_on(videos, lambda gt: Analysis(config, boxes=BoxProvider(gt), sizer=sizing),
                                      config)}
    if args.detector_bundle:
        analysis, _ = build_analysis(config, sizer=args.sizer_bundle, detector=args.detector_bundle,
                                     backend=args.backend)
        out["detector"] = accuracy_on(videos, lambda gt: analysis, config)
    return out


# ---------------------------------------------------------------------------------------------

def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="a synthetic dataset directory (default: render one into the cache)")
    p.add_argument("--videos", type=int, default=2)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--size", type=_size, default=(640, 480))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sizer", help="sizer bundle (default: the committed demo bundle)")
    p.add_argument("--detector", help="detector bundle (default: the committed demo bundle)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, default=1, help="threads per inference engine (default 1: "
                   "stages run in parallel, so each engine gets one core)")
    p.add_argument("--config", help="run config YAML")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--live-minutes", type=float, default=5.0)
    p.add_argument("--skip", nargs="*", default=[], choices=PARTS)
    p.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts (e.g. --only accuracy)")
    p.add_argument("--out", default=str(ROOT / "bench-results" / "pipeline.json"))
    args = p.parse_args()
    if args.only:
        args.skip = [part for part in PARTS if part not in args.only]

    config = load_run_config(args.config, {"runtime.inference_threads": args.threads})
    share_cores_between_threads()       # as hagview-annotate does
    args.sizer_bundle = args.sizer or default_bundle("sizer")
    sizer_note = "given" if args.sizer else "committed demo bundle"
    if args.sizer_bundle is None:
        args.sizer_bundle = stand_in_sizer()
        sizer_note = "UNTRAINED stand-in (no demo bundle): size accuracy is meaningless"
    args.detector_bundle = args.detector or default_bundle("detector")
    data = synthetic_data(args)
    videos = sorted((p, p.with_name(p.name[:-len(".mp4")] + ".gt.json")) for p in data.glob("*.mp4"))
    if not videos:
        raise SystemExit(f"bench_pipeline: no .mp4 videos in {data}")
    first_video, first_gt = videos[0]

    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                          "platform": platform.platform()},
              "data": str(data), "videos": [str(v) for v, _ in videos],
              "sizer": str(args.sizer_bundle), "sizer_note": sizer_note,
              "detector": str(args.detector_bundle) if args.detector_bundle else "given boxes (no detector bundle)",
              "threads_per_engine": args.threads}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if "offline" not in args.skip:
        if args.detector_bundle:
            analysis, info = build_analysis(config, sizer=args.sizer_bundle, detector=args.detector_bundle,
                                            backend=args.backend)
        else:
            analysis, info = build_analysis(config, sizer=args.sizer_bundle, boxes=first_gt, backend=args.backend)
        result["backend"] = info["backend"]
        result["offline"] = bench_offline(first_video, analysis, info, config, args.repeats)
        write_json_atomic(args.out, result)     # each section is kept even if a later one fails
    if "live" not in args.skip and args.live_minutes > 0:
        print(f"[bench] live: {args.live_minutes:g} min paced replay", file=sys.stderr)
        result["live"] = bench_live(first_video, first_gt, args, config)
        write_json_atomic(args.out, result)
    if "accuracy" not in args.skip:
        print("[bench] accuracy", file=sys.stderr)
        result["accuracy"] = bench_accuracy(videos, args, config)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    print_table(result)
    print(f"\nsaved {args.out}")
    return 0


def _fmt(v, digits=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else "-"
    return str(v)


def clinician_rows(kind: str, c: dict) -> list[tuple[str, str, str]]:
    rows = []
    for level in ("per_polyp", "per_frame"):
        m = c.get(level) or {}
        if not m.get("count"):
            continue
        rows += [(f"accuracy ({kind})", f"{level}: within 1 mm / within 10 %",
                  f"{_fmt(m['within_1mm'])} / {_fmt(m['within_10pct'])}"),
                 (f"accuracy ({kind})", f"{level}: >5 mm called <=5 / >=10 mm called <10",
                  f"{_fmt(m['missed_above_5_rate'])} / {_fmt(m['missed_large_rate'])}"),
                 (f"accuracy ({kind})", f"{level}: Bland-Altman bias [95% limits] mm",
                  f"{_fmt(m['ba_bias_mm'])} [{_fmt(m['ba_loa_low_mm'])}, {_fmt(m['ba_loa_high_mm'])}]"),
                 (f"accuracy ({kind})", f"{level}: confusion at 5/10 mm (rows true)", str(m["confusion_5_10"]))]
    t = c.get("time_to_first_size")
    if t:
        rows.append((f"accuracy ({kind})", "first visible -> first size shown: median / max s, never sized",
                     f"{_fmt(t['median_s'])} / {_fmt(t['max_s'])}, {_fmt(t['never_sized_rate'])}"))
    return rows


def print_table(r: dict) -> None:
    rows = []
    if "offline" in r:
        o = r["offline"]
        rows += [("offline", "pipelined fps", _fmt(o["pipelined_fps"], 1)),
                 ("offline", "sequential loop fps", _fmt(o["sequential_fps"], 1)),
                 ("offline", f"slowest stage alone ({o['slowest_stage']}) fps", _fmt(o["slowest_stage_fps"], 1)),
                 ("offline", f"pipelined / slowest stage (>= {TARGET_VS_SLOWEST})",
                  f"{_fmt(o['vs_slowest'])} {'ok' if o['pass_vs_slowest'] else 'BELOW'}"),
                 ("offline", f"pipelined / sequential (>= {TARGET_VS_SEQUENTIAL})",
                  f"{_fmt(o['vs_sequential'])} {'ok' if o['pass_vs_sequential'] else 'BELOW'}"),
                 ("offline", "CPU cores used pipelined / sequential",
                  f"{_fmt(o['pipelined_cores_used'])} / {_fmt(o['sequential_cores_used'])}"),
                 ("offline", "stage alone fps", ", ".join(f"{k} {v:.0f}" for k, v in o["stage_alone_fps_median"].items()))]
    if "live" in r:
        lv = r["live"]
        delay = lv["annotation_delay_ms"] or {}
        rows += [("live", "frames in / out / missing", f"{lv['frames_in']} / {lv['frames_out']} / "
                                                       f"{lv['frames_missing_at_output']}"),
                 ("live", "every frame reached the output", _fmt(lv["every_frame_reached_output"])),
                 ("live", "annotation delay p50 / p99 / max ms",
                  f"{_fmt(delay.get('p50_ms'), 1)} / {_fmt(delay.get('p99_ms'), 1)} / {_fmt(delay.get('max_ms'), 1)}"),
                 ("live", "frames analysed", str(lv["frames_analysed"])),
                 ("live", "queues bounded (max depth <= 1)", _fmt(lv["queues_bounded"])),
                 ("live", f"memory growth MB (< {TARGET_MEMORY_GROWTH_MB:g})",
                  f"{_fmt(lv['rss_growth_mb'], 1)} {'ok' if lv['pass_memory'] else 'ABOVE'}")]
    for kind, a in r.get("accuracy", {}).items():
        rows += [(f"accuracy ({kind})", "per-frame MAE mm", _fmt(a["per_frame_mae_mm"])),
                 (f"accuracy ({kind})", "per-track MAE mm unweighted / frame-weighted / per polyp",
                  f"{_fmt(a['per_track_mae_mm'])} / {_fmt(a.get('per_track_mae_frame_weighted_mm'))} / "
                  f"{_fmt(a.get('per_polyp_mae_mm'))}"),
                 (f"accuracy ({kind})", "tracks per polyp", _fmt(a.get("tracks_per_polyp"))),
                 *clinician_rows(kind, a.get("clinician") or {}),
                 (f"accuracy ({kind})", "triclass acc. per frame / per track",
                  f"{_fmt(a['per_frame_triclass_accuracy'])} / {_fmt(a['per_track_triclass_accuracy'])}"),
                 (f"accuracy ({kind})", "class flips /100 frames raw -> smoothed",
                  f"{_fmt(a['class_flips_per_100_frames_per_frame_sizes'])} -> "
                  f"{_fmt(a['class_flips_per_100_frames_smoothed'])}"),
                 (f"accuracy ({kind})", "IDF1 / MOTA / ID switches",
                  f"{_fmt(a['idf1_mean'], 3)} / {_fmt(a['mota_mean'], 3)} / {_fmt(a['id_switches'], 0)}")]
    width = max(len(name) for _, name, _ in rows) if rows else 10
    print(f"sizer: {r['sizer_note']}; detector: {r['detector']}")
    for section, name, value in rows:
        print(f"{section:<22} {name:<{width}}  {value}")


if __name__ == "__main__":
    sys.exit(main())
