"""`hagview-annotate INPUT... --out DIR`: offline annotation of recorded videos.

Per input, a sub-directory `DIR/<input name>/` with
  frames.jsonl   one line per analysed frame: index, time (s), tracks (id, box, score, per-frame
                 size mm, smoothed size mm with interval, class, quality, missed)
  polyps.json    per track: id, first/last frame and time, frames seen, final size and interval,
                 class, thumbnail path
  report.html    summary, thumbnails, size-over-time plots
  thumbs/        one JPEG per polyp (its best-quality view)
  annotated.mp4  with --render: H.264, same frame count and timestamps as the input
  mot.txt        with --mot: the tracks in MOTChallenge form
  run.json       inputs, models, options and pipeline statistics (written last)
Each sub-directory is built under a temporary name and renamed when complete, so a directory
that exists is a finished result (`--resume` skips it). A bad input fails alone with a one-line
error; the exit code is 0 when every input succeeded, 1 otherwise, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.cli_util import EXIT_FAILURE, EXIT_OK, ArgumentParser, add_run_options, run_cli
from pipeline.errors import ConfigError, HagviewError, describe_error
from pipeline.fsutil import atomic_dir, check_writable_dir, write_json_atomic, write_text_atomic
from pipeline.progress import Progress
from pipeline.sizeclass import DIMINUTIVE_MAX_MM, LARGE_MIN_MM

from .archive import (Task, clear_failure, parse_shard, record_failure, run_jobs, shard_indices, threads_per_job,
                      write_summary)
from .config import load_run_config, run_config_to_dict
from .graph import BlockingQueue, EdgeClosed
from .overlay import draw_overlay
from .polyps import PolypHistories, PolypHistory, rounded, track_record
from .report import report_html, thin_indices
from .runtime import (GROUND_TRUTH_BOXES, Analysis, BoxProvider, build_analysis, default_bundle, run_offline,
                      share_cores_between_threads)
from .sources import open_source, source_kind
from .types import FrameResult, TrackReport

log = logging.getLogger(__name__)

PROG = "hagview-annotate"
AUTO_BOXES = "auto"


@dataclass(frozen=True)
class AnnotateOptions:
    """What to write per input and how often to analyse (the command line's per-input options)."""
    render: bool = False      # annotated.mp4
    mot: bool = False         # mot.txt
    every: int = 1            # analyse every Nth frame
    quiet: bool = False       # no progress line

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "AnnotateOptions":
        return cls(render=args.render, mot=args.mot, every=args.every, quiet=args.quiet)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog=PROG, description="Annotate recorded endoscopy videos: track polyps, "
                                "size them per track, write per-frame results, a report and optionally a video.")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="video files (or 'demo')")
    p.add_argument("--out", help="output directory (one sub-directory per input)")
    add_run_options(p)
    p.add_argument("--depth-bundle", help="depth model bundle (pipeline.depth), for a sizer with a depth stream")
    p.add_argument("--boxes", action="append", metavar="FILE",
                   help="given boxes instead of a detector: a synthetic .gt.json or MOTChallenge text file; "
                        "once per input (same order) or 'auto' (INPUT's sibling <name>.gt.json / .gt.txt)")
    p.add_argument("--no-sizer", action="store_true", help="track only, do not size")
    p.add_argument("--render", action="store_true", help="also write annotated.mp4 (H.264, burnt-in overlay)")
    p.add_argument("--mot", action="store_true", help="also write mot.txt (MOTChallenge tracks)")
    p.add_argument("--every", type=int, default=1, metavar="N", help="analyse every Nth frame (default 1)")
    p.add_argument("--resume", action="store_true",
                   help="skip inputs whose output is already complete (re-running a failed shard is safe)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="annotate N inputs at once in worker processes, the cores shared between them (default 1)")
    p.add_argument("--shard", metavar="K/N", help="annotate only the K-th of N round-robin slices of the inputs, "
                   "K from 0 (a job array's task index: SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX)")
    p.add_argument("--summary", metavar="DIR", help="no annotation: merge the outputs in DIR (of every shard) into "
                   "DIR/summary.html and summary.json (polyps per video, sizes, classes, failures)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.summary is not None:
        if args.inputs or args.out:
            p.error("--summary DIR takes no inputs and no --out (it reads DIR)")
        return args
    if not args.inputs or not args.out:
        p.error("give one or more INPUTs and --out DIR (or --summary DIR)")
    if args.every < 1:
        p.error(f"--every must be >= 1, got {args.every}")
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.shard is not None:
        parse_shard(args.shard)
    return args


# ---------------------------------------------------------------------------------------------
# Per-input outputs
# ---------------------------------------------------------------------------------------------

def polyp_record(history: PolypHistory, thumbnail: str | None) -> dict[str, Any]:
    """One polyp in polyps.json."""
    est = history.estimate
    return {"id": history.track_id, "first_frame": history.first_frame, "last_frame": history.last_frame,
            "first_time": round(history.first_time, 4), "last_time": round(history.last_time, 4),
            "frames": history.frames_seen, "size_mm": rounded(est.size_mm) if est else None,
            "low_mm": rounded(est.low_mm) if est else None, "high_mm": rounded(est.high_mm) if est else None,
            "class": est.size_class if est else None, "frames_sized": est.frames_used if est else 0,
            "thumbnail": thumbnail}


def _crop_thumbnail(image: np.ndarray, box, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    # Some context around the polyp, as the sizer's crop has.
    x1, y1 = max(0, int(x1 - bw / 2)), max(0, int(y1 - bh / 2))
    x2, y2 = min(w, int(math.ceil(x2 + bw / 2))), min(h, int(math.ceil(y2 + bh / 2)))
    crop = image[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]
    scale = size / max(crop.shape[:2])
    return cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))),
                      interpolation=cv2.INTER_AREA)


