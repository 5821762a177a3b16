"""Annotating an archive: shards for job arrays, worker processes, failure records and the
archive-level summary (`hagview-annotate --shard K/N --jobs N --resume`, `--summary DIR`).

- Shards: the input list (the same on every machine: a shell glob sorts it) is dealt round
  robin, input i to shard i mod N, so N array tasks cover it with no coordinator. Output names
  are made over the whole list first, so two inputs with the same name in different shards
  still get different directories.
- Jobs: N worker processes, each with cores / N inference threads, each loading the models
  once and annotating one input after another as the parent hands them out (a process per
  input paid the imports and the model loading every time: on short videos that made --jobs 2
  slower than one process). An input that fails fails alone; a worker that dies fails the input
  it was on, and a fresh worker takes the rest.
- Failures: an input that failed leaves `<name>.failed.json` beside the outputs (input, error
  line, when); a later success removes it. `--resume` re-runs exactly the inputs without a
  complete output, failed ones included.
- Summary: `summary.json` and `summary.html` over every `<name>/run.json` + `polyps.json` and
  every failure record in DIR, whichever machine wrote them.
"""
from __future__ import annotations

import html
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from pipeline.charts import html_page, html_table
from pipeline.errors import ConfigError, DataError
from pipeline.fsutil import write_json_atomic, write_text_atomic
from pipeline.progress import format_seconds
from pipeline.sizeclass import TRICLASS_NAMES, triclass_name

FAILED_SUFFIX = ".failed.json"
SIZE_BINS_MM = (0.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, math.inf)


# ---------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------

def parse_shard(text: str) -> tuple[int, int]:
    """"K/N" -> (K, N) with 0 <= K < N (K counts from 0, as SLURM_ARRAY_TASK_ID with --array=0-(N-1)
    and a Kubernetes indexed Job's JOB_COMPLETION_INDEX do)."""
    try:
        k_text, n_text = text.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise ConfigError(f"--shard {text}: expected K/N with whole numbers, e.g. 0/4") from None
    if n < 1 or not 0 <= k < n:
        raise ConfigError(f"--shard {text}: K must be in 0..N-1 and N >= 1 (K counts from 0)")
    return k, n


def shard_indices(count: int, k: int, n: int) -> list[int]:
    """Positions of the K-th of N round-robin slices of a list of `count` items."""
    return list(range(k, count, n))


# ---------------------------------------------------------------------------------------------
# Failure records
# ---------------------------------------------------------------------------------------------

def failure_path(out: Path, name: str) -> Path:
    return out / f"{name}{FAILED_SUFFIX}"


