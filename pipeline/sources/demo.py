"""`demo`: the synthetic colonoscopy generator streamed as a source, with its ground truth.

Live (`paced=True`) frames are released at the generator's frame rate, like a camera; with
`loop=True` a new synthetic video (next seed) follows the last frame, so a demo never ends.
Ground-truth polyp ids of later loops are offset by 1000 per loop so ids stay unique.
"""
from __future__ import annotations

import threading
import time

from pipeline.errors import SourceError

from ..pacing import MediaClock
from ..types import Frame, GroundTruthBox
from .base import VideoSource

LOOP_ID_OFFSET = 1000
MAX_LATE_S = 0.25     # behind schedule by more than this: re-anchor the clock instead of bursting


class DemoSource(VideoSource):
    name = "demo"
    seekable = False

    def __init__(self, *, preset: str | None = "demo", seed: int = 7, paced: bool = True,
                 loop: bool = True, synth_config=None, clock=time.perf_counter) -> None:
        super().__init__()
        try:
            from trainer.synth import SyntheticVideo, load_synth_config
        except ImportError as exc:   # pragma: no cover - the generator ships with the project
            raise SourceError(f"demo: the synthetic generator is unavailable ({exc})") from None
        self._video_cls = SyntheticVideo
        if synth_config is None:
            try:
                synth_config = load_synth_config(None, preset)
            except Exception as exc:
                raise SourceError(f"demo: cannot load synthetic preset {preset!r} ({exc})") from None
        self.synth_config = synth_config
        self.is_live = paced
        self.loop = loop
        self._seed = seed
        self._loop_index = 0
        self._stop = threading.Event()
        self._start_video()
        self._next_index = 0
        self._media_clock = MediaClock(max_late_s=MAX_LATE_S, clock=clock)
        self._pts_offset = 0.0

    def _start_video(self) -> None:
        self.video = self._video_cls(self.synth_config, seed=self._seed + self._loop_index,
                                     name=f"demo-{self._seed + self._loop_index:03d}")
        self._frames = iter(self.video.frames())

    @property
    def fps(self) -> float:
        return float(self.video.fps)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.video.size)

    @property
    def num_frames(self) -> int | None:
        return None if self.loop else int(self.video.num_frames)

    @property
    def duration(self) -> float | None:
        return None if (self.loop or self.is_live) else self.video.num_frames / self.fps

    def interrupt(self) -> None:
        self._stop.set()

    def read(self) -> Frame | None:
        if self._stop.is_set():
            return None
        synth = next(self._frames, None)
        if synth is None:
            if not self.loop:
                return None
            self._pts_offset += self.video.num_frames / self.fps
            self._loop_index += 1
            self._start_video()
            synth = next(self._frames, None)
            if synth is None:
                return None
        pts = self._pts_offset + float(synth.time)
        if self.is_live:
            # A reader stalled (paused, overloaded) by more than MAX_LATE_S carries on in real
            # time from here rather than releasing the backlog in a burst, as a camera would.
            wait = self._media_clock.delay(pts)
            if wait > 0 and self._stop.wait(wait):
                return None
        offset = LOOP_ID_OFFSET * self._loop_index
        truth = [GroundTruthBox(polyp_id=g.polyp_id + offset, box=tuple(g.box), diameter_mm=g.diameter_mm,
                                distance_mm=g.distance_mm, visible_fraction=g.visible_fraction)
                 for g in synth.polyps]
        frame = Frame(index=self._next_index, pts=pts, image=synth.image, ground_truth=truth)
        self._next_index += 1
        self.counters["frames"] += 1
        return frame