class _Render:
    """Overlay drawing and H.264 encoding of annotated.mp4 on a thread of their own, fed through
    a bounded queue: encoding a 1080p frame costs about as much CPU as the whole analysis
    (docs/results.md), so on its own thread it overlaps with the analysis instead of adding to
    the output stage, and the queue bounds the frames held meanwhile."""

    def __init__(self, path: Path, fps: float, width: int, height: int, *, crf: int, preset: str,
                 synthetic: bool, line_width: int, capacity: int = 4) -> None:
        from pipeline.videowriter import H264Writer

        self.odd = (width % 2, height % 2)
        # yuv420p needs an even size: an odd frame gets one black row/column added.
        self.writer = H264Writer(path, fps=fps, size=(width + width % 2, height + height % 2), crf=crf,
                                 preset=preset, threads=1)
        self.synthetic, self.line_width = synthetic, line_width
        self.queue: BlockingQueue = BlockingQueue("render", capacity)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="annotate-render", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                try:
                    image, tracks, pts = self.queue.get()
                except EdgeClosed:
                    return
                drawn = draw_overlay(image, tracks, synthetic=self.synthetic, line_width=self.line_width)
                if any(self.odd):
                    drawn = np.pad(drawn, ((0, self.odd[1]), (0, self.odd[0]), (0, 0)))
                self.writer.write(drawn, pts)
        except BaseException as exc:      # handed to the producer at its next put or at close
            self.error = exc
            self.queue.close()
            self.queue.clear()

    def put(self, image: np.ndarray, tracks: list[TrackReport], pts: float) -> None:
        try:
            self.queue.put((image, tracks, pts))
        except EdgeClosed:
            pass
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.queue.close()
        self.thread.join()
        if self.error is not None:
            self.writer.abort()
            raise self.error
        self.writer.close()

    def abort(self) -> None:
        self.queue.close()
        self.queue.clear()
        self.thread.join(10.0)
        self.writer.abort()


