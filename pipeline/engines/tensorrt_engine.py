"""TensorRT engine: static-shape programs per batch size, on the engine's own CUDA stream.

Compilation and the on-disk cache live in pipeline.engines.tensorrt_build (hagview-export --tensorrt
prebuilds the same cache). A batch is padded up to the next compiled batch size; a batch
larger than the largest compiled size is run in chunks. All CUDA/TensorRT imports are lazy.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from pipeline.bundle import Bundle
from pipeline.engines.tensorrt_build import DEFAULT_BATCH_SIZES, ProgramCache, require_tensorrt, unavailable_reason

from . import Engine

log = logging.getLogger(__name__)

__all__ = ["TensorRTEngine", "unavailable_reason"]


class TensorRTEngine(Engine):
    name = "tensorrt"

    def __init__(self, bundle: Bundle, device: str = "cuda", batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                 precision: str = "fp16", cache_dir=None):
        require_tensorrt()
        import torch

        super().__init__(bundle, device)
        self.batch_sizes = tuple(sorted(set(int(b) for b in batch_sizes) | {1}))
        self.precision = precision
        self.cache = ProgramCache(bundle, precision=precision, device=device, cache_dir=cache_dir)
        self.programs = {batch: self.cache.load_or_build(batch) for batch in self.batch_sizes}
        self.stream = torch.cuda.Stream(device=device)

    def compiled_size_for(self, batch: int) -> int:
        """The smallest compiled batch size that holds `batch` (the largest when none does)."""
        return next((size for size in self.batch_sizes if size >= batch), self.batch_sizes[-1])

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = next(iter(inputs.values())).shape[0]
        pieces: dict[str, list[np.ndarray]] = {name: [] for name in self.bundle.output_names}
        start = 0
        while start < batch:
            size = self.compiled_size_for(batch - start)
            count = min(size, batch - start)
            chunk = self._run_padded({k: v[start:start + count] for k, v in inputs.items()}, size)
            for name in pieces:
                pieces[name].append(chunk[name][:count])
            start += count
        return {name: np.concatenate(parts) for name, parts in pieces.items()}

    def _run_padded(self, inputs: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode(), torch.cuda.stream(self.stream):
            tensors = []
            for name in self.bundle.input_names:
                host = torch.from_numpy(inputs[name])
                if host.shape[0] < size:   # pad with zeros up to the compiled static shape
                    host = torch.cat([host, host.new_zeros((size - host.shape[0], *host.shape[1:]))])
                tensors.append(host.pin_memory().to(self.device, non_blocking=True))
            outputs = self.programs[size](*tensors)
            host_outputs = [out.to("cpu", non_blocking=True) for out in outputs]
        self.stream.synchronize()
        return {name: out.float().numpy() for name, out in zip(self.bundle.output_names, host_outputs)}

    def describe(self) -> str:
        import torch

        gpu = torch.cuda.get_device_name(torch.device(self.device).index or 0)
        sizes = ",".join(map(str, self.batch_sizes))
        return f"tensorrt {self.precision} on {gpu} (batch sizes {sizes}): {self.bundle.describe()}"
