"""Inference engines behind one interface, and the choice of backend.

```python
engine = load_engine(bundle_or_path, backend="auto", threads=None, device=None)
engine.run({"rgb": float32 (N,3,S,S), ...}) -> {"size_mm": (N,1), ...}
engine.name      # "onnxruntime" | "torch" | "torch-compile" | "tensorrt"
engine.bundle    # pipeline.bundle.Bundle
engine.describe()
```
`BACKENDS` are the names `load_engine` accepts (with "auto": `BACKEND_CHOICES`, the CLIs'
argparse choices). `torch` runs on CUDA where available, else on the CPU; `torch-cpu` and
`torch-cuda` name the device.

`backend="auto"` tries tensorrt, then torch on CUDA, then onnxruntime, then torch on CPU. A
candidate that is unavailable, or whose creation fails (a torch_tensorrt wheel that does not
import, an engine build that fails, CUDA out of memory), is skipped with a one-line reason;
the reasons are logged and kept in `engine.skipped`. When TensorRT would first have to build
its engines (minutes), `auto` serves with onnxruntime at once and builds on a thread, then
switches (a `BackgroundBuildEngine`; `background_build=False` waits instead). Asking for one
backend by name raises BackendUnavailable saying why it cannot run here.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from pipeline.errors import BackendUnavailable, BundleError, DataError, describe_error
from pipeline.bundle import Bundle, load_bundle

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "torch", "torch-cpu", "torch-cuda", "torch-compile", "tensorrt")
BACKEND_CHOICES = ("auto", *BACKENDS)      # argparse choices of hagview and hagview-annotate
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
        import torch  # noqa: F401
    except ImportError:
        return "torch is not installed"
    from . import cuda
    if not cuda.CUDA.available():
        return "CUDA is not available (torch.cuda.is_available() is False)"
    return None


def unavailable_reason(backend: str, bundle: Bundle, device: str | None = None) -> str | None:
    """Why `backend` cannot run `bundle` on `device` here, or None when it can (cheap checks)."""
    if backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {backend!r}; choose auto or one of {', '.join(BACKENDS)}")
    wants_cuda = backend in ("tensorrt", "torch-cuda") or (device or "").startswith("cuda")
    if backend == "onnxruntime":
        from .onnxruntime_engine import unavailable_reason as ort_reason
        return ort_reason(device)
    if bundle.is_external:
        return f"{bundle.path.name} is an external ONNX model without PyTorch weights; only onnxruntime runs it"
    if device == "cpu" and wants_cuda:
        return "device=cpu was requested"
    if backend == "torch-cpu" and (device or "").startswith("cuda"):
        return f"device={device} was requested"
    if wants_cuda:
        reason = _cuda_reason()
        if reason:
            return reason
    if backend == "tensorrt":
        from .tensorrt_build import unavailable_reason as trt_reason
        return trt_reason()
    if backend == "torch-compile":
        from .torch_engine import compile_unavailable_reason
        return compile_unavailable_reason()
    return None


def load_engine(bundle_or_path: Bundle | str | Path, backend: str = "auto", threads: int | None = None,
                device: str | None = None, background_build: bool = True, **options) -> Engine:
    """Load a bundle into an engine. Extra `options` go to the backend (e.g. tensorrt batch_sizes,
    precision, progress). `background_build` (auto only): see the module docstring."""
    bundle = _as_bundle(bundle_or_path)
    if backend == "auto":
        return _load_auto(bundle, threads, device, background_build, options)
    if backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {backend!r}; choose auto or one of {', '.join(BACKENDS)}")
    reason = unavailable_reason(backend, bundle, device)
    if reason:
        raise BackendUnavailable(f"{backend}: {reason}")
    return _create(backend, bundle, threads, device, options)


def _load_auto(bundle: Bundle, threads, device, background_build: bool, options) -> Engine:
    skipped: list[str] = []
    deferred: list[str] = []          # slow to create: built on a thread while another engine serves
    candidates = [c for c in AUTO_ORDER if not (c == "torch-cpu" and device and device.startswith("cuda"))]
    for candidate in candidates:
        reason = unavailable_reason(candidate, bundle, device)
        if reason is not None:
            skipped.append(f"{candidate}: {reason}")
            continue
        if candidate == "tensorrt" and background_build and _tensorrt_needs_build(bundle, device, options):
            deferred.append(candidate)
            continue
        if deferred and candidate == "torch-cuda":
            deferred.append(candidate)    # its fallback, tried on the same thread if the build fails
            continue
        try:
            engine = _create(candidate, bundle, threads, device, options)
        except Exception as exc:  # a failed build, CUDA out of memory, a mismatched wheel: try the next
            skipped.append(f"{candidate}: {describe_error(exc)}")
            log.warning("backend auto: %s failed (%s); trying the next backend", candidate, describe_error(exc))
            _release_cuda_memory(candidate)
            continue
        if deferred:
            log.info("backend auto: serving with %s while %s is built in the background%s", engine.name,
                     " then ".join(deferred), "" if not skipped else " (skipped " + "; ".join(skipped) + ")")
            makers = [(name, lambda name=name: _create(name, bundle, threads, device, options)) for name in deferred]
            return BackgroundBuildEngine(engine, makers, skipped)
        log.info("backend auto: picked %s%s", engine.name,
                 "" if not skipped else " (skipped " + "; ".join(skipped) + ")")
        engine.skipped = skipped
        return engine
    if deferred:      # nothing to serve with meanwhile: build in the foreground after all
        return _load_auto(bundle, threads, device, False, options)
    raise BackendUnavailable("no backend can run " + str(bundle.path) + ": " + "; ".join(skipped))


def _tensorrt_needs_build(bundle: Bundle, device, options) -> bool:
    """Whether a TensorRT engine for these options would have to compile programs first."""
    from .batching import normalise_sizes
    from .tensorrt_build import DEFAULT_BATCH_SIZES, ProgramCache

    try:
        cache = ProgramCache(bundle, precision=options.get("precision", "fp16"), device=device,
                             cache_dir=options.get("cache_dir"))
        return bool(cache.missing(normalise_sizes(options.get("batch_sizes", DEFAULT_BATCH_SIZES))))
    except Exception:
        return False      # let the foreground attempt report the problem


def _release_cuda_memory(candidate: str) -> None:
    if candidate in ("tensorrt", "torch-cuda"):
        from . import cuda
        try:
            cuda.CUDA.release_memory()
        except Exception:
            pass


class BackgroundBuildEngine(Engine):
    """Runs with `serving` while `makers` are tried in order on a thread; switches to the first
    engine made (e.g. onnxruntime while TensorRT builds, torch-cuda if that build fails).

    `ready` is set when the thread is done; `failures` holds a line per maker that failed;
    `skipped` the reasons auto skipped earlier candidates. Calls in flight finish on the engine
    they started on; the switch is one attribute assignment.
    """

    def __init__(self, serving: Engine, makers: list[tuple[str, Callable[[], Engine]]],
                 skipped: list[str] | None = None):
        self.bundle = serving.bundle
        self.skipped = list(skipped or [])
        self.failures: list[str] = []
        self.serving = serving
        self._engine = serving
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._build, args=(makers,), daemon=True,
                                        name=f"engine-build-{self.bundle.path.name}")
        self._thread.start()

    @property
    def name(self) -> str:
        return self._engine.name

    @property
    def device(self) -> str:
        return self._engine.device

    @property
    def engine(self) -> Engine:
        return self._engine

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._engine.run(inputs)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the background work is done (switched or given up); False on timeout."""
        return self.ready.wait(timeout)

    def _build(self, makers) -> None:
        try:
            for name, make in makers:
                try:
                    engine = make()
                except Exception as exc:
                    self.failures.append(f"{name}: {describe_error(exc)}")
                    log.warning("backend auto: building %s in the background failed (%s); still serving with %s",
                                name, describe_error(exc), self._engine.name)
                    _release_cuda_memory(name)
                    continue
                previous, self._engine = self._engine, engine
                log.info("backend auto: %s is ready; switched from %s", engine.name, previous.name)
                return
        finally:
            self.ready.set()

    def describe(self) -> str:
        state = "switched" if self._engine is not self.serving else \
            ("building in the background" if not self.ready.is_set() else "background build failed")
        return f"{self._engine.describe()} [{state}]"