class AnnotationWriter:
    """Consumes FrameResults in order and writes one input's outputs into `directory`."""

    def __init__(self, directory: Path, *, render: bool, mot: bool, synthetic: bool, fps: float | None,
                 thumb_size: int, crf: int, preset: str, line_width: int, truth=None) -> None:
        self.directory = directory
        # ground truth of the input (a synthetic .gt.json): size accuracy in the report
        self.accuracy = None
        if truth is not None:
            from .truth_accuracy import TruthAccuracy
            self.accuracy = TruthAccuracy(truth)
        self.synthetic = synthetic
        self.render = render
        self.mot = mot
        self.fps = fps or 30.0
        self.thumb_size = thumb_size
        self.crf = crf
        self.preset = preset
        self.line_width = line_width
        self.frames_written = 0
        self.frames_analysed = 0
        self._jsonl = open(directory / "frames.jsonl", "w", encoding="utf-8")
        self._video = None
        self._polyps = PolypHistories()
        self._views: dict[int, tuple[float, np.ndarray]] = {}      # track id -> best view, thumbnail
        self._mot = open(directory / "mot.txt", "w", encoding="utf-8") if mot else None
        self._last_overlay_index = -1
        self._last_pts: float | None = None

    def __call__(self, result: FrameResult) -> None:
        frame = result.frame
        analysed = result.overlay_frame_index == frame.index and result.overlay_frame_index != self._last_overlay_index
        if analysed:
            self._last_overlay_index = frame.index
            self.frames_analysed += 1
            line = {"index": frame.index, "time": round(frame.pts, 6),
                    "tracks": [track_record(r) for r in result.tracks]}
            self._jsonl.write(json.dumps(line) + "\n")
            for _, r in self._polyps.add(frame.index, frame.pts, result.tracks):
                view = r.quality * r.score
                if r.missed == 0 and view > self._views.get(r.track_id, (-1.0, None))[0]:
                    self._views[r.track_id] = view, _crop_thumbnail(frame.image, r.box, self.thumb_size)
            if self.accuracy is not None:
                self.accuracy.add(frame.index, frame.pts, result.tracks)
            if self._mot is not None:
                from .mot import MotBox, format_mot
                self._mot.write(format_mot({frame.index: [MotBox(r.track_id, tuple(r.box), float(r.score))
                                                          for r in result.tracks if r.missed == 0]}))
        if self.render:
            self._write_video(frame.image, result.tracks, frame.pts)
        self.frames_written += 1

    def _write_video(self, image: np.ndarray, tracks: list[TrackReport], pts: float) -> None:
        if self._video is None:
            self._video = _Render(self.directory / "annotated.mp4", self.fps, image.shape[1], image.shape[0],
                                  crf=self.crf, preset=self.preset, synthetic=self.synthetic,
                                  line_width=self.line_width)
        if self._last_pts is not None and pts <= self._last_pts:
            # A damaged input repeats a timestamp: keep the frame, a tick after the previous one.
            pts = self._last_pts + 1e-4
        self._last_pts = pts
        self._video.put(image, tracks, pts)

    def finish(self, title: str, summary: dict[str, Any]) -> list[dict[str, Any]]:
        self._jsonl.close()
        if self._video is not None:
            self._video.close()
        thumbs = self.directory / "thumbs"
        records = []
        polyps = self._polyps.polyps
        for tid in sorted(polyps):
            p = polyps[tid]
            if p.frames_seen == 0:
                continue
            rel = None
            if tid in self._views:
                thumbs.mkdir(exist_ok=True)
                rel = f"thumbs/polyp-{tid}.jpg"
                ok, data = cv2.imencode(".jpg", cv2.cvtColor(self._views[tid][1], cv2.COLOR_RGB2BGR))
                if ok:
                    (self.directory / rel).write_bytes(data.tobytes())
            records.append(polyp_record(p, rel))
        write_json_atomic(self.directory / "polyps.json", {"polyps": records})
        if self._mot is not None:
            self._mot.close()
        histories = {tid: p.rows(thin_indices(len(p))) for tid, p in polyps.items() if p.frames_seen}
        summary = {**summary, "polyps": len(records)}
        accuracy = self.accuracy.report() if self.accuracy is not None else None
        if accuracy is not None:
            write_json_atomic(self.directory / "accuracy.json", accuracy)
        write_text_atomic(self.directory / "report.html",
                          report_html(title, summary, records, histories, synthetic=self.synthetic,
                                      accuracy=accuracy))
        return records

    def abort(self) -> None:
        for stream in (self._jsonl, self._mot):
            if stream is not None and not stream.closed:
                stream.close()
        if self._video is not None:
            self._video.abort()


