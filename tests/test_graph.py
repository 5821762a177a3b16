"""Edges (latest-wins versus blocking), stages on threads, and latency statistics."""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from pipeline.graph import (LOW_NICE, BlockingQueue, EdgeClosed, FpsMeter, LatencyStats, LatestSlot, Stage,
                            StageGraph, call_at_priority)


@dataclass
class Item:
    n: int
    stamps: dict = field(default_factory=dict)


def test_latest_slot_keeps_only_the_newest_and_counts_drops():
    slot = LatestSlot("s")
    for i in range(5):
        slot.put(i)
        assert slot.depth == 1
    assert slot.get(timeout=0) == 4
    assert slot.drops == 4 and slot.puts == 5 and slot.max_depth == 1
    assert slot.get(timeout=0.01) is None           # empty: time-out, not an old item
    slot.put(7)
    slot.close()
    assert slot.get() == 7                          # drained after close ...
    with pytest.raises(EdgeClosed):
        slot.get()                                  # ... then closed
    with pytest.raises(EdgeClosed):
        slot.put(8)


def test_blocking_queue_blocks_the_producer_and_loses_nothing():
    q = BlockingQueue("q", capacity=2)
    assert q.put(1) and q.put(2)
    started = time.monotonic()
    assert q.put(3, timeout=0.05) is False          # full: the producer waits, nothing is dropped
    assert time.monotonic() - started >= 0.045
    got = []

    def consume():
        for _ in range(5):
            got.append(q.get())
    t = threading.Thread(target=consume)
    t.start()
    for i in range(3, 6):
        assert q.put(i)                             # blocks until the consumer makes room
    t.join(2)
    assert got == [1, 2, 3, 4, 5]
    assert q.drops == 0 and q.max_depth == 2


def _graph(policy, n, slow_s, capacity=3):
    out = []

    def slow(item):
        time.sleep(slow_s)
        return item
    graph = StageGraph([Stage("a", lambda it: it), Stage("slow", slow), Stage("c", lambda it: it)],
                       sink=out.append, policy=policy, capacity=capacity, origin_stamp="capture")
    graph.start()
    for i in range(n):
        item = Item(i)
        item.stamps["capture"] = time.perf_counter()
        graph.feed(item)
        time.sleep(0.001)
    graph.close_input()
    graph.join(10)
    return graph, out


def test_latest_policy_drops_under_load_but_never_queues():
    graph, out = _graph("latest", 60, slow_s=0.01)
    stats = graph.stats()
    assert 0 < len(out) < 60
    assert sum(stats["drops"].values()) + len(out) == 60          # every frame accounted for
    assert all(e["max_depth"] <= 1 for e in stats["edges"].values())
    assert [it.n for it in out] == sorted(it.n for it in out)     # still in order
    assert out[-1].n == 59                                        # the newest always gets through


def test_blocking_policy_keeps_every_item_in_order():
    graph, out = _graph("blocking", 40, slow_s=0.002, capacity=3)
    stats = graph.stats()
    assert [it.n for it in out] == list(range(40))
    assert sum(stats["drops"].values()) == 0
    assert all(e["max_depth"] <= 3 for e in stats["edges"].values())
    lat = stats["latency"]
    assert lat["slow"]["count"] == 40 and lat["slow"]["p50_ms"] >= 1.5
    assert lat["end_to_end"]["count"] == 40
    assert lat["end_to_end"]["p50_ms"] >= lat["slow"]["p50_ms"]
    assert all(set(it.stamps) >= {"capture", "a", "slow", "c"} for it in out)
    assert all(it.stamps["capture"] <= it.stamps["a"] <= it.stamps["slow"] <= it.stamps["c"] for it in out)


def test_a_failing_stage_stops_the_graph_and_reports():
    errors = []

    def boom(item):
        if item.n == 3:
            raise ValueError("bad frame 3")
        return item
    graph = StageGraph([Stage("boom", boom), Stage("b", lambda it: it)], sink=lambda it: None,
                       policy="blocking", on_error=errors.append)
    graph.start()
    for i in range(10):
        if not graph.feed(Item(i), timeout=0.5):
            break
    graph.join(5)
    assert not graph.running
    assert isinstance(graph.error, ValueError) and errors == [graph.error]


def test_flush_resets_stages_between_items():
    calls = []
    graph = StageGraph([Stage("s", lambda it: it, reset=lambda: calls.append("reset"))], sink=lambda it: None,
                       policy="latest")
    graph.edges[0].put(Item(1))
    assert graph.flush(reset=lambda: calls.append("extra")) == 1
    assert calls == ["reset", "extra"] and graph.edges[0].depth == 0


def test_latency_percentiles_match_numpy():
    stats = LatencyStats(window=1000)
    values = np.random.default_rng(0).exponential(0.01, size=500)
    for v in values:
        stats.add("x", float(v))
    s = stats.summary()["x"]
    assert s["p50_ms"] == pytest.approx(np.percentile(values, 50) * 1000)
    assert s["p95_ms"] == pytest.approx(np.percentile(values, 95) * 1000)
    assert s["p99_ms"] == pytest.approx(np.percentile(values, 99) * 1000)
    assert s["max_ms"] == pytest.approx(values.max() * 1000) and s["count"] == 500
    small = LatencyStats(window=10)
    for v in range(100):
        small.add("y", v / 1000)
    assert small.summary()["y"]["max_ms"] == pytest.approx(99) and small.summary()["y"]["p50_ms"] >= 90


