"""Model registry: configs name a model, `build_model` constructs it.

Names map to "module:attribute" strings imported on first use, so a model's module (and its
dependencies) loads only when that model is built, and a module can be registered before it
exists (the detector).
"""
from __future__ import annotations

import importlib
import inspect

from torch import nn

from pipeline.errors import ConfigError
from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from .base import HagModel
from .gates import Gate, gate_parameters, main_parameters
from .pretrained import PretrainedReport, load_imagenet_weights

_REGISTRY: dict[str, str] = {
    "hag_resnet18": "trainer.models.resnet:HagResNet18",
    "hag_vit_tiny": "trainer.models.vit:HagViT",
    "hag_detector": "trainer.models.detector:HagDetector",
}


def register_model(name: str, target: str) -> None:
    """Register `name` -> "package.module:ClassOrFactory" (imported when first built)."""
    if ":" not in target:
        raise ValueError(f"model target must look like 'package.module:Name', got {target!r}")
    _REGISTRY[name] = target


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def model_class(name: str):
    """The constructor registered under `name` (imports its module)."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    module_name, attr = _REGISTRY[name].split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model {name!r}: cannot import {module_name} ({exc})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"model {name!r}: {module_name} has no {attr}") from None


def build_model(name: str, **kwargs) -> nn.Module:
    """Build the model registered under `name` with its typed keyword arguments.

    Unknown keyword arguments and invalid values raise ConfigError naming them.
    """
    constructor = model_class(name)
    try:
        parameters = inspect.signature(constructor).parameters
    except (TypeError, ValueError):
        parameters = {}
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if parameters and not accepts_any:
        unknown = sorted(set(kwargs) - set(parameters))
        if unknown:
            known = ", ".join(k for k in parameters if k != "self")
            raise ConfigError(f"model {name!r}: unknown argument {unknown[0]!r} (known: {known})")
    try:
        model = constructor(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {name!r}: {exc}") from None
    if not getattr(model, "architecture", None):
        model.architecture = name
    return model


__all__ = [
    "Gate", "HagModel", "PretrainedReport", "build_model", "gate_parameters", "load_checkpoint", "load_imagenet_weights",
    "main_parameters", "model_class", "model_names", "read_checkpoint", "register_model",
    "save_checkpoint",
]