def record_failure(out: Path, name: str, spec: str, message: str) -> None:
    write_json_atomic(failure_path(out, name), {
        "name": name, "input": spec if spec == "demo" else os.path.abspath(spec), "error": message, "host": os.uname().nodename,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def clear_failure(out: Path, name: str) -> None:
    failure_path(out, name).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    """One input of the run: where it comes from, its output directory and its given boxes."""
    index: int
    spec: str
    name: str
    directory: Path
    boxes: str | None = None


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Inference threads per worker so that jobs x threads does not exceed the cores."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, jobs))


def _worker(inbox, outbox, settings: dict[str, Any]) -> None:
    """A worker process: annotate the tasks from `inbox` one after another (None: stop) with the
    models loaded once; report progress and each outcome on `outbox`."""
    from pipeline.annotate import SharedModels, annotate_task, input_error

    models = SharedModels(settings)
    while True:
        task = inbox.get()
        if task is None:
            return
        last = [0.0]

        def progress(done: int, total: int | None, index: int = task.index) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.25 or (total and done >= total):
                last[0] = now
                outbox.put(("progress", index, done, total))
        try:
            run = annotate_task(task, models, on_progress=progress)
            outbox.put(("done", task.index, {"frames": run["frames"], "polyps": run["polyps"], "worker": os.getpid()}))
        except KeyboardInterrupt:
            outbox.put(("failed", task.index, f"{task.spec}: interrupted"))
            return
        except BaseException as exc:     # reported to the parent, which records it; the others go on
            outbox.put(("failed", task.index, input_error(task.spec, exc)))


class JobBoard:
    """One progress line per worker and a total line with the time left, on one stream.

    On a terminal the block is redrawn in place; elsewhere (batch logs) it is printed every
    `log_interval` seconds."""

    def __init__(self, tasks: Sequence[Task], jobs: int, stream: TextIO | None = None, *,
                 enabled: bool = True, interval: float = 0.5, log_interval: float = 10.0, prefix: str = "") -> None:
        self.prefix = prefix
        self.tasks = {t.index: t for t in tasks}
        self.jobs = jobs
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interval = interval if self.stream.isatty() else log_interval
        self._tty = self.stream.isatty()
        self.slots: list[int | None] = [None] * jobs
        self.done: dict[int, int] = {}
        self.totals: dict[int, int | None] = {}
        self.started: dict[int, float] = {}
        self.finished = 0
        self.failed = 0
        self._start = time.monotonic()
        self._last = 0.0
        self._drawn = 0

    def start(self, slot: int, index: int) -> None:
        self.slots[slot] = index
        self.started[index] = time.monotonic()
        self.done[index] = 0

    def progress(self, index: int, done: int, total: int | None) -> None:
        self.done[index] = done
        self.totals[index] = total
        self.draw()

    def end(self, slot: int, ok: bool) -> None:
        index = self.slots[slot]
        self.slots[slot] = None
        if index is not None and self.totals.get(index):
            self.done[index] = self.totals[index]
        self.finished += 1
        self.failed += 0 if ok else 1

    def lines(self) -> list[str]:
        now = time.monotonic()
        out = []
        for slot, index in enumerate(self.slots):
            if index is None:
                out.append(f"[{slot + 1}] idle")
                continue
            task, done, total = self.tasks[index], self.done.get(index, 0), self.totals.get(index)
            rate = done / max(now - self.started[index], 1e-9)
            left = (total - done) / rate if total and rate > 0 else math.inf
            of = f"/{total}" if total else ""
            out.append(f"[{slot + 1}] {task.name}: {done}{of} frames {rate:.1f} fps ETA {format_seconds(left)}")
        frames = sum(self.done.values())
        rate = frames / max(now - self._start, 1e-9)
        known = [t for t in self.totals.values() if t]
        average = sum(known) / len(known) if known else None
        remaining = 0.0
        for index in self.tasks:
            total = self.totals.get(index)
            if total:
                remaining += max(total - self.done.get(index, 0), 0)
            elif index not in self.done or index in self.slots:
                remaining += average if average is not None else math.nan
        left = remaining / rate if rate > 0 and remaining == remaining else math.inf
        failed = f", {self.failed} failed" if self.failed else ""
        out.append(f"total: {self.finished}/{len(self.tasks)} inputs{failed}, {frames} frames, "
                   f"{rate:.1f} fps, time left {format_seconds(left)}")
        return out

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self.interval):
            return
        self._last = now
        lines = [self.prefix + line for line in self.lines()]
        if self._tty:
            up = f"\x1b[{self._drawn}F" if self._drawn else ""
            self.stream.write(up + "".join(line + "\x1b[K\n" for line in lines))
            self._drawn = len(lines)
        else:
            self.stream.write("".join(line + "\n" for line in lines))
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line that stays (an input done or failed), above the progress block."""
        if self._tty and self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0
        self.stream.write(self.prefix + text + "\n")
        self.stream.flush()


@dataclass
class _Worker:
    """A worker process of `run_jobs`, its own task queue and the input it is on (None: idle)."""
    process: Any
    inbox: Any
    task: Task | None = None


def run_jobs(tasks: Sequence[Task], settings: dict[str, Any], jobs: int, *,
             on_done: Callable[[Task, dict[str, Any]], None], on_failed: Callable[[Task, str], None],
             quiet: bool = False, stream: TextIO | None = None, prefix: str = "", worker=_worker) -> None:
    """Annotate `tasks` in up to `jobs` worker processes (spawned: no state shared with this one),
    handing each idle worker the next input. `worker(inbox, outbox, settings)`: the process's
    function (tests pass one that dies)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    outbox = context.Queue()
    pending = list(tasks)
    workers: dict[int, _Worker] = {}       # by slot
    board = JobBoard(tasks, jobs, stream, enabled=not quiet, prefix=prefix)
    outcome: dict[int, tuple[str, Any]] = {}

    def finish(slot: int, task: Task, kind: str, value: Any) -> None:
        workers[slot].task = None
        board.end(slot, kind == "done")
        if kind == "done":
            on_done(task, value)
            board.message(f"{task.spec}: {value['frames']} frames, {value['polyps']} polyps "
                          f"-> {task.directory / 'report.html'}")
        else:
            on_failed(task, value)
            board.message(f"error: {value}")
        board.draw(force=True)
    try:
        while pending or any(w.task is not None for w in workers.values()):
            for slot in range(jobs):
                if slot in workers and workers[slot].task is None and not workers[slot].process.is_alive():
                    del workers[slot]        # died between inputs: nothing of its to fail
                if slot not in workers and pending:
                    inbox = context.Queue()
                    process = context.Process(target=worker, args=(inbox, outbox, settings),
                                              name=f"hagview-annotate-{slot + 1}", daemon=True)
                    process.start()
                    workers[slot] = _Worker(process, inbox)
                if slot in workers and workers[slot].task is None and pending:
                    task = pending.pop(0)
                    workers[slot].inbox.put(task)
                    workers[slot].task = task
                    board.start(slot, task.index)
            try:
                kind, index, *rest = outbox.get(timeout=0.2)
                if kind == "progress":
                    board.progress(index, *rest)
                else:
                    outcome[index] = (kind, rest[0])
            except Exception:       # queue.Empty: look at the processes
                pass
            for slot, w in list(workers.items()):
                process, task = w.process, w.task
                if task is not None and task.index in outcome:
                    finish(slot, task, *outcome.pop(task.index))
                elif task is not None and not process.is_alive():
                    process.join()
                    # The worker's last message was flushed to the pipe before it exited.
                    deadline = time.monotonic() + 2.0
                    while task.index not in outcome and time.monotonic() < deadline:
                        if not _drain(outbox, board, outcome):
                            time.sleep(0.01)
                    finish(slot, task, *outcome.pop(task.index, (
                        "failed", f"{task.spec}: the worker process exited with code {process.exitcode}")))
                    del workers[slot]        # a fresh worker takes the next input
    finally:
        for w in workers.values():
            w.inbox.put(None)
        for w in workers.values():
            w.process.join(5.0)
            if w.process.is_alive():
                w.process.terminate()
                w.process.join(5.0)


def _drain(queue, board: JobBoard, outcome: dict) -> bool:
    """Take every message waiting; True when any was taken."""
    took = False
    while True:
        try:
            kind, index, *rest = queue.get_nowait()
        except Exception:
            return took
        took = True
        if kind == "progress":
            board.progress(index, *rest)
        else:
            outcome[index] = (kind, rest[0])


# ---------------------------------------------------------------------------------------------
# The archive summary
# ---------------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable JSON file ({exc})") from None


def collect_archive(directory: Path) -> dict[str, Any]:
    """Everything `write_summary` reports, from the per-input outputs in `directory`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory")
    videos, failures, sizes = [], [], []
    classes = dict.fromkeys(TRICLASS_NAMES, 0)
    unsized = 0
    for run_path in sorted(directory.glob("*/run.json")):
        run = _read_json(run_path)
        polyps_path = run_path.parent / "polyps.json"
        polyps = _read_json(polyps_path)["polyps"] if polyps_path.is_file() else []
        for p in polyps:
            size = p.get("size_mm")
            if size is None:
                unsized += 1
            else:
                sizes.append(float(size))
                classes[triclass_name(float(size))] += 1
        videos.append({"name": run_path.parent.name, "input": run.get("input"), "frames": run.get("frames"),
                       "polyps": len(polyps), "sized": sum(1 for p in polyps if p.get("size_mm") is not None),
                       "seconds": run.get("seconds")})
    done = {v["name"] for v in videos}
    for path in sorted(directory.glob(f"*{FAILED_SUFFIX}")):
        record = _read_json(path)
        if record.get("name") not in done:      # a later run succeeded: the record is stale
            failures.append(record)
    histogram = []
    for low, high in zip(SIZE_BINS_MM, SIZE_BINS_MM[1:]):
        label = f">= {low:g}" if math.isinf(high) else f"{low:g}-{high:g}"
        histogram.append({"size_mm": label, "polyps": sum(1 for s in sizes if low <= s < high)})
    return {"directory": str(directory), "videos": videos, "failures": failures,
            "totals": {"videos": len(videos), "failed": len(failures), "polyps": sum(v["polyps"] for v in videos),
                       "sized": len(sizes), "unsized": unsized,
                       "frames": sum(v["frames"] or 0 for v in videos)},
            "per_class": classes, "size_histogram": histogram,
            "size_mm": {"median": _median(sizes), "min": min(sizes) if sizes else None,
                        "max": max(sizes) if sizes else None}}


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def write_summary(directory: Path) -> dict[str, Any]:
    """Write `summary.json` and `summary.html` into `directory`; returns the summary."""
    summary = collect_archive(directory)
    directory = Path(directory)
    write_json_atomic(directory / "summary.json", summary)
    totals = summary["totals"]
    parts = ["<h2>Totals</h2>" + html_table([totals], list(totals)),
             "<h2>Polyps per size class</h2>" + html_table([summary["per_class"]], list(summary["per_class"])),
             "<p class='note'>Class of each polyp's final smoothed size (diminutive <= 5 mm, large >= 10 mm).</p>",
             "<h2>Size distribution</h2>" + html_table(summary["size_histogram"], ["size_mm", "polyps"]),
             "<h2>Videos</h2>"]
    rows = [{"video": f"<a href='{html.escape(v['name'])}/report.html'>{html.escape(v['name'])}</a>",
             "frames": v["frames"], "polyps": v["polyps"], "sized": v["sized"], "seconds": v["seconds"]}
            for v in summary["videos"]]
    parts.append(_raw_table(rows, ["video", "frames", "polyps", "sized", "seconds"]) if rows else "<p>None.</p>")
    parts.append("<h2>Failures</h2>")
    parts.append(html_table([{k: f.get(k) for k in ("input", "error", "host", "time")} for f in summary["failures"]],
                            ["input", "error", "host", "time"]) if summary["failures"] else "<p>None.</p>")
    write_text_atomic(directory / "summary.html", html_page(f"hagview-annotate archive: {directory.name}",
                                                            "".join(parts)))
    return summary


def _raw_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A table whose first column is already HTML (links); the rest is escaped."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{row[c] if c == columns[0] else html.escape(str(row[c]))}</td>"
                                    for c in columns) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