# ---------------------------------------------------------------------------------------------
# Driving
# ---------------------------------------------------------------------------------------------

def output_name(spec: str, taken: set[str]) -> str:
    base = "demo" if spec == "demo" else Path(spec).name.split(".")[0] or "video"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    taken.add(name)
    return name


def is_complete(directory: Path, *, render: bool, mot: bool) -> bool:
    return (directory / "run.json").is_file() and (not render or (directory / "annotated.mp4").is_file()) \
        and (not mot or (directory / "mot.txt").is_file())


@functools.cache
def _directory_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def auto_boxes(spec: str) -> str:
    if spec == "demo":
        return GROUND_TRUTH_BOXES     # the generator's own ground truth travels with the frames
    stem = Path(spec).name.split(".")[0]
    for suffix in (".gt.json", ".gt.txt"):
        candidate = Path(spec).with_name(stem + suffix)
        if candidate.is_file():
            return str(candidate)
    raise HagviewError(f"{spec}: --boxes auto found neither {stem}.gt.json nor {stem}.gt.txt next to it")


def ground_truth_of(spec: str, boxes: str | None):
    """The input's synthetic ground truth (given boxes that are a .gt.json, else a <name>.gt.json
    beside the input), for the report's size accuracy; None when there is none."""
    from .mot import read_ground_truth_json

    candidates = [Path(boxes)] if boxes and str(boxes).endswith(".gt.json") else []
    if spec != "demo":
        candidates.append(Path(spec).with_name(Path(spec).name.split(".")[0] + ".gt.json"))
    found = next((c for c in candidates if c.is_file()), None)
    return read_ground_truth_json(found) if found is not None else None


def annotate_input(spec: str, directory: Path, make_analysis, options: AnnotateOptions, config,
                   on_progress=None) -> dict[str, Any]:
    """Annotate one input into `directory` (built under a temporary name). Returns run.json.

    `make_analysis()` -> (Analysis, model_info, boxes path or None) is called once the input
    opened, so a broken video is reported as such before anything else is looked at.
    """
    if source_kind(spec) not in ("file", "demo"):
        raise HagviewError(f"{spec}: {PROG} reads files (live sources: use hagview --source)")
    source = open_source(spec, config.source, live=False)
    total = source.num_frames
    started = time.perf_counter()
    try:
        analysis, model_info, boxes = make_analysis()
        with atomic_dir(directory) as tmp:
            os.chmod(tmp, _directory_mode())     # mkdtemp makes it private; the result is an ordinary folder
            writer = AnnotationWriter(tmp, render=options.render, mot=options.mot, synthetic=model_info.get("mark") or False,
                                      fps=source.fps, thumb_size=config.output.thumbnail_size,
                                      crf=config.output.render_crf, preset=config.output.render_preset,
                                      line_width=config.output.overlay_line_width, truth=ground_truth_of(spec, boxes))
            progress = Progress(total, unit="frames", label=directory.name, rate_unit="fps",
                                enabled=not options.quiet and on_progress is None)

            def frame_done() -> None:
                progress.update()
                if on_progress is not None:     # a worker process reports to the job board
                    on_progress(progress.done, total)
            try:
                stats = run_offline(source, analysis, writer, every=options.every,
                                    queue_capacity=config.runtime.offline_queue_capacity,
                                    on_frame_done=frame_done)
            except BaseException:
                writer.abort()
                progress.enabled = False
                raise
            progress.close()
            elapsed = time.perf_counter() - started
            summary = {"input": spec,
                       "sizer": model_info["sizer"]["path"] if model_info["sizer"] else "none (tracking only)",
                       "boxes from": model_info["detector"]["path"] if model_info["detector"] else f"given: {boxes}",
                       "size interval": getattr(analysis, "interval_note", "") or "none (tracking only)",
                       "frames": writer.frames_written, "frames analysed": writer.frames_analysed,
                       "duration (s)": round(source.duration or 0.0, 3),
                       "processing fps": round(writer.frames_written / elapsed, 2) if elapsed > 0 else None,
                       "corrupt packets skipped": source.counters.get("corrupt_packets", 0),
                       "truncated": bool(source.counters.get("truncated", 0))}
            polyps = writer.finish(f"hagview-annotate: {directory.name}", summary)
            run = {"input": os.path.abspath(spec) if spec != "demo" else "demo", "boxes": boxes,
                   "models": model_info, "every": options.every, "render": options.render, "mot": options.mot,
                   "frames": writer.frames_written, "frames_analysed": writer.frames_analysed,
                   "polyps": len(polyps), "seconds": round(elapsed, 3), "source": dict(source.counters),
                   "stats": stats, "config": run_config_to_dict(config),
                   # the boundaries the shown classes were decided with (the sizer bundle's decision)
                   "class_thresholds_mm": {"diminutive_max": analysis.smooth.smoothers.smoother_settings.get(
                       "diminutive_max_mm", DIMINUTIVE_MAX_MM), "large_min": LARGE_MIN_MM}}
            write_json_atomic(tmp / "run.json", run)
    finally:
        source.close()
    if source.counters.get("truncated"):
        log.warning("%s: the file is damaged; annotated the %d frames before the damage", spec, run["frames"])
    return run


