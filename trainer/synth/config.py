"""Settings of the synthetic colonoscopy generator, and reading them from YAML.

Every field has a default that makes a plausible clip; a YAML file overrides any subset
(`polyps:` and `motion:` are sections). Unknown keys and wrong types fail with one line that
names the file and the key.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any


from pipeline.configfile import read_yaml_mapping
from pipeline.errors import ConfigError

SHAPES = ("sessile", "pedunculated", "flat")
# RGB albedo tints relative to the mucosa: what polyps look like under white light.
COLOURS = {
    "pink": (1.02, 0.86, 0.86),
    "red": (0.88, 0.58, 0.55),
    "pale": (1.0, 0.98, 0.97),
    "tan": (1.05, 0.92, 0.72),
}


@dataclass(frozen=True)
class PolypConfig:
    """How many polyps a video has and what they look like."""
    min_count: int = 0
    max_count: int = 3
    diameter_mm: tuple[float, float] = (2.0, 20.0)
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    # With two or more polyps, draw their diameters from different size classes
    # (diminutive / small / large) so one video spans them.
    spread_size_classes: bool = True


@dataclass(frozen=True)
class MotionConfig:
    """Camera motion: travel between polyps, inspection, rotation, jitter and sudden swings."""
    travel_speed_mm_s: tuple[float, float] = (12.0, 30.0)   # steady advance or withdrawal
    withdrawal_probability: float = 0.5     # chance a video moves backwards (withdrawal) between polyps
    inspect_distance_mm: tuple[float, float] = (12.0, 60.0)  # camera-to-polyp axial distances while inspecting
    aim_weight: tuple[float, float] = (0.3, 0.75)   # how far the tip bends towards a polyp under inspection
    roll_deg_s: float = 12.0                # peak speed of the slow scope rotation
    wander_deg: float = 8.0                 # slow look-around amplitude
    jitter_deg: float = 0.6                 # hand tremor amplitude (3-8 Hz)
    jitter_mm: float = 0.3
    lateral_offset: float = 0.25            # camera offset from the lumen axis, fraction of the radius
    swing_probability: float = 0.6          # chance that an inspection contains a sudden swing away
    swing_deg: tuple[float, float] = (100.0, 130.0)
    swing_hold_s: tuple[float, float] = (0.6, 1.6)   # time the view stays swung away
    swing_ramp_s: float = 0.2


@dataclass(frozen=True)
class SynthConfig:
    """One synthetic video's look and length; `polyps` and `motion` are sub-sections."""
    width: int = 640
    height: int = 480
    fps: float = 25.0
    seconds: float = 10.0
    fov_deg: float = 140.0                  # lens field of view across the circular image
    lumen_radius_mm: tuple[float, float] = (20.0, 27.0)
    fold_spacing_mm: tuple[float, float] = (22.0, 36.0)
    fold_depth: tuple[float, float] = (0.18, 0.32)   # fold height as a fraction of the radius
    texture_px_per_mm: float = 6.0
    motion_blur: float = 0.5                # exposure as a fraction of the frame interval
    specular: float = 1.0
    overlay_text: bool = True               # the tower's text strip on the black border
    jpeg_quality: int = 92
    mp4_crf: int = 20
    polyps: PolypConfig = field(default_factory=PolypConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)

    @property
    def num_frames(self) -> int:
        return max(1, int(round(self.seconds * self.fps)))


PRESETS: dict[str, dict[str, Any]] = {
    # The demo clip: three polyps, one per size class, and at least one exit-and-return.
    "demo": {"width": 640, "height": 480, "fps": 25.0, "seconds": 20.0,
             "polyps": {"min_count": 3, "max_count": 3, "diameter_mm": [3.0, 18.0],
                        "spread_size_classes": True},
             "motion": {"swing_probability": 1.0}},
}


def _coerce(value: Any, annotation: str, key: str, source: str) -> Any:
    """Check one YAML value against a field's annotation (given as a string)."""
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{source}: {key}: expected {expected}, got {value!r}")

    if annotation == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if annotation == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if annotation == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if annotation == "tuple[float, float]":
        if not isinstance(value, (list, tuple)) or len(value) != 2 or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
            raise bad("a list of two numbers [low, high]")
        low, high = float(value[0]), float(value[1])
        if low > high:
            raise bad("[low, high] with low <= high")
        return (low, high)
    if annotation == "tuple[str, ...]":
        if not isinstance(value, (list, tuple)) or not value or any(not isinstance(v, str) for v in value):
            raise bad("a non-empty list of names")
        return tuple(value)
    raise ConfigError(f"{source}: {key}: unsupported setting type {annotation}")


