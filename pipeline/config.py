"""The run configuration: one YAML section per pipeline stage, a working default for every key.

`load_run_config(path_or_None, overrides)` reads the YAML with `yaml.safe_load`, applies
overrides (`{"detect.score_threshold": 0.5}` or `{"detect": {"score_threshold": 0.5}}`) and
checks every key: an unknown key, a wrong type or an out-of-range value raises `ConfigError`
naming the key. The `track`, `smooth` and `quality` sections are derived from the keyword
arguments of `Tracker`, `SizeSmoother` and `QualityAssessor`, so the config can never drift
from the code it configures; those constructors validate the values.
`configs/run/default.yaml` documents every key with its default (a test keeps it in sync).
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import typing
from dataclasses import dataclass, field
from typing import Any


from .configfile import choices, config_to_dict, parse_overrides, parse_section, read_yaml_mapping, set_dotted
from .errors import ConfigError
from .videowriter import X264_PRESETS

from .graph import STAGE_PRIORITIES
from .quality import QualityAssessor
from .smoothing import SizeSmoother
from .tracker import Tracker

PIXEL_FORMATS = ("mjpeg", "yuyv422")
CAPTURE_BACKENDS = ("pyav", "opencv")
RTSP_TRANSPORTS = ("tcp", "udp")


@dataclass
class SourceConfig:
    """Capture devices, network streams, files and the demo generator."""
    width: int = 1920                     # capture device: requested frame width (0: driver default)
    height: int = 1080                    # capture device: requested frame height (0: driver default)
    fps: float = 30.0                     # capture device: requested frame rate (0: driver default)
    pixel_format: str = choices("mjpeg", PIXEL_FORMATS)   # capture device pixel format
    buffers: int = 2                      # capture device driver buffers (opencv backend)
    capture_backend: str = choices("pyav", CAPTURE_BACKENDS)
    open_timeout_s: float = 5.0           # device/stream: give up opening after this long
    read_timeout_s: float = 2.0           # device/stream: a read waiting longer counts as lost signal
    no_signal_after_s: float = 1.0        # report "no signal" once no frame came for this long
    reconnect_initial_s: float = 0.5      # first reconnect back-off, doubled per failure ...
    reconnect_max_s: float = 2.0          # ... up to this (a source back is found within this)
    rtsp_transport: str = choices("tcp", RTSP_TRANSPORTS)
    threaded_decoding: bool = True        # files in offline annotation: frame-threaded decoding
    demo_preset: str = "demo"             # `demo` source: trainer.synth preset
    demo_seed: int = 7                    # `demo` source: first video's seed
    demo_loop: bool = True                # `demo` source, live: a new synthetic video after the last


@dataclass
class PreprocessConfig:
    fov_masking: bool = True              # estimate the endoscope's circular field of view
    fov_refresh_frames: int = 300         # re-estimate the FOV mask at the latest every N analysed frames
    fov_scene_watch: bool = True          # ... and at once when the picture's border changes (pipeline.fov.BorderWatch)


@dataclass
class DetectConfig:
    score_threshold: float = 0.3          # detections below this are discarded (viewer can change it live)
    max_detections: int = 5               # per frame, best first
    workers: int = 1                      # offline: frames detected concurrently (results stay in order)


@dataclass
class SizeConfig:
    """Which confirmed tracks are sized on a frame (sizing.SizingPolicy)."""
    min_interval_frames: int = 1          # a track is sized at most every N analysed frames
    max_tracks_per_frame: int = 8         # batch size limit
    time_budget_ms: float = 0.0           # >0: size only as many tracks as fit (least recently sized first)
    workers: int = 1                      # offline: frames sized concurrently; >1 for a heavy sizer (own threads)


@dataclass
class OutputConfig:
    render_crf: int = 23                  # --render: x264 quality (lower is better, 18..28 sensible)
    render_preset: str = "ultrafast"      # --render: x264 speed/size (X264_PRESETS); 1080p: half superfast's CPU
    thumbnail_size: int = 160             # polyps.json thumbnails, longest side in pixels
    overlay_line_width: int = 0           # 0: scaled with the frame size


@dataclass
class RuntimeConfig:
    offline_queue_capacity: int = 8       # blocking queues of offline annotation (frames per edge)
    stats_window: int = 3000              # latency samples kept per stage
    inference_threads: int = 0            # per engine; 0: auto (offline 1, live the backend's default)
    analysis_priority: str = choices("idle", STAGE_PRIORITIES)   # live: analysis threads against capture and display


def _schema_from_signature(name: str, cls: type) -> type:
    """A config dataclass whose fields are the keyword arguments (and defaults) of `cls`."""
    sig = inspect.signature(cls.__init__)
    hints = typing.get_type_hints(cls.__init__)
    fields = []
    for param in sig.parameters.values():
        if param.name == "self" or param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        fields.append((param.name, hints.get(param.name, Any), field(default=param.default)))
    return dataclasses.make_dataclass(name, fields)


TrackConfig = _schema_from_signature("TrackConfig", Tracker)
SmoothConfig = _schema_from_signature("SmoothConfig", SizeSmoother)
QualityConfig = _schema_from_signature("QualityConfig", QualityAssessor)


@dataclass
class RunConfig:
    """Sections map one-to-one onto the stages (quality belongs to the smoother's weighting)."""
    source: SourceConfig = field(default_factory=SourceConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    track: TrackConfig = field(default_factory=TrackConfig)          # Tracker(**track)
    size: SizeConfig = field(default_factory=SizeConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)    # QualityAssessor(**quality)
    smooth: SmoothConfig = field(default_factory=SmoothConfig)       # SizeSmoother(**smooth)
    output: OutputConfig = field(default_factory=OutputConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


def section_kwargs(section) -> dict[str, Any]:
    """A section as constructor keyword arguments."""
    return dataclasses.asdict(section)


def run_config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return config_to_dict(cfg)


def load_run_config(path: str | os.PathLike | None = None,
                    overrides: dict[str, Any] | list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML file (if any), then overrides; validated. Raises ConfigError."""
    source = "run config"
    raw: dict[str, Any] = {}
    if path is not None:
        source = str(path)
        raw = read_yaml_mapping(path, "run config")
    for key, value in parse_overrides(_flatten(overrides) if isinstance(overrides, dict) else overrides):
        set_dotted(raw, key, value)
    try:
        cfg = parse_section(RunConfig, raw, prefix="")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _check_values(cfg, source)
    return cfg


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} for top-level sections (leaf values stay as they are)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not prefix:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _check_values(cfg: RunConfig, source: str) -> None:
    def need(condition: bool, key: str, what: str, value) -> None:
        if not condition:
            raise ConfigError(f"{source}: config key '{key}': must be {what}, got {value!r}")

    s = cfg.source
    for key in ("width", "height", "fps"):
        need(getattr(s, key) >= 0, f"source.{key}", ">= 0 (0: driver default)", getattr(s, key))
    need(s.buffers >= 1, "source.buffers", ">= 1", s.buffers)
    for key in ("open_timeout_s", "read_timeout_s", "no_signal_after_s", "reconnect_initial_s"):
        need(getattr(s, key) > 0, f"source.{key}", "> 0 seconds", getattr(s, key))
    need(s.reconnect_max_s >= s.reconnect_initial_s, "source.reconnect_max_s",
         f">= source.reconnect_initial_s ({s.reconnect_initial_s})", s.reconnect_max_s)
    need(cfg.preprocess.fov_refresh_frames >= 1, "preprocess.fov_refresh_frames", ">= 1", cfg.preprocess.fov_refresh_frames)
    need(0.0 <= cfg.detect.score_threshold <= 1.0, "detect.score_threshold", "in [0, 1]", cfg.detect.score_threshold)
    need(cfg.detect.max_detections >= 1, "detect.max_detections", ">= 1", cfg.detect.max_detections)
    need(cfg.size.min_interval_frames >= 1, "size.min_interval_frames", ">= 1", cfg.size.min_interval_frames)
    need(cfg.size.max_tracks_per_frame >= 1, "size.max_tracks_per_frame", ">= 1", cfg.size.max_tracks_per_frame)
    need(cfg.detect.workers >= 1, "detect.workers", ">= 1", cfg.detect.workers)
    need(cfg.size.workers >= 1, "size.workers", ">= 1", cfg.size.workers)
    need(cfg.size.time_budget_ms >= 0, "size.time_budget_ms", ">= 0 (0: no budget)", cfg.size.time_budget_ms)
    need(0 <= cfg.output.render_crf <= 51, "output.render_crf", "in [0, 51]", cfg.output.render_crf)
    need(cfg.output.render_preset in X264_PRESETS, "output.render_preset", f"one of {', '.join(X264_PRESETS)}",
         cfg.output.render_preset)
    need(cfg.output.thumbnail_size >= 16, "output.thumbnail_size", ">= 16", cfg.output.thumbnail_size)
    need(cfg.output.overlay_line_width >= 0, "output.overlay_line_width", ">= 0", cfg.output.overlay_line_width)
    need(cfg.runtime.offline_queue_capacity >= 1, "runtime.offline_queue_capacity", ">= 1",
         cfg.runtime.offline_queue_capacity)
    need(cfg.runtime.stats_window >= 10, "runtime.stats_window", ">= 10", cfg.runtime.stats_window)
    need(cfg.runtime.inference_threads >= 0, "runtime.inference_threads", ">= 0", cfg.runtime.inference_threads)
    # The stage constructors own their ranges: build them once so a bad value fails at load time.
    for section, cls in (("track", Tracker), ("smooth", SizeSmoother), ("quality", QualityAssessor)):
        try:
            cls(**section_kwargs(getattr(cfg, section)))
        except ConfigError as exc:
            raise ConfigError(f"{source}: config section '{section}': {exc}") from None