def input_error(spec: str, exc: BaseException) -> str:
    """The one line for an input that failed: our errors name their file already; others get
    the input's name in front."""
    if isinstance(exc, HagviewError) or (isinstance(exc, OSError) and exc.filename):
        return describe_error(exc)
    return f"{spec}: {describe_error(exc)}"


def plan_tasks(inputs: list[str], out: Path, boxes_list: list[str]) -> list[Task]:
    """One Task per input, in order; output names are made over the whole list (so a shard of it
    names its outputs as the whole run would)."""
    taken: set[str] = set()
    return [Task(index=i, spec=spec, name=(name := output_name(spec, taken)), directory=out / name,
                 boxes=(AUTO_BOXES if boxes_list == [AUTO_BOXES] else boxes_list[i]) if boxes_list else None)
            for i, spec in enumerate(inputs)]


class SharedModels:
    """The models of one process, loaded once (on first use) and shared by every input it
    annotates: the detector's analysis, or for inputs with given boxes the sizer alone."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        config = load_run_config(settings["config"], settings["set"])
        if settings.get("threads") and not config.runtime.inference_threads:     # a worker's share of the cores
            config = load_run_config(settings["config"], [*settings["set"], f"runtime.inference_threads={settings['threads']}"])
        self.config = config
        self._shared: tuple[Analysis, dict[str, Any]] | None = None
        share_cores_between_threads()

    def load(self, given_boxes: bool) -> tuple[Analysis, dict[str, Any]]:
        """The shared analysis (built on the first call): the detector's, or the sizer's alone
        for inputs with given boxes."""
        if self._shared is None:
            settings = self.settings
            self._shared = build_analysis(self.config, sizer=settings["sizer"],
                                          detector=None if given_boxes else settings["detector"],
                                          boxes=GROUND_TRUTH_BOXES if given_boxes else None,
                                          backend=settings["backend"], offline=True, depth=settings.get("depth"))
        return self._shared

    def analysis_for(self, task: Task):
        """(Analysis, model info, boxes path or None) for `task`."""
        boxes = None if task.boxes is None else auto_boxes(task.spec) if task.boxes == AUTO_BOXES else task.boxes
        shared, info = self.load(given_boxes=boxes is not None)
        if boxes is None:
            return shared, info, None
        analysis = Analysis(self.config, boxes=BoxProvider(boxes), sizer=shared.sizer)
        return analysis, {**info, "boxes": boxes}, boxes


def annotate_task(task: Task, models: SharedModels, on_progress=None) -> dict[str, Any]:
    """Annotate one input with the process's models. Returns its run.json."""
    return annotate_input(task.spec, task.directory, lambda: models.analysis_for(task), models.settings["options"],
                          models.config, on_progress=on_progress)