def test_fps_meter_uses_the_given_clock():
    now = [0.0]
    meter = FpsMeter(window_s=2.0, clock=lambda: now[0])
    for i in range(31):
        meter.tick(i / 30)
    now[0] = 1.0
    assert meter.fps == pytest.approx(30.0) and meter.average_fps == pytest.approx(30.0)
    now[0] = 10.0
    assert meter.fps == 0.0          # the stream stopped: no stale rate


def test_parallel_workers_overlap_and_keep_the_order():
    out = []
    active, peak = [0], [0]
    lock = threading.Lock()

    def sleepy(item):          # releases the GIL like inference does; later items finish sooner
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.004 * (1 + (7 - item.n % 8)))
        with lock:
            active[0] -= 1
        return item
    graph = StageGraph([Stage("infer", sleepy, workers=3), Stage("after", lambda it: it)],
                       sink=out.append, policy="blocking", capacity=4)
    graph.start()
    for i in range(24):
        graph.feed(Item(i))
    graph.close_input()
    graph.join(10)
    assert [it.n for it in out] == list(range(24))
    assert peak[0] == 3                              # three items really were in flight at once
    assert graph.stats()["latency"]["infer"]["count"] == 24


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread scheduling settings are a Linux feature")
def test_stage_threads_run_below_the_caller_when_asked():
    import os

    seen = []

    def record(item):
        tid = threading.get_native_id()
        seen.append((os.sched_getscheduler(tid), os.getpriority(os.PRIO_PROCESS, tid)))
        return item

    tid = threading.get_native_id()
    policy, own = os.sched_getscheduler(tid), os.getpriority(os.PRIO_PROCESS, tid)
    for priority, expected in (("normal", (policy, own)), ("low", (policy, min(19, own + LOW_NICE))),
                               ("idle", (os.SCHED_IDLE, own))):
        seen.clear()
        graph = StageGraph([Stage("s", record)], sink=lambda it: None, policy="blocking", priority=priority)
        graph.start()
        graph.feed(Item(1))
        graph.close_input()
        graph.join(5.0)
        assert seen == [expected], priority
    # the calling thread keeps its own settings
    assert (os.sched_getscheduler(tid), os.getpriority(os.PRIO_PROCESS, tid)) == (policy, own)
    with pytest.raises(ValueError, match="priority must be one of normal, low, idle"):
        StageGraph([Stage("s", record)], sink=lambda it: None, policy="latest", priority="high")


def test_call_at_priority_returns_the_result_or_raises():
    seen = []

    def work(a, b=0):
        seen.append(threading.get_ident())
        return a + b
    assert call_at_priority("low", work, 1, b=2) == 3
    assert seen != [threading.get_ident()], "ran on a thread of its own"
    with pytest.raises(KeyError, match="x"):
        call_at_priority("idle", {}.__getitem__, "x")
    with pytest.raises(ValueError, match="priority must be one of"):
        call_at_priority("high", work, 1)


def test_chained_stages_share_a_thread_and_keep_their_own_timings():
    from pipeline.graph import chain

    threads = []

    def step(name, drop=None):
        def process(item):
            threads.append((name, threading.get_ident()))
            return None if item.n == drop else item
        return Stage(name, process)

    out = []
    fused = chain([step("a"), chain([step("b", drop=2), step("c")])])
    assert fused.name == "a+b+c" and [p.name for p in fused.parts] == ["a", "b", "c"]
    graph = StageGraph([fused], sink=out.append, policy="blocking")
    graph.start()
    for n in range(4):
        graph.feed(Item(n))
    graph.close_input()
    graph.join(5.0)
    assert [item.n for item in out] == [0, 1, 3]                 # item 2 stopped at b
    assert len({ident for _, ident in threads}) == 1              # one thread for all three
    assert [name for name, _ in threads].count("c") == 3
    assert all(["a", "b", "c"] == [k for k in item.stamps if k in "abc"] for item in out)
    latency = graph.stats()["latency"]
    assert latency["a"]["count"] == 4 and latency["b"]["count"] == 4 and latency["c"]["count"] == 3
    assert set(graph.stats()["edges"]) == {"in:a+b+c"}
    with pytest.raises(ValueError, match="several workers"):
        chain([step("x"), Stage("y", lambda item: item, workers=2)])


def test_a_closed_gate_holds_each_stage_until_opened_or_the_bound():
    from pipeline.graph import GATE_WAIT_S

    started = []
    gate = threading.Event()                     # closed: the consumer's urgent work is running

    def record(item):
        started.append(time.perf_counter())
        return item

    out = []
    graph = StageGraph([Stage("a", record), Stage("b", record)], sink=out.append, policy="blocking", gate=gate)
    graph.start()
    fed = time.perf_counter()
    graph.feed(Item(0))
    time.sleep(0.001)
    opened = time.perf_counter()
    gate.set()
    graph.feed(Item(1))
    graph.close_input()
    graph.join(5.0)
    assert [it.n for it in out] == [0, 1]
    # item 0's first stage waited for the gate (it opened after ~1 ms, before the bound) ...
    assert started[0] >= opened
    assert started[0] - fed < GATE_WAIT_S + 0.05
    # ... and a gate that stays shut only delays: the bound lets each stage through
    gate.clear()
    out.clear()
    graph = StageGraph([Stage("a", record), Stage("b", record)], sink=out.append, policy="blocking", gate=gate)
    graph.start()
    t0 = time.perf_counter()
    graph.feed(Item(2))
    graph.close_input()
    graph.join(5.0)
    assert [it.n for it in out] == [2]
    assert time.perf_counter() - t0 >= 2 * GATE_WAIT_S * 0.9       # both stages waited out the bound
    latency = graph.stats()["latency"]
    assert latency["a.gate"]["count"] == 1 and latency["a.gate"]["p50_ms"] >= GATE_WAIT_S * 900
