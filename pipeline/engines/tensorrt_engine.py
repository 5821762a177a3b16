"""TensorRT engine: static-shape programs per batch size, on the engine's own CUDA stream.

Compilation and the on-disk cache live in pipeline.engines.tensorrt_build (hagview-export --tensorrt
prebuilds the same cache). A batch is padded up to the next compiled batch size; a batch
larger than the largest compiled size is run in chunks. One call at a time: torch-tensorrt's
runtime sets per-engine stream fields on every call, and the pinned buffers are shared, so
`run` holds the engine's lock. All CUDA/TensorRT imports are lazy.
"""
from __future__ import annotations

import logging
import threading
from typing import Sequence

import numpy as np

from pipeline.bundle import Bundle
from pipeline.engines import cuda, tensorrt_build as build
from pipeline.engines.batching import PinnedBuffers, normalise_sizes, run_in_static_batches, static_size_for

from . import Engine

log = logging.getLogger(__name__)

unavailable_reason = build.unavailable_reason

__all__ = ["TensorRTEngine", "unavailable_reason"]


class TensorRTEngine(Engine):
    name = "tensorrt"

    def __init__(self, bundle: Bundle, device=None, batch_sizes: Sequence[int] = build.DEFAULT_BATCH_SIZES,
                 precision: str = "fp16", cache_dir=None, progress: build.Progress | None = None):
        build.require_tensorrt()
        torch_device = cuda.resolve_device(device, "tensorrt")
        super().__init__(bundle, str(torch_device))
        self.torch_device = torch_device
        self.batch_sizes = normalise_sizes(batch_sizes)
        self.precision = precision
        self.cache = build.ProgramCache(bundle, precision=precision, device=torch_device, cache_dir=cache_dir)
        self.programs = self.cache.load_all(self.batch_sizes, progress=progress)
        self.stream = cuda.CUDA.new_stream(torch_device)
        self.buffers = PinnedBuffers(cuda.CUDA, torch_device, self.stream, bundle.input_names, bundle.output_names)
        self._lock = threading.Lock()
        self.gpu_name = self.cache.gpu["gpu"]

    def compiled_size_for(self, batch: int) -> int:
        """The smallest compiled batch size that holds `batch` (the largest when none does)."""
        return static_size_for(batch, self.batch_sizes)

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            return run_in_static_batches(inputs, self.batch_sizes, self.bundle.output_names, self._run_padded)

    def _run_padded(self, inputs: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
        return self.buffers.run(inputs, size, self.programs[size])

    def describe(self) -> str:
        sizes = ",".join(map(str, self.batch_sizes))
        return (f"tensorrt {self.precision} on {self.gpu_name} ({self.device}, batch sizes {sizes}): "
                f"{self.bundle.describe()}")