@run_cli(PROG)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summary is not None:
        summary = write_summary(Path(args.summary))
        totals = summary["totals"]
        print(f"{PROG}: {args.summary}: {totals['videos']} videos, {totals['polyps']} polyps, "
              f"{totals['failed']} failed -> {Path(args.summary) / 'summary.html'}", file=sys.stderr)
        return EXIT_OK
    options = AnnotateOptions.from_args(args)
    load_run_config(args.config, args.set)      # a bad --config or --set fails before any input opens
    out = check_writable_dir(args.out)
    share_cores_between_threads()
    boxes_list = args.boxes or []
    if boxes_list and boxes_list != [AUTO_BOXES] and len(boxes_list) != len(args.inputs):
        raise ConfigError(f"--boxes given {len(boxes_list)} times for {len(args.inputs)} inputs "
                          f"(give it once per input, or --boxes auto)")
    sizer = None if args.no_sizer else (args.sizer or default_bundle("sizer"))
    detector = args.detector or default_bundle("detector")
    if sizer is None and not args.no_sizer:
        log.warning("no sizer bundle (none given, no committed demo bundle): tracking only")
    if not boxes_list and detector is None:
        raise ConfigError("no detector bundle (none given, no committed demo bundle): "
                          "pass --detector BUNDLE or --boxes FILE")

    tasks = plan_tasks(args.inputs, out, boxes_list)
    if args.shard is not None:
        k, n = parse_shard(args.shard)
        tasks = [tasks[i] for i in shard_indices(len(tasks), k, n)]
    todo = []
    for task in tasks:
        if args.resume and is_complete(task.directory, render=options.render, mot=options.mot):
            print(f"{PROG}: {task.spec}: already done in {task.directory} (--resume)", file=sys.stderr)
        else:
            todo.append(task)
    failures = 0

    def succeeded(task: Task, run: dict[str, Any]) -> None:
        clear_failure(out, task.name)

    def failed(task: Task, message: str) -> None:
        nonlocal failures
        failures += 1
        record_failure(out, task.name, task.spec, message)

    settings = {"config": args.config, "set": list(args.set), "sizer": sizer, "detector": detector,
                "backend": args.backend, "depth": args.depth_bundle, "options": options}
    if args.jobs > 1 and len(todo) > 1:
        jobs = min(args.jobs, len(todo))
        settings["threads"] = threads = threads_per_job(jobs)
        os.environ["OMP_NUM_THREADS"] = str(threads)     # the workers' thread pools, set before they start
        run_jobs(todo, settings, jobs, on_done=succeeded, on_failed=failed, quiet=options.quiet,
                 prefix=f"{PROG}: ")
        return EXIT_OK if failures == 0 else EXIT_FAILURE

    # One process: the models load once (a bad bundle stops here) and serve every input.
    models = SharedModels(settings)
    models.load(given_boxes=bool(boxes_list))
    for task in todo:
        try:
            run = annotate_task(task, models)
            succeeded(task, run)
            print(f"{PROG}: {task.spec}: {run['frames']} frames, {run['polyps']} polyps -> "
                  f"{task.directory / 'report.html'}", file=sys.stderr)
        except KeyboardInterrupt:
            raise
        except Exception as exc:     # one bad input must not stop the others
            if os.environ.get("HAGVIEW_DEBUG") and not isinstance(exc, (HagviewError, OSError)):
                raise
            message = input_error(task.spec, exc)
            failed(task, message)
            print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_OK if failures == 0 else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
