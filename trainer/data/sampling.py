"""Frames per polyp per epoch: long videos of one polyp must not outweigh short ones."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from .records import SampleRecord

TRAIN_FRAMES_PER_POLYP = 45
VAL_FRAMES_PER_POLYP = 300
STRATEGIES = ("random", "uniform")


def _polyp_seed(seed: int, epoch: int, polyp_id: str) -> int:
    # Stable across processes and Python versions (hash() of a str is salted per process).
    digest = hashlib.blake2b(f"{seed}:{epoch}:{polyp_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def sample_per_polyp(samples: Iterable[SampleRecord], per_polyp: int, *, seed: int = 0,
                     epoch: int = 0, strategy: str = "random") -> list[SampleRecord]:
    """At most `per_polyp` samples of each polyp (all of them when it has fewer).

    random: a fresh draw without replacement for each (seed, epoch), independent per polyp;
    uniform: evenly spaced over the polyp's frames in time order (same every epoch), which
    suits validation. The result is ordered by polyp id, then video and frame.
    """
    if per_polyp < 1:
        raise ValueError(f"per_polyp must be >= 1, got {per_polyp}")
    if strategy not in STRATEGIES:
        raise ValueError(f"sampling strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    by_polyp: dict[str, list[SampleRecord]] = {}
    for s in samples:
        by_polyp.setdefault(s.polyp_id, []).append(s)
    out: list[SampleRecord] = []
    for polyp in sorted(by_polyp):
        group = sorted(by_polyp[polyp], key=lambda s: (s.video, s.frame_index, s.box))
        n = len(group)
        if n <= per_polyp:
            out.extend(group)
            continue
        if strategy == "uniform":
            picks = np.floor((np.arange(per_polyp) + 0.5) * n / per_polyp).astype(int)
        else:
            rng = np.random.default_rng(_polyp_seed(seed, epoch, polyp))
            picks = np.sort(rng.choice(n, size=per_polyp, replace=False))
        out.extend(group[i] for i in picks)
    return out


class PolypFrameSampler:
    """Holds a fold's samples and hands out each epoch's subset (`sampler.epoch(3)`)."""

    def __init__(self, samples: Iterable[SampleRecord], per_polyp: int = TRAIN_FRAMES_PER_POLYP,
                 seed: int = 0, strategy: str = "random"):
        self.samples = list(samples)
        self.per_polyp = per_polyp
        self.seed = seed
        self.strategy = strategy
        sample_per_polyp(self.samples[:1], per_polyp, strategy=strategy)   # validate arguments now

    def epoch(self, epoch: int) -> list[SampleRecord]:
        return sample_per_polyp(self.samples, self.per_polyp, seed=self.seed, epoch=epoch,
                                strategy=self.strategy)


def drop_sparse_polyps(samples: Iterable[SampleRecord], min_frames: int) -> list[SampleRecord]:
    """The samples of polyps with at least `min_frames` frames (the reference's sampler skips
    polyps with one frame: min_frames 2)."""
    samples = list(samples)
    if min_frames <= 1:
        return samples
    counts: dict[str, int] = {}
    for s in samples:
        counts[s.polyp_id] = counts.get(s.polyp_id, 0) + 1
    return [s for s in samples if counts[s.polyp_id] >= min_frames]
