"""The offline graph: the live graph's analysis stages on blocking bounded edges, plus an output
stage, so no frame is lost, results come out in frame order and decoding, inference and encoding
overlap. With `every=N` only every Nth frame is analysed; the others go out with the newest
overlay through the same join as live frames (graph.OverlayJoin)."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from pipeline.errors import ConfigError

from .graph import OverlayJoin, Stage, StageGraph
from .sources.base import VideoSource
from .stages import Analysis
from .types import FrameResult, TrackReport
from .work import Work


def run_offline(source: VideoSource, analysis: Analysis, on_result: Callable[[FrameResult], None], *,
                every: int = 1, queue_capacity: int = 8, on_frame_done: Callable[[], None] | None = None,
                stop: threading.Event | None = None) -> dict[str, Any]:
    """Analyse every frame of `source` (or every `every`-th) on blocking queues; returns stats.

    `on_result` receives one FrameResult per frame, in frame order, on the output thread. An
    error in any stage (or the source) stops the run and is raised here.
    """
    if every < 1:
        raise ConfigError(f"every must be >= 1, got {every}")
    analysis.reset()      # a new stream: no track or size history carries over from another one
    # Output follows the analysis in frame order: the newest overlay is the only one needed.
    overlays: OverlayJoin[list[TrackReport]] = OverlayJoin("overlay", keep=1)

    def output(work: Work) -> Work:
        if work.reports is not None:
            overlays.publish(work.generation, work.frame.index, work.reports)
        joined = overlays.newest_for(work.generation, work.frame.index)
        index, tracks = joined if joined is not None else (work.frame.index, [])
        on_result(FrameResult(frame=work.frame, tracks=tracks, overlay_frame_index=index))
        if on_frame_done is not None:
            on_frame_done()
        return work

    stages = analysis.offline_threads(Stage("output", output))
    failure: list[BaseException] = []
    # Blocking edges: a slow stage holds the reader back instead of losing frames.
    graph = StageGraph(stages, sink=lambda work: None, policy="blocking", capacity=queue_capacity,
                       on_error=failure.append)
    graph.start()
    read_latency = graph.latency
    stop = stop or threading.Event()
    frames_in = 0
    try:
        while not stop.is_set() and graph.error is None:
            started = time.perf_counter()
            frame = source.read()
            if frame is None:
                break
            frame.stamps["capture"] = now = time.perf_counter()
            read_latency.add("capture", now - started)
            work = Work(frame=frame, generation=analysis.generation, analyse=frames_in % every == 0)
            frames_in += 1
            if not graph.feed(work):
                break
    except BaseException:
        graph.stop()
        graph.join(5.0)
        raise
    graph.close_input()
    while graph.running:
        graph.join(0.2)
        if stop.is_set():
            graph.stop()
    if failure:
        raise failure[0]
    if stop.is_set():
        raise KeyboardInterrupt
    stats = graph.stats()
    stats["frames_read"] = frames_in
    stats["source"] = dict(source.counters)
    if analysis.sizer is not None:
        stats["sizer"] = analysis.sizer.stats()
    return stats


def run_sequential(source: VideoSource, analysis: Analysis, on_result: Callable[[FrameResult], None]) -> int:
    """The same work in one plain loop (the baseline of scripts/bench_pipeline.py). Returns frames."""
    analysis.reset()
    n = 0
    for frame in source:
        frame.stamps["capture"] = time.perf_counter()
        work = analysis.analyse(Work(frame=frame, generation=analysis.generation))
        on_result(FrameResult(frame=frame, tracks=work.reports or [], overlay_frame_index=frame.index))
        n += 1
    return n
