"""The sizer stage: batches the boxes of confirmed tracks through the sizer bundle.

Policy when the CPU cannot size every track on every frame (`SizingPolicy`):
1. Only confirmed tracks matched on this frame are candidates (a coasting box is a guess).
2. A track is due when at least `min_interval_frames` analysed frames passed since it was last
   sized.
3. Due tracks are ordered least recently sized first (never-sized tracks lead), so under
   pressure every track is sized in turn (round robin) and none starves.
4. At most `max_tracks_per_frame` are sized in one batch; with `time_budget_ms` > 0 the batch
   is cut to what fits in the budget according to the measured cost per sized box (a moving
   average of batch time / batch size), but always at least one track.
Tracks not sized on a frame keep their smoothed estimate; `stats()` counts sized and deferred.

A sizer with a depth stream needs a depth bundle (`pipeline.depth`): its model runs once per
frame on which anything is sized, before the sizer. Sizes are clamped to the range the sizer
bundle's `outputs.decision.clamp_mm` names (the reference's [0.5, 22] mm) when it names one.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.errors import BundleError
from pipeline.prep import SizerInputSpec, prepare_sizer_inputs
from pipeline.sizeclass import MAX_SIZE_MM, MIN_SIZE_MM

# Representative sizes (mm) of the three classes, for class-only sizers: the geometric centres
# of 0.5-5, 5-10 and 10-20 mm. A probability-weighted mean in log space gives a continuous size.
_CLASS_CENTRES_MM = (math.sqrt(MIN_SIZE_MM * 5.0), math.sqrt(5.0 * 10.0), math.sqrt(10.0 * MAX_SIZE_MM))


CONCURRENT_BACKENDS = ("onnxruntime", "torch", "torch-cpu", "torch-cuda", "torch-compile")


@dataclass(frozen=True)
class SizingPolicy:
    min_interval_frames: int = 1
    max_tracks_per_frame: int = 8
    time_budget_ms: float = 0.0

    def __post_init__(self):
        if self.min_interval_frames < 1 or self.max_tracks_per_frame < 1 or self.time_budget_ms < 0:
            raise ValueError(f"invalid SizingPolicy {self}")


def sizing_policy(config) -> SizingPolicy:
    """The policy of a run config's `size` section."""
    size = config.size
    return SizingPolicy(min_interval_frames=size.min_interval_frames,
                        max_tracks_per_frame=size.max_tracks_per_frame, time_budget_ms=size.time_budget_ms)


class SizingScheduler:
    """Decides which tracks are sized on a frame (the policy in the module doc) and learns the
    cost per box from the batches actually run."""

    def __init__(self, policy: SizingPolicy) -> None:
        self.policy = policy
        self._last_sized: dict[int, int] = {}
        self.cost_per_box_s: float | None = None
        self.sized = 0
        self.deferred = 0

    def choose(self, track_ids: Sequence[int], frame_index: int) -> list[int]:
        """Positions (into track_ids) of the tracks to size on this frame."""
        due = [i for i, tid in enumerate(track_ids)
               if frame_index - self._last_sized.get(tid, -10 ** 9) >= self.policy.min_interval_frames]
        due.sort(key=lambda i: self._last_sized.get(track_ids[i], -10 ** 9))
        limit = self.policy.max_tracks_per_frame
        if self.policy.time_budget_ms > 0 and self.cost_per_box_s:
            limit = min(limit, max(1, int(self.policy.time_budget_ms / 1000.0 / self.cost_per_box_s)))
        chosen = due[:limit]
        self.deferred += len(track_ids) - len(chosen)
        return chosen

    def record(self, track_ids: Sequence[int], frame_index: int, seconds: float) -> None:
        for tid in track_ids:
            self._last_sized[tid] = frame_index
        if track_ids:
            self.sized += len(track_ids)
            per_box = seconds / len(track_ids)
            self.cost_per_box_s = per_box if self.cost_per_box_s is None else \
                0.8 * self.cost_per_box_s + 0.2 * per_box

    def forget(self, keep_ids) -> None:
        keep = set(keep_ids)
        for tid in [t for t in self._last_sized if t not in keep]:
            del self._last_sized[tid]

    def reset(self) -> None:
        self._last_sized.clear()


def sizes_from_outputs(outputs: dict[str, np.ndarray], count: int, source: str = "sizer") -> np.ndarray:
    """Millimetres per box from a sizer's outputs: `size_mm`, else class logits mapped to mm."""
    if "size_mm" in outputs:
        sizes = np.asarray(outputs["size_mm"], dtype=np.float64).reshape(count, -1)[:, 0]
    elif "logits" in outputs:
        logits = np.asarray(outputs["logits"], dtype=np.float64).reshape(count, -1)
        if logits.shape[1] != len(_CLASS_CENTRES_MM):
            raise BundleError(f"{source}: class-only sizer with {logits.shape[1]} classes; "
                              f"sizes can be read from 3-class (triclass) logits only")
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        sizes = np.exp(p @ np.log(np.asarray(_CLASS_CENTRES_MM)))
    else:
        raise BundleError(f"{source}: sizer outputs {sorted(outputs)} have neither size_mm nor logits")
    return sizes