def _create(backend: str, bundle: Bundle, threads, device, options) -> Engine:
    if backend == "onnxruntime":
        from .onnxruntime_engine import OnnxRuntimeEngine
        return OnnxRuntimeEngine(bundle, threads=threads, device=device or "cpu")
    if backend == "tensorrt":
        from .tensorrt_engine import TensorRTEngine
        trt_options = {k: v for k, v in options.items() if k in ("precision", "batch_sizes", "cache_dir", "progress")}
        return TensorRTEngine(bundle, device=device or "cuda", **trt_options)
    from .torch_engine import TorchEngine
    torch_options = {k: v for k, v in options.items() if k in ("precision", "batch_sizes", "compile_mode")}
    if backend == "torch-cuda":
        return TorchEngine(bundle, device=device or "cuda", threads=threads, **torch_options)
    if backend == "torch-cpu":
        return TorchEngine(bundle, device="cpu", threads=threads)
    on_cuda = (device or "").startswith("cuda") or (device is None and _cuda_reason() is None)
    return TorchEngine(bundle, device=device or ("cuda" if on_cuda else "cpu"), threads=threads,
                       compile=backend == "torch-compile", **(torch_options if on_cuda else {}))


__all__ = ["AUTO_ORDER", "BACKENDS", "BACKEND_CHOICES", "BackgroundBuildEngine", "Engine", "load_engine",
           "unavailable_reason", "BackendUnavailable", "BundleError"]
