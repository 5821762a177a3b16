"""The streaming graph: stages on threads joined by edges with a stated queue policy.

Edge policies (Holoscan's habit: every edge says what happens when the consumer is slow):
- `LatestSlot` (live capture and replay): capacity one, a new item replaces the waiting one and
  the replaced item is counted as a drop. Nothing can pile up, so delay cannot grow.
- `BlockingQueue` (offline annotation): bounded; a full queue blocks the producer, so no frame
  is ever lost and memory stays bounded.

Each item passing through the graph carries a `stamps` dict (stage name -> perf_counter() when
that stage finished with it): latency per stage and end to end is measured, not guessed.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Generic, Iterable, TypeVar

import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")

EDGE_POLICIES = ("latest", "blocking")
GATE_WAIT_S = 0.008     # the longest a stage waits for a closed `StageGraph` gate
STAGE_PRIORITIES = ("normal", "low", "idle")    # StageGraph(priority=...)
LOW_NICE = 10           # nice steps of priority "low"


class EdgeClosed(Exception):
    """The edge was closed and holds no more items."""


class _Edge(Generic[T]):
    policy = ""

    def __init__(self, name: str) -> None:
        self.name = name
        self._cond = threading.Condition()
        self._closed = False
        self.puts = 0           # items offered
        self.drops = 0          # items discarded without being taken (latest-wins only)
        self.max_depth = 0      # most items ever waiting at once

    def close(self) -> None:
        """No more puts; consumers drain what is waiting, then get EdgeClosed."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _wait_until(self, ready, timeout: float | None) -> bool:
        """With the lock held: wait until `ready()` or the edge is closed; False on time-out."""
        end = None if timeout is None else time.monotonic() + timeout
        while not ready() and not self._closed:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._cond.wait(left)
        return True

    def _wait_for_item(self, has_item, timeout: float | None) -> bool:
        """With the lock held: wait until `has_item()`; False on time-out; EdgeClosed once
        closed and empty."""
        if not self._wait_until(has_item, timeout):
            return False
        if not has_item():
            raise EdgeClosed(self.name)
        return True

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, Any]:
        return {"policy": self.policy, "puts": self.puts, "drops": self.drops,
                "depth": self.depth, "max_depth": self.max_depth, "capacity": self.capacity}

    depth: int
    capacity: int


class LatestSlot(_Edge[T]):
    """Capacity one, latest wins: `put` never blocks; a waiting item it replaces is a drop."""

    policy = "latest"
    capacity = 1

    def __init__(self, name: str = "slot") -> None:
        super().__init__(name)
        self._item: T | None = None
        self._full = False

    @property
    def depth(self) -> int:
        return int(self._full)

    def put(self, item: T) -> bool:
        """True when the slot was empty: a consumer that is told about new items (rather than
        waiting in `get`) needs telling now; otherwise it has not yet taken the one replaced."""
        with self._cond:
            if self._closed:
                raise EdgeClosed(self.name)
            was_empty = not self._full
            if not was_empty:
                self.drops += 1
            self._item, self._full = item, True
            self.puts += 1
            self.max_depth = max(self.max_depth, 1)
            self._cond.notify()
            return was_empty

    def peek(self) -> T | None:
        """The waiting item, left in place (None when empty)."""
        with self._cond:
            return self._item

    def get(self, timeout: float | None = None) -> T | None:
        """The newest item; None on time-out; EdgeClosed once closed and empty."""
        with self._cond:
            if not self._wait_for_item(lambda: self._full, timeout):
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def clear(self) -> int:
        """Discard what is waiting (after a seek); returns how many items went (0 or 1)."""
        with self._cond:
            n = int(self._full)
            self._item, self._full = None, False
            return n


