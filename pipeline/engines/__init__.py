"""Inference engines behind one interface, and the choice of backend.

```python
engine = load_engine(bundle_or_path, backend="auto", threads=None, device=None)
engine.run({"rgb": float32 (N,3,S,S), ...}) -> {"size_mm": (N,1), ...}
engine.name      # "onnxruntime" | "torch" | "torch-compile" | "tensorrt"
engine.bundle    # pipeline.bundle.Bundle
engine.describe()
```
`backend="auto"` tries tensorrt, then torch on CUDA, then onnxruntime, then torch on CPU, and
logs which it picked and why each earlier one was skipped. Asking for one backend by name
raises BackendUnavailable saying why it cannot run here.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Mapping

import numpy as np

from pipeline.errors import BackendUnavailable, BundleError, DataError
from pipeline.bundle import Bundle, load_bundle

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "torch", "torch-compile", "tensorrt")
AUTO_ORDER = ("tensorrt", "torch-cuda", "onnxruntime", "torch-cpu")


class Engine:
    """Runs batches of a bundle's model. Subclasses implement `_run` and set `name`."""

    name: str = ""

    def __init__(self, bundle: Bundle, device: str):
        self.bundle = bundle
        self.device = device

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs: one float32 (N,3,H,W) array per stream, same N; outputs float32 arrays by name."""
        return self._run(self.check_inputs(inputs))

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.bundle.input_names
        missing = [n for n in names if n not in inputs]
        if missing:
            raise DataError(f"{self.name} engine for {self.bundle.path.name}: input {missing[0]!r} missing "
                            f"(expects {', '.join(names)}; got {', '.join(inputs) or 'nothing'})")
        width, height = self.bundle.input_size
        batch = None
        checked = {}
        for name in names:
            array = np.ascontiguousarray(inputs[name], dtype=np.float32)
            channels = self.bundle.input_channels[name]
            if array.ndim != 4 or array.shape[1:] != (channels, height, width):
                raise DataError(f"{self.name} engine for {self.bundle.path.name}: input {name!r} has shape "
                                f"{array.shape}, expected (N, {channels}, {height}, {width})")
            if batch is not None and array.shape[0] != batch:
                raise DataError(f"{self.name} engine: inputs have different batch sizes ({batch} and {array.shape[0]})")
            batch = array.shape[0]
            checked[name] = array
        return checked

    def describe(self) -> str:
        return f"{self.name} on {self.device}: {self.bundle.describe()}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def _as_bundle(bundle_or_path: Bundle | str | Path) -> Bundle:
    return bundle_or_path if isinstance(bundle_or_path, Bundle) else load_bundle(bundle_or_path)


# Device nodes of the NVIDIA driver on Linux (native, containers) and of WSL2's GPU bridge.
NVIDIA_DEVICE_NODES = ("/dev/nvidiactl", "/dev/dxg")


def _cuda_reason() -> str | None:
    """Why CUDA cannot be used here, or None when it can. On Linux without an NVIDIA driver's
    device node this answers without importing torch (measured: 0.9 s and 190 MB of memory)."""
    if sys.platform.startswith("linux") and not any(os.path.exists(node) for node in NVIDIA_DEVICE_NODES):
        return f"no NVIDIA GPU driver here (none of {', '.join(NVIDIA_DEVICE_NODES)})"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "CUDA is not available (torch.cuda.is_available() is False)"
    return None


def unavailable_reason(backend: str, bundle: Bundle, device: str | None = None) -> str | None:
    """Why `backend` cannot run `bundle` on `device` here, or None when it can (cheap checks)."""
    if backend not in (*BACKENDS, "torch-cuda", "torch-cpu"):
        raise BackendUnavailable(f"unknown backend {backend!r}; choose auto or one of {', '.join(BACKENDS)}")
    wants_cuda = backend in ("tensorrt", "torch-cuda") or (device or "").startswith("cuda")
    if backend == "onnxruntime":
        from .onnxruntime_engine import unavailable_reason as ort_reason
        return ort_reason(device)
    if bundle.is_external:
        return f"{bundle.path.name} is an external ONNX model without PyTorch weights; only onnxruntime runs it"
    if device == "cpu" and wants_cuda:
        return "device=cpu was requested"
    if wants_cuda:
        reason = _cuda_reason()
        if reason:
            return reason
    if backend == "tensorrt":
        from .tensorrt_engine import unavailable_reason as trt_reason
        return trt_reason()
    if backend == "torch-compile":
        from .torch_engine import compile_unavailable_reason
        return compile_unavailable_reason()
    return None


def load_engine(bundle_or_path: Bundle | str | Path, backend: str = "auto", threads: int | None = None,
                device: str | None = None, **options) -> Engine:
    """Load a bundle into an engine. Extra `options` go to the backend (e.g. tensorrt batch_sizes)."""
    bundle = _as_bundle(bundle_or_path)
    if backend == "auto":
        skipped = []
        for candidate in AUTO_ORDER:
            if candidate == "torch-cpu" and device and device.startswith("cuda"):
                continue
            reason = unavailable_reason(candidate, bundle, device)
            if reason is None:
                try:
                    engine = _create(candidate, bundle, threads, device, options)
                except BackendUnavailable as exc:
                    skipped.append(f"{candidate}: {exc}")
                    continue
                log.info("backend auto: picked %s%s", engine.name,
                         "" if not skipped else " (skipped " + "; ".join(skipped) + ")")
                return engine
            skipped.append(f"{candidate}: {reason}")
        raise BackendUnavailable("no backend can run " + str(bundle.path) + ": " + "; ".join(skipped))
    if backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {backend!r}; choose auto or one of {', '.join(BACKENDS)}")
    reason = unavailable_reason(backend, bundle, device)
    if reason:
        raise BackendUnavailable(f"{backend}: {reason}")
    return _create(backend, bundle, threads, device, options)


def _create(backend: str, bundle: Bundle, threads, device, options) -> Engine:
    if backend == "onnxruntime":
        from .onnxruntime_engine import OnnxRuntimeEngine
        return OnnxRuntimeEngine(bundle, threads=threads, device=device or "cpu")
    if backend == "tensorrt":
        from .tensorrt_engine import TensorRTEngine
        return TensorRTEngine(bundle, device=device or "cuda", **options)
    from .torch_engine import TorchEngine
    if backend == "torch-cuda":
        return TorchEngine(bundle, device=device or "cuda", threads=threads)
    if backend == "torch-cpu":
        return TorchEngine(bundle, device="cpu", threads=threads)
    return TorchEngine(bundle, device=device or ("cuda" if _cuda_reason() is None else "cpu"),
                       threads=threads, compile=backend == "torch-compile")


__all__ = ["AUTO_ORDER", "BACKENDS", "Engine", "load_engine", "unavailable_reason",
           "BackendUnavailable", "BundleError"]