def _apply(base, overrides: dict, prefix: str, source: str):
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'}: expected a mapping, "
                          f"got {type(overrides).__name__}")
    known = {f.name: f for f in fields(base)}
    changes = {}
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"{source}: unknown key '{name}' (known: {', '.join(known)})")
        current = getattr(base, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _apply(current, value, f"{name}.", source)
        else:
            changes[key] = _coerce(value, str(known[key].type), name, source)
    return replace(base, **changes)


def validate_config(cfg: SynthConfig, source: str = "config") -> SynthConfig:
    """Range checks that types alone cannot express; returns `cfg` unchanged."""
    def fail(key: str, problem: str) -> None:
        raise ConfigError(f"{source}: {key}: {problem}")

    if cfg.width < 32 or cfg.height < 32 or cfg.width % 2 or cfg.height % 2:
        fail("width/height", f"need even sizes of at least 32 pixels, got {cfg.width}x{cfg.height}")
    if not 1.0 <= cfg.fps <= 240.0:
        fail("fps", f"must be between 1 and 240, got {cfg.fps}")
    if not 0.0 < cfg.seconds <= 3600.0:
        fail("seconds", f"must be in (0, 3600], got {cfg.seconds}")
    if not 60.0 <= cfg.fov_deg <= 200.0:
        fail("fov_deg", f"must be between 60 and 200, got {cfg.fov_deg}")
    if cfg.lumen_radius_mm[0] < 8.0:
        fail("lumen_radius_mm", f"must be at least 8 mm, got {cfg.lumen_radius_mm[0]}")
    if cfg.fold_spacing_mm[0] < 5.0:
        fail("fold_spacing_mm", f"must be at least 5 mm, got {cfg.fold_spacing_mm[0]}")
    if not (0.0 <= cfg.fold_depth[0] and cfg.fold_depth[1] <= 0.5):
        fail("fold_depth", f"must lie in [0, 0.5], got {list(cfg.fold_depth)}")
    if not 1.0 <= cfg.texture_px_per_mm <= 20.0:
        fail("texture_px_per_mm", f"must be between 1 and 20, got {cfg.texture_px_per_mm}")
    if not 0.0 <= cfg.motion_blur <= 1.0:
        fail("motion_blur", f"must be between 0 and 1, got {cfg.motion_blur}")
    if not 1 <= cfg.jpeg_quality <= 100:
        fail("jpeg_quality", f"must be between 1 and 100, got {cfg.jpeg_quality}")
    if not 0 <= cfg.mp4_crf <= 51:
        fail("mp4_crf", f"must be between 0 and 51, got {cfg.mp4_crf}")
    p = cfg.polyps
    if not 0 <= p.min_count <= p.max_count <= 3:
        fail("polyps.min_count/max_count", f"need 0 <= min <= max <= 3, got {p.min_count}, {p.max_count}")
    if not 1.0 <= p.diameter_mm[0] and p.diameter_mm[1] <= 30.0:
        fail("polyps.diameter_mm", f"must lie in [1, 30] mm, got {list(p.diameter_mm)}")
    for shape in p.shapes:
        if shape not in SHAPES:
            fail("polyps.shapes", f"unknown shape '{shape}' (known: {', '.join(SHAPES)})")
    for colour in p.colours:
        if colour not in COLOURS:
            fail("polyps.colours", f"unknown colour '{colour}' (known: {', '.join(COLOURS)})")
    m = cfg.motion
    for key in ("withdrawal_probability", "swing_probability"):
        if not 0.0 <= getattr(m, key) <= 1.0:
            fail(f"motion.{key}", f"must be between 0 and 1, got {getattr(m, key)}")
    if m.inspect_distance_mm[0] < 5.0:
        fail("motion.inspect_distance_mm", f"must be at least 5 mm, got {m.inspect_distance_mm[0]}")
    if not 0.0 <= m.lateral_offset <= 0.4:
        fail("motion.lateral_offset", f"must be between 0 and 0.4, got {m.lateral_offset}")
    if not 0.0 <= m.aim_weight[0] and m.aim_weight[1] <= 1.0:
        fail("motion.aim_weight", f"must lie in [0, 1], got {list(m.aim_weight)}")
    return cfg


def apply_overrides(cfg: SynthConfig, overrides: dict, source: str = "overrides") -> SynthConfig:
    """Return `cfg` with a nested mapping of overrides applied (the YAML shape), validated."""
    return validate_config(_apply(cfg, overrides, "", source), source)


def load_synth_config(path: str | os.PathLike | None = None, preset: str | None = None) -> SynthConfig:
    """Defaults, then the preset (if any), then the YAML file (if any)."""
    cfg = SynthConfig()
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset '{preset}' (known: {', '.join(PRESETS)})")
        cfg = apply_overrides(cfg, PRESETS[preset], f"preset {preset}")
    if path is not None:
        data = read_yaml_mapping(path, "synth config")
        cfg = apply_overrides(cfg, data, str(path))
    return validate_config(cfg)


def config_to_dict(cfg: SynthConfig) -> dict:
    """JSON/YAML-friendly form (tuples become lists), e.g. for provenance in gt.json."""
    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value
    return {k: (config_to_dict(v) if dataclasses.is_dataclass(v) else plain(v))
            for k, v in ((f.name, getattr(cfg, f.name)) for f in fields(cfg))}
