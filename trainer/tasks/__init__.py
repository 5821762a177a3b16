"""Training tasks: the config's `task:` key names one; `build_task(cfg)` constructs it.

Task modules are imported when first used, so a task's dependencies load only for its runs.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError
from .base import ConfusionMatrix, Task

if TYPE_CHECKING:
    from ..config import TrainConfig

_TASKS = {
    "sizer": "trainer.tasks.sizer:SizerTask",
    "detector": "trainer.tasks.detector:DetectorTask",
}


def task_class(name: str) -> type[Task]:
    if name not in _TASKS:
        raise ConfigError(f"config key 'task': unknown task {name!r} (known: {', '.join(_TASKS)})")
    module_name, attr = _TASKS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"task {name!r}: cannot import {module_name} ({exc})") from None
    return getattr(module, attr)


def build_task(config: "TrainConfig") -> Task:
    return task_class(config.task)(config)


__all__ = ["ConfusionMatrix", "Task", "build_task", "task_class"]
