"""PyTorch engine: the folded weights rebuilt through the model registry; eager or torch.compile."""
from __future__ import annotations

import logging

import numpy as np

from pipeline.bundle import Bundle

from . import Engine

log = logging.getLogger(__name__)


def compile_unavailable_reason() -> str | None:
    import torch

    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    return None


class TorchEngine(Engine):
    """Folded model in eval mode under inference_mode; `compile=True` wraps it in torch.compile.

    `threads` sets torch's intra-op thread count, which is process-wide in PyTorch.
    """

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None, compile: bool = False):
        import torch

        super().__init__(bundle, device)
        if threads:
            torch.set_num_threads(int(threads))
        self.name = "torch-compile" if compile else "torch"
        self.model = bundle.build_torch_model(device=device)
        self.compiled = compile
        self._forward = torch.compile(self.model, dynamic=False) if compile else self.model

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            tensors = {k: torch.from_numpy(v).to(self.device, non_blocking=True) for k, v in inputs.items()}
            outputs = self._forward(tensors)
            return {k: outputs[k].float().cpu().numpy() for k in self.bundle.output_names}

    def describe(self) -> str:
        import torch

        mode = "torch.compile" if self.compiled else "eager"
        return f"torch {torch.__version__} {mode} on {self.device}: {self.bundle.describe()}"
