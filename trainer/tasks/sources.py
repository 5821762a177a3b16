"""Turn a config's data section into a `DatasetIndex`, generating synthetic data when asked.

Synthetic data (`kind: synthetic`) is generated once by `trainer.synth.generate_dataset` into a
cache directory named by a hash of the generator settings, video count, seed and the
generator's source code, then read with the REAL-Colon reader like any real data set (so the
real reader is what training exercises). Concurrent processes (DDP replicas, parallel runs)
take a file lock, so exactly one generates and the others wait and reuse it; the generator
writes to a temporary directory renamed when complete, so an interrupted run never leaves a
half-written cache behind.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..config import DataSourceConfig, SourceConfig, SyntheticConfig
from ..data import DatasetIndex, read_dataset
from pipeline.errors import ConfigError, DataError
from pipeline.fsutil import write_json_atomic
from ..synth.config import config_to_dict as synth_config_to_dict

log = logging.getLogger("hagview.train")

# Bump to invalidate every cache (the generator's own source is hashed into the key as well).
SYNTH_CACHE_VERSION = 1


def _generator_fingerprint() -> str:
    """A hash of the generator's source files: a changed renderer never reuses an old cache."""
    from .. import synth

    digest = hashlib.sha256()
    for path in sorted(Path(synth.__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def synth_config_from(scfg: SyntheticConfig):
    """The generator's `SynthConfig`: a preset and/or YAML file, then the overrides mapping."""
    from ..synth import SynthConfig
    from ..synth.config import apply_overrides, load_synth_config

    if scfg.config is not None or scfg.preset is not None:
        cfg = load_synth_config(scfg.config, scfg.preset)
    else:
        cfg = SynthConfig()
    if scfg.overrides:
        cfg = apply_overrides(cfg, scfg.overrides, source="config key 'synthetic.overrides'")
    return cfg


def synthetic_cache_key(scfg: SyntheticConfig, depth: bool = False) -> str:
    synth_cfg = synth_config_from(scfg)
    recipe = {"synth": synth_config_to_dict(synth_cfg), "videos": scfg.videos, "seed": scfg.seed,
              "version": SYNTH_CACHE_VERSION, "generator": _generator_fingerprint()}
    if depth:    # only then, so caches without depth keep their keys
        recipe["depth"] = True
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def ensure_synthetic_dataset(scfg: SyntheticConfig, progress: bool = True, depth: bool = False) -> Path:
    """The cached data set for these settings; generated first if it is not there yet.
    depth: with the generator's depth maps (`<video>_depth/`, for a sizer's depth stream)."""
    from ..synth import generate_dataset

    cache = Path(scfg.cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    key = synthetic_cache_key(scfg, depth)
    target = cache / f"synth-{key}"
    with open(cache / f".synth-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "lesion_info.csv").is_file():
            log.info("generating synthetic data (%d videos, seed %d) into %s", scfg.videos, scfg.seed, target)
            synth_cfg = synth_config_from(scfg)
            # generate_dataset renders into a temporary directory and renames it when complete.
            generate_dataset(target, synth_cfg, videos=scfg.videos, seed=scfg.seed, progress=progress,
                             overwrite=target.exists(), depth=depth)
            write_json_atomic(target / "recipe.json", {"synth": synth_config_to_dict(synth_cfg),
                                                       "videos": scfg.videos, "seed": scfg.seed,
                                                       "generator": _generator_fingerprint()})
    return target


def data_root(source: DataSourceConfig, progress: bool = True, depth: bool = False) -> str:
    if source.kind == "synthetic":
        return str(ensure_synthetic_dataset(source.synthetic, progress=progress, depth=depth))
    if source.root is None:
        raise ConfigError(f"data kind '{source.kind}' needs a root directory")
    return str(Path(source.root).expanduser())


def read_source(source: DataSourceConfig, *, negatives: bool = False, **kwargs) -> tuple[DatasetIndex, str]:
    """(index, root) of the data a config section names: `data.sources` (several data sets,
    `read_sources`) when it has them, else the section's own kind and root (`read_one_source`)."""
    sources = getattr(source, "sources", ())
    if sources:
        return read_sources(sources, negatives=negatives, **kwargs)
    return read_one_source(source, negatives=negatives, **kwargs)


def read_one_source(source: DataSourceConfig, *, negatives: bool = False,
                progress: bool = True, depth: bool = False) -> tuple[DatasetIndex, str]:
    """(index, root) of a data source; DataError when it holds no polyp boxes with sizes.

    negatives: keep frames without polyps in `index.frames` (a detector needs them).
    depth: synthetic data is generated with depth maps (real data must bring its own).
    """
    root = data_root(source, progress, depth)
    kwargs = {"root": root, "negatives": negatives}
    if source.kind in ("sun", "sun_seg"):
        kwargs.update(case_pattern=source.case_pattern, size_table=source.size_table)
    kwargs.update(source.options)
    index = read_dataset(source.kind, **kwargs)
    # A detector (negatives) needs frames and boxes; only the sizer needs sizes.
    if not negatives and not index.samples:
        raise DataError(f"{root}: no polyp boxes with a known size ({index.summary()})")
    return index, root


def read_sources(sources: Sequence[SourceConfig], *, negatives: bool = True,
                 **kwargs) -> tuple[DatasetIndex, str]:
    """Several data sets in one index, with `index.source_weights` for the detector's sampling.

    Every frame's `source` starts with its data set's name (`source_key`): the reader's own
    label (`polypgen/C3`, `kvasir_seg`) or, where the reader sets none, the kind (`synthetic`).
    Weights are per data set; two entries of one data set must give it the same weight. Video
    ids that an earlier data set already uses get the data set's name in front, so groups never
    merge across data sets. Returns the first source's root (for per-video tables like fps).
    """
    from ..data.detection import source_key

    combined = DatasetIndex()
    roots: list[str] = []
    used_videos: set[str] = set()
    for i, source in enumerate(sources):
        index, root = read_one_source(source, negatives=negatives, **kwargs)
        roots.append(root)
        renamed: dict[str, str] = {}
        frames = []
        for frame in index.frames:
            label = frame.source or source.kind
            video = frame.video
            if video in used_videos and frame.source == "":
                video = renamed.setdefault(video, f"{label}/{video}")
            frames.append(replace(frame, source=label, video=video))
        name = source_key(frames[0]) if frames else source.kind
        previous = combined.source_weights.get(name)
        if previous is not None and previous != source.weight:
            raise ConfigError(f"config key 'data.sources[{i}].weight': data set {name!r} is listed "
                              f"again with weight {source.weight:g}, earlier {previous:g} "
                              f"(one weight per data set; name image folders apart with options.name)")
        combined.source_weights[name] = source.weight
        for f in frames:
            combined.source_weights.setdefault(source_key(f), source.weight)
        used_videos.update(f.video for f in frames)
        combined.frames += frames
        combined.samples += [replace(s, video=renamed.get(s.video, s.video)) for s in index.samples]
        combined.polyp_sizes.update(index.polyp_sizes)
        combined.skipped += index.skipped
        combined.warnings += index.warnings
        log.info("data source %d (%s, weight %g): %s", i, name, source.weight, index.summary())
    if not negatives and not combined.samples:
        raise DataError(f"data.sources: no polyp boxes with a known size ({combined.summary()})")
    return combined, roots[0]
