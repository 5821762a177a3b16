"""ImageNet weights from a local file (torchvision ResNet-18 or timm ViT naming). Never downloads.

The file is read with safetensors or `torch.load(weights_only=True)`; each model maps the
source names onto its own (`model.imagenet_state_from`). What was not loaded is reported, and
logged, rather than silently ignored.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import ConfigError
from .checkpoint import safe_torch_load

log = logging.getLogger(__name__)


@dataclass
class PretrainedReport:
    path: str
    loaded: list[str] = field(default_factory=list)       # model keys that received a tensor
    missing: list[str] = field(default_factory=list)      # model keys left as initialised (gates, head, ...)
    unexpected: list[str] = field(default_factory=list)   # source keys that were not used


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} from .safetensors or a torch file (unwraps "state_dict"/"model")."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: pretrained weights file not found (weights are never downloaded; "
                          f"put a torchvision/timm state dict there)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = safe_torch_load(path, "cpu", ConfigError, "pretrained weights file")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{path}: cannot read pretrained weights ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: not a state dict of named tensors")
    # DataParallel-saved files prefix every key with "module."
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


@torch.no_grad()
def load_imagenet_state(model: nn.Module, source: dict[str, torch.Tensor], path: str = "<state dict>") -> PretrainedReport:
    mapper = getattr(model, "imagenet_state_from", None)
    if mapper is None:
        raise ConfigError(f"{getattr(model, 'architecture', type(model).__name__)} cannot load ImageNet weights")
    mapped, unused = mapper(source)
    if not mapped:
        raise ConfigError(f"{path}: no tensor in the file matches {model.architecture} "
                          f"(expected torchvision ResNet-18 / timm ViT names)")
    own = model.state_dict()
    for key, tensor in mapped.items():
        if tensor.shape != own[key].shape:
            raise ConfigError(f"{path}: {key} has shape {tuple(tensor.shape)}, model needs {tuple(own[key].shape)}")
        own[key].copy_(tensor.to(own[key].dtype))
    report = PretrainedReport(path=str(path), loaded=sorted(mapped),
                              missing=sorted(k for k in own if k not in mapped), unexpected=sorted(unused))
    log.info("%s: loaded %d tensors into %s; %d model tensors kept their initialisation; %d file tensors unused",
             path, len(report.loaded), model.architecture, len(report.missing), len(report.unexpected))
    return report


def load_imagenet_weights(model: nn.Module, path: str | os.PathLike) -> PretrainedReport:
    """Load ImageNet weights from a local file into `model` (in place) and report what happened."""
    return load_imagenet_state(model, read_state_dict(path), str(path))
