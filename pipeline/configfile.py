"""Config files: YAML mappings read safely, `--set key=value` overrides, and strict checking of a
mapping against a dataclass schema (unknown keys, wrong types and bad choices are one-line
ConfigErrors naming the key). Shared by the run config (`pipeline.config`), the training config
(`trainer.config`) and the generator's config (`trainer.synth.config`).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import ConfigError


def choices(default, options: tuple[str, ...]):
    """A dataclass field whose value must be one of `options` (checked when the config is read)."""
    return dataclasses.field(default=default, metadata={"choices": options})


def read_yaml_mapping(path: str | os.PathLike, what: str = "config") -> dict[str, Any]:
    """A YAML file that holds a mapping (empty file: {}), read with safe_load.

    Every problem is a one-line ConfigError naming the file (and the line, for bad YAML).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {what} ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None)
        if mark is None or not problem:
            raise ConfigError(f"{path}: invalid YAML") from None
        raise ConfigError(f"{path}: line {mark.line + 1} {problem} (invalid YAML)") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a {what} is a mapping of sections, got {type(loaded).__name__}")
    return loaded


def parse_section(schema: type, raw: dict[str, Any] | None, prefix: str):
    """Validate a mapping against a dataclass schema; for tasks checking `task_options`."""
    return _build(schema, raw or {}, prefix=prefix)


def config_to_dict(cfg) -> dict[str, Any]:
    """Plain YAML/JSON-ready dict of a config (tuples become lists)."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value
    return plain(dataclasses.asdict(cfg))


def parse_overrides(overrides) -> list[tuple[str, Any]]:
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        return list(overrides.items())
    parsed = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set '{item}': expected key=value (e.g. optim.main.lr=1e-3)")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text  # not a YAML scalar: keep the text, the schema decides
        parsed.append((key, value))
    return parsed


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in nested mappings; a number indexes a list (`data.sources.0.root`)."""
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[:i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: config key '{where}': the list has {len(node)} entries "
                                  f"(index them 0..{len(node) - 1})")
            part = int(part)
        if i == len(parts) - 1:
            node[part] = value
            return
        child = node[part] if isinstance(node, list) else node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, (dict, list)):
            raise ConfigError(f"--set {key}: config key '{where}' is not a section")
        node = child


def _build(schema: type, raw: Any, prefix: str):
    where = prefix.rstrip(".") or "the config"
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{where}': expected a section (mapping), got {_show(raw)}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key in raw:
        if key not in fields:
            full = f"{prefix}{key}"
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else \
                f" (known keys: {', '.join(fields)})"
            raise ConfigError(f"unknown config key '{full}'{hint}")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        key = f"{prefix}{name}"
        value = _coerce(raw[name], hints[name], key)
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"config key '{key}': expected one of {', '.join(choices)}; got {_show(value)}")
        values[name] = value
    return schema(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value if value is not None else {}, prefix=f"{key}.")
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true or false, got {_show(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected an integer, got {_show(value)}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads `2e-4` (no dot) as a string: accept what plainly is a number.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected a number, got {_show(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}': expected a string, got {_show(value)}")
    if origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"config key '{key}': expected a mapping, got {_show(value)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {_show(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"config key '{key}': expected a list of {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    raise TypeError(f"config schema: unsupported type {hint!r} for {key}")  # a bug in the schema


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return repr(value)
