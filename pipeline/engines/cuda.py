"""The CUDA calls of the GPU engines, in one place: CPU tests stand in a fake `CUDA` for them.

Modules use `cuda.CUDA.<call>` (never `from .cuda import CUDA`), so replacing the attribute
reaches every caller.
"""
from __future__ import annotations

from pipeline.errors import BackendUnavailable


class CudaRuntime:
    def available(self) -> bool:
        import torch
        return torch.cuda.is_available()

    def current_device(self) -> int:
        import torch
        return torch.cuda.current_device()

    def device_count(self) -> int:
        import torch
        return torch.cuda.device_count()

    def properties(self, index: int) -> tuple[str, str]:
        """(GPU name, compute capability "major.minor") of device `index`."""
        import torch
        major, minor = torch.cuda.get_device_capability(index)
        return torch.cuda.get_device_name(index), f"{major}.{minor}"

    def placement(self, device):
        """Where tensors and modules for `device` live: the device itself (a CPU fake says "cpu")."""
        return device

    def new_stream(self, device):
        import torch
        return torch.cuda.Stream(device=device)

    def use_stream(self, stream):
        import torch
        return torch.cuda.stream(stream)

    def pinned_empty(self, shape, dtype):
        import torch
        return torch.empty(shape, dtype=dtype, pin_memory=True)

    def release_memory(self) -> None:
        """Hand cached blocks back to the driver (after a failed build, e.g. out of memory)."""
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


CUDA = CudaRuntime()


def resolve_device(device=None, backend: str = "cuda"):
    """`torch.device("cuda", N)`: N from `device` ("cuda:N"), or for "cuda"/None the current
    device, resolved once so that every later call uses the same index (torch-tensorrt turns an
    index-less device into gpu_id None, which its runtime cannot use)."""
    import torch

    device = torch.device(device if device is not None else "cuda")
    if device.type != "cuda":
        raise BackendUnavailable(f"{backend}: runs on a CUDA device, not {device}")
    index = CUDA.current_device() if device.index is None else device.index
    count = CUDA.device_count()
    if not 0 <= index < count:
        raise BackendUnavailable(f"{backend}: no CUDA device {index} (this machine has {count})")
    return torch.device("cuda", index)