class BlockingQueue(_Edge[T]):
    """Bounded FIFO: `put` blocks while full, so nothing is lost and memory stays bounded."""

    policy = "blocking"

    def __init__(self, name: str = "queue", capacity: int = 4) -> None:
        super().__init__(name)
        if capacity < 1:
            raise ValueError(f"BlockingQueue capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[T] = deque()

    @property
    def depth(self) -> int:
        return len(self._items)

    def put(self, item: T, timeout: float | None = None) -> bool:
        """Wait for room; False on time-out. Raises EdgeClosed if the edge is closed."""
        with self._cond:
            if not self._wait_until(lambda: len(self._items) < self.capacity, timeout):
                return False
            if self._closed:
                raise EdgeClosed(self.name)
            self._items.append(item)
            self.puts += 1
            self.max_depth = max(self.max_depth, len(self._items))
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item; None on time-out; EdgeClosed once closed and empty."""
        with self._cond:
            if not self._wait_for_item(lambda: bool(self._items), timeout):
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def clear(self) -> int:
        with self._cond:
            n = len(self._items)
            self._items.clear()
            self._cond.notify_all()
            return n


def make_edge(policy: str, name: str, capacity: int = 4) -> LatestSlot | BlockingQueue:
    if policy == "latest":
        return LatestSlot(name)
    if policy == "blocking":
        return BlockingQueue(name, capacity)
    raise ValueError(f"unknown edge policy {policy!r}; expected one of {EDGE_POLICIES}")


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------

_QUANTILES = np.array([0.50, 0.95, 0.99])


class LatencyStats:
    """Rolling samples (seconds) per name; summaries in milliseconds: p50, p95, p99, max, count.

    The window is bounded (default 3000 samples per name: over a minute at 30 fps) so a long run
    neither grows memory nor hides a recent slowdown behind an hour of history. Samples live in
    a numpy ring per name: `summary()` is a few array operations, not a Python walk over every
    sample (the viewer polls it twice a second, and a long hold of the GIL there shows up as a
    late paint).
    """

    def __init__(self, window: int = 3000) -> None:
        self.window = window
        self._rings: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            ring = self._rings.get(name)
            if ring is None:
                ring = self._rings[name] = np.empty(self.window, dtype=np.float64)
                self._counts[name] = 0
            count = self._counts[name]
            ring[count % self.window] = seconds
            self._counts[name] = count + 1

    def summary(self) -> dict[str, dict[str, float]]:
        with self._lock:
            snapshot = {name: ring[:min(self._counts[name], self.window)].copy()
                        for name, ring in self._rings.items()}
            counts = dict(self._counts)
        out = {}
        for name, values in snapshot.items():
            if values.size == 0:
                continue
            # numpy's default ("linear") percentiles from one sort: np.percentile's own overhead
            # is most of the cost at these sizes.
            ordered = np.sort(values) * 1000.0
            position = _QUANTILES * (ordered.size - 1)
            low = position.astype(np.int64)
            high = np.minimum(low + 1, ordered.size - 1)
            p50, p95, p99 = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
            out[name] = {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
                         "max_ms": float(ordered[-1]), "count": counts[name]}
        return out

    def reset(self) -> None:
        with self._lock:
            self._rings.clear()
            self._counts.clear()


class FpsMeter:
    """Events per second over the last `window_s` seconds, and over the whole run."""

    def __init__(self, window_s: float = 2.0, clock: Callable[[], float] = time.perf_counter) -> None:
        self.window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque()
        self._lock = threading.Lock()
        self.count = 0
        self._first: float | None = None
        self._last: float | None = None

    def tick(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        with self._lock:
            self.count += 1
            if self._first is None:
                self._first = now
            self._last = now
            self._times.append(now)
            while self._times and now - self._times[0] > self.window_s:
                self._times.popleft()

    @property
    def fps(self) -> float:
        """Recent rate (0 when fewer than two events in the window or the stream stopped)."""
        now = self._clock()
        with self._lock:
            while self._times and now - self._times[0] > self.window_s:
                self._times.popleft()
            if len(self._times) < 2:
                return 0.0
            span = self._times[-1] - self._times[0]
            return (len(self._times) - 1) / span if span > 0 else 0.0

    @property
    def average_fps(self) -> float:
        with self._lock:
            if self._first is None or self._last is None or self._last <= self._first:
                return 0.0
            return (self.count - 1) / (self._last - self._first)


# --------------------------------------------------------------------------------------------
# Stages and the graph
# --------------------------------------------------------------------------------------------

class Stage:
    """A named step: `process(item) -> item` (or None to drop the item on purpose).

    `reset()` is called when the stream is discontinuous (seek), so stateful stages (tracker,
    smoother) start over instead of linking unrelated frames. `workers` > 1 runs that many
    threads on the stage (blocking graphs only; for a stateless, GIL-releasing step such as
    inference); items still leave the stage in the order they came.
    """

    def __init__(self, name: str, process: Callable[[Any], Any | None],
                 reset: Callable[[], None] | None = None, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"stage {name}: workers must be >= 1, got {workers}")
        self.name = name
        self.process = process
        self.reset = reset or (lambda: None)
        self.workers = workers
        self.parts: tuple[Stage, ...] = (self,)


def chain(stages: Iterable[Stage]) -> Stage:
    """Consecutive stages run one after another on one thread: the edges between them become
    direct calls (no queue, no thread hand-off, no GIL hand-over), and each part is still timed
    and stamped under its own name. Worth it for stages that take a fraction of a millisecond
    a frame, where a hand-off costs as much as the work; the parts must run on one worker."""
    parts = tuple(part for stage in stages for part in stage.parts)
    if not parts:
        raise ValueError("chain needs at least one stage")
    if len(parts) == 1:
        return parts[0]
    if any(part.workers != 1 for part in parts):
        raise ValueError(f"chain: stages with several workers cannot share a thread "
                         f"({', '.join(p.name for p in parts if p.workers != 1)})")
    chained = Stage("+".join(p.name for p in parts), process=parts[0].process,
                    reset=lambda: [part.reset() for part in parts])
    chained.parts = parts
    return chained


class _InOrder:
    """Hands out sequence numbers in dequeue order and lets results leave in that order."""

    def __init__(self) -> None:
        self.take_lock = threading.Lock()
        self.turn = threading.Condition()
        self.taken = 0
        self.next_out = 0
        self.running = 0


def lower_thread_priority(priority: str) -> None:
    """Give the calling thread a `StageGraph` priority ("normal" leaves it as it is). Linux
    only; where it is refused (a sandbox) the thread keeps running at normal priority."""
    if priority not in STAGE_PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(STAGE_PRIORITIES)}, got {priority!r}")
    if priority == "normal" or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        if priority == "idle":
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + LOW_NICE))
    except OSError as exc:
        log.debug("could not lower the priority of thread %d: %s", tid, exc)


def call_at_priority(priority: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on a new thread of that priority; returns its result or raises its
    exception. Threads started inside (an inference engine's worker pool, made with its session)
    inherit the priority: a pool left at normal priority, spinning while it waits for a
    lower-priority stage thread, would take the cores from that very thread."""
    if priority == "normal":
        return fn(*args, **kwargs)
    outcome: list = []

    def run() -> None:
        try:
            lower_thread_priority(priority)
            outcome.append((True, fn(*args, **kwargs)))
        except BaseException as exc:
            outcome.append((False, exc))
    thread = threading.Thread(target=run, name="load-at-priority", daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


class StageGraph:
    """A chain of stages, one thread each (or `Stage.workers`), joined by edges of one policy.

    `feed` -> edge "in:<first stage>" -> stage 1 -> edge -> ... -> last stage -> `sink(item)`.
    The sink runs on the last stage's thread. Items must have a `stamps` dict; each stage writes
    its name there when done, and the graph records per-stage processing time ("<stage>"),
    waiting time on the edge before it ("<stage>.wait"), and end to end ("end_to_end", from
    the item's `origin_stamp` to the sink).

    An exception in a stage stops the graph and is handed to `on_error` (and kept in `error`).

    `priority` of the stage threads against the threads that created the graph (Linux, where
    each thread has its own scheduling settings; elsewhere it is ignored): the live pipeline runs
    its analysis below the threads that capture and show the video, so on a machine with few
    cores inference gives way to the picture rather than the other way round.
      "normal"  the same as the caller;
      "low"     `LOW_NICE` nice steps below: a larger share of the cores goes to the caller, but
                a waking display thread may still wait for a running inference's time slice
                (measured on a 2-core machine beside two such busy threads: a resize of 2.0 ms
                p50 took 6.0 ms p99);
      "idle"    SCHED_IDLE: the stages only get time that no normal thread wants, and a waking
                display thread takes the core at once (the same resize: 3.0 ms p99, its CPU
                time). Other busy programs at normal priority then come before the analysis too.

    `gate`: an event the stage threads wait for (at most `GATE_WAIT_S`) before each stage
    part. Priorities share out the cores but not the interpreter lock: a consumer whose work is
    more urgent than the analysis (the viewer, from a frame's arrival to its paint) clears it
    while that work runs, so the analysis does not start Python work that the urgent threads
    would then wait for. The wait is bounded: a consumer that never sets it slows the
    analysis down, it cannot stop it.
    """

    def __init__(self, stages: Iterable[Stage], sink: Callable[[Any], None], *, policy: str,
                 capacity: int = 4, origin_stamp: str = "capture",
                 on_error: Callable[[BaseException], None] | None = None,
                 latency: LatencyStats | None = None, priority: str = "normal",
                 gate: threading.Event | None = None) -> None:
        self.stages = list(stages)
        if not self.stages:
            raise ValueError("a StageGraph needs at least one stage")
        self.policy = policy
        self.sink = sink
        self.origin_stamp = origin_stamp
        self.on_error = on_error
        if priority not in STAGE_PRIORITIES:
            raise ValueError(f"StageGraph priority must be one of {', '.join(STAGE_PRIORITIES)}, got {priority!r}")
        self.priority = priority
        self.gate = gate
        self.edges = [make_edge(policy, f"in:{s.name}", capacity) for s in self.stages]
        self.latency = latency or LatencyStats()
        self.fps_in = FpsMeter()
        self.fps_out = FpsMeter()
        self.error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        # Latest-wins graphs drop and reset; parallel workers would reorder what they keep.
        self._workers = [s.workers if policy == "blocking" else 1 for s in self.stages]
        self._busy = [[threading.Lock() for _ in range(n)] for n in self._workers]
        self._order = [_InOrder() for _ in self.stages]

    # --- feeding -----------------------------------------------------------------------
    def feed(self, item: Any, timeout: float | None = None) -> bool:
        """Offer an item to the first stage (blocks when the policy is blocking and it is full).

        False when it was not taken: time-out, or the graph has stopped."""
        self.fps_in.tick()
        edge = self.edges[0]
        item.stamps.setdefault("enqueue", time.perf_counter())
        try:
            if isinstance(edge, BlockingQueue):
                while not self._stop.is_set():
                    if edge.put(item, timeout=0.2 if timeout is None else timeout):
                        return True
                    if timeout is not None:
                        return False
                return False
            edge.put(item)
            return True
        except EdgeClosed:      # the graph stopped (a stage failed or stop() was called)
            return False

    def close_input(self) -> None:
        """No more items: stages drain what is queued, then their threads end."""
        self.edges[0].close()

    # --- running -----------------------------------------------------------------------
    def start(self) -> None:
        for i, stage in enumerate(self.stages):
            self._order[i].running = self._workers[i]
            for w in range(self._workers[i]):
                suffix = f"-{w}" if self._workers[i] > 1 else ""
                t = threading.Thread(target=self._run_stage, args=(i, w), name=f"stage-{stage.name}{suffix}",
                                     daemon=True)
                self._threads.append(t)
                t.start()

    def _run_stage(self, i: int, worker: int = 0) -> None:
        lower_thread_priority(self.priority)
        stage = self.stages[i]
        inbox = self.edges[i]
        outbox = self.edges[i + 1] if i + 1 < len(self.edges) else None
        order = self._order[i]
        parallel = self._workers[i] > 1
        busy = self._busy[i][worker]
        gate = self.gate
        try:
            while not self._stop.is_set():
                try:
                    with order.take_lock:
                        item = inbox.get(timeout=0.1)
                        if item is None:
                            continue
                        seq = order.taken
                        order.taken += 1
                except EdgeClosed:
                    break
                with busy:
                    started = time.perf_counter()
                    previous = max(item.stamps.values()) if item.stamps else started
                    self.latency.add(f"{stage.name}.wait", max(0.0, started - previous))
                    result, done = item, started
                    for part in stage.parts:
                        if gate is not None and not gate.is_set():
                            gate.wait(GATE_WAIT_S)
                            held = time.perf_counter()
                            self.latency.add(f"{part.name}.gate", held - done)
                            done = held
                        result = part.process(result)
                        finished = time.perf_counter()
                        self.latency.add(part.name, finished - done)
                        done = finished
                        if result is None:
                            break
                        result.stamps[part.name] = done
                if parallel:
                    with order.turn:     # leave in the order the items came in
                        while order.next_out != seq and not self._stop.is_set():
                            order.turn.wait(0.1)
                if result is not None:
                    self._forward(result, outbox)
                if parallel:
                    with order.turn:
                        order.next_out += 1
                        order.turn.notify_all()
        except EdgeClosed:
            pass
        except BaseException as exc:   # a stage failure stops the run; the caller decides what to say
            log.debug("stage %s failed", stage.name, exc_info=True)
            if self.error is None:
                self.error = exc
                if self.on_error is not None:
                    self.on_error(exc)
            self._stop.set()
            for edge in self.edges:
                edge.close()
            return
        with order.turn:
            order.running -= 1
            last = order.running == 0
        if last and outbox is not None:
            outbox.close()

    def _forward(self, result: Any, outbox) -> None:
        if outbox is None:
            self.sink(result)
            out_time = time.perf_counter()
            origin = result.stamps.get(self.origin_stamp)
            if origin is not None:
                self.latency.add("end_to_end", out_time - origin)
            self.fps_out.tick(out_time)
        elif isinstance(outbox, BlockingQueue):
            while not self._stop.is_set() and not outbox.put(result, timeout=0.2):
                pass
        else:
            outbox.put(result)

    def flush(self, reset: Callable[[], None] | None = None) -> int:
        """Discard items waiting on every edge and reset the stages (seek); returns items dropped.

        Every stage is held idle while this runs, so no stage is half-way through an item of
        the old stream when its state is reset; `reset` (e.g. the analysis' own reset) runs then.
        """
        locks = [lock for stage_locks in self._busy for lock in stage_locks]
        for lock in locks:
            lock.acquire()
        try:
            dropped = sum(edge.clear() for edge in self.edges)
            for stage in self.stages:
                stage.reset()
            if reset is not None:
                reset()
        finally:
            for lock in reversed(locks):
                lock.release()
        return dropped

    def stop(self) -> None:
        self._stop.set()
        for edge in self.edges:
            edge.close()

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            t.join(timeout)

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def stats(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "fps_in": self.fps_in.fps, "fps_out": self.fps_out.fps,
            "average_fps_in": self.fps_in.average_fps, "average_fps_out": self.fps_out.average_fps,
            "frames_in": self.fps_in.count, "frames_out": self.fps_out.count,
            "latency": self.latency.summary(),
            "edges": {e.name: e.stats() for e in self.edges},
            "drops": {e.name: e.drops for e in self.edges},
        }


# --------------------------------------------------------------------------------------------
# The join of the video path and the analysis
# --------------------------------------------------------------------------------------------

class OverlayJoin(Generic[T]):
    """Where the analysis' results meet the frames going out: the analysis publishes the overlay
    of a frame when it is ready; each frame going out takes the newest overlay computed for a
    frame at or before it (never one from the future, never one of another stream generation).

    Policy "newest-at-or-before", capacity `keep` overlays: live, frames go out before their own
    analysis ends, so a few recent ones are kept; offline, output follows the analysis in frame
    order and one is enough.
    """

    policy = "newest-at-or-before"

    def __init__(self, name: str = "overlay", keep: int = 16) -> None:
        if keep < 1:
            raise ValueError(f"OverlayJoin keep must be >= 1, got {keep}")
        self.name = name
        self.capacity = keep
        self._items: deque[tuple[int, int, T]] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self.puts = 0
        self.joins = 0

    def publish(self, generation: int, frame_index: int, overlay: T) -> None:
        with self._lock:
            self._items.append((generation, frame_index, overlay))
            self.puts += 1

    def newest_for(self, generation: int, frame_index: int) -> tuple[int, T] | None:
        """(frame index the overlay was computed on, overlay), or None when there is none yet."""
        with self._lock:
            for gen, index, overlay in reversed(self._items):
                if gen == generation and index <= frame_index:
                    self.joins += 1
                    return index, overlay
        return None

    def clear(self) -> int:
        with self._lock:
            n = len(self._items)
            self._items.clear()
            return n

    def stats(self) -> dict[str, Any]:
        return {"policy": self.policy, "capacity": self.capacity, "puts": self.puts, "joins": self.joins,
                "depth": len(self._items)}
