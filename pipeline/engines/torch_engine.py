"""PyTorch engine: the folded weights rebuilt through the model registry; eager or torch.compile.

On CPU the model runs in float32, any batch size, and several threads may call it at once.
On CUDA it runs the typed program of `tensorrt_build.typed_program` (FP16 by default, LayerNorm
in FP32, float32 at the boundary) at static batch sizes (padded up, chunked above the largest)
on the engine's own stream with pinned buffers per size; `torch-compile` there uses CUDA graphs
(mode "reduce-overhead": one graph per batch size, recorded once and replayed). One call at a
time on CUDA: a CUDA graph's outputs and the pinned buffers are reused by the next call.
"""
from __future__ import annotations

import logging
import threading
from typing import Sequence

import numpy as np

from pipeline.bundle import Bundle
from pipeline.errors import BundleError

from . import Engine, cuda
from .batching import PinnedBuffers, normalise_sizes, run_in_static_batches
from .tensorrt_build import DEFAULT_BATCH_SIZES, PRECISIONS, typed_program

log = logging.getLogger(__name__)

CUDA_COMPILE_MODE = "reduce-overhead"     # CUDA graphs without max-autotune's minutes of tuning


def compile_unavailable_reason() -> str | None:
    import torch

    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    return None


class TorchEngine(Engine):
    """Folded model in eval mode under inference_mode; `compile=True` wraps it in torch.compile.

    `threads` sets torch's intra-op thread count, which is process-wide in PyTorch.
    `precision` (CUDA only; CPU is always fp32): "fp16" (default) or "fp32".
    """

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None, compile: bool = False,
                 precision: str | None = None, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                 compile_mode: str | None = None):
        import torch

        on_cuda = str(device).startswith("cuda")
        torch_device = cuda.resolve_device(device, "torch") if on_cuda else torch.device("cpu")
        super().__init__(bundle, str(torch_device))
        if threads:
            torch.set_num_threads(int(threads))
        self.name = "torch-compile" if compile else "torch"
        self.compiled = compile
        self.precision = (precision or "fp16") if on_cuda else "fp32"
        if self.precision not in PRECISIONS or (not on_cuda and precision not in (None, "fp32")):
            raise BundleError(f"torch precision {precision!r}: choose fp16 or fp32 on CUDA, fp32 on CPU")
        self.on_cuda = on_cuda
        model = bundle.build_torch_model(device="cpu")
        self.model = typed_program(model, self.precision).to(cuda.CUDA.placement(torch_device) if on_cuda else "cpu")
        self.compile_mode = (compile_mode or CUDA_COMPILE_MODE) if (compile and on_cuda) else compile_mode
        self._forward = torch.compile(self.model, mode=self.compile_mode, dynamic=False) if compile else self.model
        if on_cuda:
            self.batch_sizes = normalise_sizes(batch_sizes)
            self.stream = cuda.CUDA.new_stream(torch_device)
            self.buffers = PinnedBuffers(cuda.CUDA, torch_device, self.stream, bundle.input_names,
                                         bundle.output_names)
            self._lock = threading.Lock()

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        if self.on_cuda:
            with self._lock:
                return run_in_static_batches(inputs, self.batch_sizes, self.bundle.output_names,
                                             lambda chunk, size: self.buffers.run(chunk, size, self._forward))
        with torch.inference_mode():
            outputs = self._forward(*[torch.from_numpy(inputs[n]) for n in self.bundle.input_names])
            return {n: out.float().numpy() for n, out in zip(self.bundle.output_names, outputs)}

    def describe(self) -> str:
        import torch

        mode = f"torch.compile ({self.compile_mode or 'default'})" if self.compiled else "eager"
        return f"torch {torch.__version__} {mode} {self.precision} on {self.device}: {self.bundle.describe()}"
