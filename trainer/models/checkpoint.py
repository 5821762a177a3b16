"""Training checkpoints: weights + JSON-like metadata (+ optional training state for --resume).

File layout (a torch.save'd dict, read back with `torch.load(weights_only=True)`):
  {"format": "hagview-checkpoint", "version": 1,
   "metadata_json": str,            # design.md "Checkpoint metadata", JSON text
   "state_dict": {name: tensor},
   "training_state": dict | None}   # optimizer/scheduler/scaler state dicts, epoch, ...
Metadata is kept as JSON text so it stays JSON-like by construction. The model is rebuilt
from `metadata["architecture"]` and `metadata["init_kwargs"]` through the registry.
"""
from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import ConfigError, HagviewError
from pipeline.fsutil import atomic_path

CHECKPOINT_FORMAT = "hagview-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(HagviewError):
    """A checkpoint file is missing, unreadable, unsafe, or does not describe a known model."""


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    metadata: dict
    training_state: dict | None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model itself under DistributedDataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def safe_torch_load(path: Path, map_location, error_cls: type[HagviewError], what: str):
    """`torch.load(weights_only=True)` with one-line errors: code in the pickle is refused
    (nothing from it runs), a damaged or foreign file is reported as unreadable."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().split("\n")[0].strip()
        if "Unsupported global" in detail:
            name = detail.split("GLOBAL", 1)[-1].split(" was not", 1)[0].strip()
            raise error_cls(f"{path}: refused to load the {what}: its pickle references {name}, which could "
                            f"run code; only tensors and plain data are accepted") from None
        raise error_cls(f"{path}: not a readable {what}: the weights-only loader rejected it "
                        f"({detail[:120] or 'invalid pickle'})") from None
    except Exception as exc:  # corrupt zip, truncated file, not a torch file at all
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise error_cls(f"{path}: not a readable {what} ({type(exc).__name__}: {first})") from None


def save_checkpoint(model: nn.Module, path: str | os.PathLike, metadata: dict,
                    training_state: dict | None = None) -> Path:
    """Write weights and metadata atomically; `architecture`/`init_kwargs` are taken from the model."""
    model = unwrap_model(model)
    metadata = dict(metadata)
    metadata["architecture"] = getattr(model, "architecture", None) or metadata.get("architecture")
    metadata["init_kwargs"] = dict(getattr(model, "init_kwargs", None) or metadata.get("init_kwargs") or {})
    if not metadata["architecture"]:
        raise ValueError("save_checkpoint: the model has no `architecture` and metadata names none")
    try:
        metadata_json = json.dumps(metadata, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint metadata must be JSON-like: {exc}") from None
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "metadata_json": metadata_json,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "training_state": training_state,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint without building the model. Never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    payload = safe_torch_load(path, map_location, CheckpointError, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a hagview checkpoint (no '{CHECKPOINT_FORMAT}' format marker)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')!r} is not supported "
                              f"(this hagview reads version {CHECKPOINT_VERSION})")
    try:
        metadata = json.loads(payload["metadata_json"])
        state_dict = payload["state_dict"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint is incomplete ({exc})") from None
    return Checkpoint(state_dict=state_dict, metadata=metadata, training_state=payload.get("training_state"))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild the model through the registry and load its weights -> (model, metadata)."""
    from . import build_model

    checkpoint = read_checkpoint(path, map_location)
    architecture = checkpoint.metadata.get("architecture")
    if not architecture:
        raise CheckpointError(f"{path}: checkpoint metadata names no architecture")
    try:
        model = build_model(architecture, **checkpoint.metadata.get("init_kwargs", {}))
    except ConfigError as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model: {exc}") from None
    try:
        model.load_state_dict(checkpoint.state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{path}: weights do not fit {architecture} "
                              f"({' '.join(line.strip() for line in first[:2])[:200]})") from None
    model.to(map_location)
    return model, checkpoint.metadata