class TrackSizingStage:
    """`size(image, tracks, frame_index, fov_mask) -> {track_id: size_mm}` for the tracks sized now.

    `tracks` are (track_id, box) pairs of confirmed tracks seen on this frame.
    """

    def __init__(self, engine, spec: SizerInputSpec, policy: SizingPolicy = SizingPolicy(),
                 name: str = "sizer", depth=None, clamp_mm: tuple[float, float] | None = None,
                 diminutive_max_mm: float | None = None) -> None:
        if "depth" in spec.streams and depth is None:
            raise BundleError(f"{name}: the sizer takes a depth stream; give it a depth bundle "
                              f"(hagview --depth-bundle, pipeline.depth)")
        self.engine = engine
        self.spec = spec
        self.name = name
        self.depth = depth                # pipeline.depth.DepthEstimator, for a depth stream
        self.clamp_mm = clamp_mm
        self.diminutive_max_mm = diminutive_max_mm   # the bundle's decision threshold, for the shown class
        self.scheduler = SizingScheduler(policy)
        self._lock = threading.Lock()     # offline runs size several frames at once

    @classmethod
    def from_bundle(cls, bundle_path, *, backend: str = "auto", threads: int | None = None,
                    policy: SizingPolicy = SizingPolicy(), depth_bundle=None) -> "TrackSizingStage":
        from pipeline.bundle import load_bundle

        from .engines import load_engine

        bundle = load_bundle(bundle_path)
        if bundle.kind != "sizer":
            raise BundleError(f"{bundle_path}: bundle kind is {bundle.kind!r}, expected a sizer")
        spec = spec_from_bundle(bundle)
        depth = None
        if "depth" in spec.streams and depth_bundle is not None:
            from .depth import DepthEstimator
            depth = DepthEstimator.from_bundle(depth_bundle, backend=backend, threads=threads)
        decision = bundle.outputs.get("decision") or {}
        clamp = decision.get("clamp_mm")
        engine = load_engine(bundle, backend=backend, threads=threads or None)
        stage = cls(engine, spec, policy, name=str(bundle_path), depth=depth,
                    clamp_mm=None if clamp is None else (float(clamp[0]), float(clamp[1])),
                    diminutive_max_mm=decision.get("diminutive_max_mm"))
        stage.bundle = bundle
        return stage

    def size(self, image: np.ndarray, tracks: Sequence[tuple[int, tuple]], frame_index: int,
             fov_mask: np.ndarray | None = None) -> dict[int, float]:
        ids = [tid for tid, _ in tracks]
        with self._lock:
            chosen = self.scheduler.choose(ids, frame_index)
        if not chosen:
            return {}
        boxes = np.array([tracks[i][1] for i in chosen], dtype=np.float64).reshape(-1, 4)
        started = time.perf_counter()
        depth = self.depth.estimate(image, fov_mask) if self.depth is not None else None
        inputs = prepare_sizer_inputs(image, boxes, self.spec, fov_mask=fov_mask, depth=depth)
        outputs = self.engine.run(inputs)
        sizes = sizes_from_outputs(outputs, len(chosen), self.name)
        if self.clamp_mm is not None:
            sizes = np.clip(sizes, *self.clamp_mm)
        chosen_ids = [ids[i] for i in chosen]
        with self._lock:
            self.scheduler.record(chosen_ids, frame_index, time.perf_counter() - started)
        return {tid: float(s) for tid, s in zip(chosen_ids, sizes) if math.isfinite(float(s))}

    def forget(self, keep_ids) -> None:
        """Drop the scheduling history of every track not in `keep_ids` (the tracker's
        remembered ids, carried by the work item: the size stage never reads the tracker)."""
        with self._lock:
            self.scheduler.forget(keep_ids)

    def reset(self) -> None:
        with self._lock:
            self.scheduler.reset()

    @property
    def concurrent_safe(self) -> bool:
        """Whether several frames may be sized at once (TensorRT contexts are single-stream)."""
        return getattr(self.engine, "name", "") in CONCURRENT_BACKENDS

    def stats(self) -> dict[str, float | int | None]:
        s = self.scheduler
        return {"sized": s.sized, "deferred": s.deferred,
                "cost_per_box_ms": None if s.cost_per_box_s is None else s.cost_per_box_s * 1000.0}


def spec_from_bundle(bundle) -> SizerInputSpec:
    """The bundle's sizer input spec (its `inputs.spec` when present, else its fields)."""
    inputs = bundle.inputs
    if isinstance(inputs.get("spec"), dict):
        return SizerInputSpec.from_dict(inputs["spec"])
    size = inputs.get("size", 224)
    if isinstance(size, (list, tuple)):
        size = int(size[0])
    return SizerInputSpec(streams=tuple(inputs.get("streams", ("rgb", "mask"))), size=int(size),
                          mean=tuple(inputs.get("mean", (0.485, 0.456, 0.406))),
                          std=tuple(inputs.get("std", (0.229, 0.224, 0.225))),
                          fov_masking=bool(inputs.get("fov_masking", True)),
                          box_grow=float(inputs.get("box_grow") if inputs.get("box_grow") is not None else 0.5))
