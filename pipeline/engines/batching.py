"""Batches run at a few static sizes: padded up to the next size, chunked above the largest.

Compiled programs (TensorRT, torch.compile with CUDA graphs) are fastest with static shapes;
each size is compiled once and reused, and any batch maps onto them.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def normalise_sizes(batch_sizes: Sequence[int]) -> tuple[int, ...]:
    """Sorted distinct sizes, always including 1."""
    sizes = sorted(set(int(b) for b in batch_sizes) | {1})
    if sizes[0] < 1:
        raise ValueError(f"batch sizes must be at least 1, got {sizes[0]}")
    return tuple(sizes)


def static_size_for(batch: int, sizes: Sequence[int]) -> int:
    """The smallest size that holds `batch` (the largest when none does)."""
    return next((size for size in sizes if size >= batch), sizes[-1])


def run_in_static_batches(inputs: dict[str, np.ndarray], sizes: Sequence[int], output_names: Sequence[str],
                          run_padded: Callable[[dict[str, np.ndarray], int], dict[str, np.ndarray]]
                          ) -> dict[str, np.ndarray]:
    """`run_padded(chunk, size)` runs a chunk of at most `size` rows at the static size `size`
    and returns at least as many rows as the chunk has; the rows are joined in order."""
    batch = next(iter(inputs.values())).shape[0]
    pieces: dict[str, list[np.ndarray]] = {name: [] for name in output_names}
    start = 0
    while start < batch:
        size = static_size_for(batch - start, sizes)
        count = min(size, batch - start)
        chunk = run_padded({k: v[start:start + count] for k, v in inputs.items()}, size)
        for name in pieces:
            pieces[name].append(chunk[name][:count])
        start += count
    return {name: np.concatenate(parts) for name, parts in pieces.items()}


class PinnedBuffers:
    """Page-locked host buffers per static batch size, allocated on first use and reused, so the
    copies to and from the GPU are asynchronous on the engine's stream and no call allocates
    pinned memory (slow: it synchronises the device). The caller holds its lock around `run`:
    the buffers belong to one call at a time."""

    def __init__(self, cuda, device, stream, input_names: Sequence[str], output_names: Sequence[str]):
        self.cuda, self.device, self.stream = cuda, device, stream
        self.input_names, self.output_names = tuple(input_names), tuple(output_names)
        self.inputs: dict[int, list] = {}
        self.outputs: dict[int, list] = {}

    def run(self, inputs: dict[str, np.ndarray], size: int, forward: Callable) -> dict[str, np.ndarray]:
        """`forward(*device_tensors)` at static batch `size` (rows past the inputs' are zeros);
        returns float32 copies of the outputs' first rows."""
        import torch

        count = next(iter(inputs.values())).shape[0]
        placement = self.cuda.placement(self.device)
        with torch.inference_mode():
            host_in = self.inputs.get(size)
            if host_in is None:
                host_in = self.inputs[size] = [self.cuda.pinned_empty((size, *inputs[n].shape[1:]), torch.float32)
                                               for n in self.input_names]
            for buf, name in zip(host_in, self.input_names):
                buf[:count].copy_(torch.from_numpy(inputs[name]))
                if count < size:
                    buf[count:].zero_()
            with self.cuda.use_stream(self.stream):
                outputs = forward(*[buf.to(placement, non_blocking=True) for buf in host_in])
                host_out = self.outputs.get(size)
                if host_out is None:
                    host_out = self.outputs[size] = [self.cuda.pinned_empty(tuple(out.shape), out.dtype)
                                                     for out in outputs]
                for buf, out in zip(host_out, outputs):
                    buf.copy_(out, non_blocking=True)
            self.stream.synchronize()
            return {name: buf[:count].numpy().astype(np.float32, copy=True)
                    for name, buf in zip(self.output_names, host_out)}

    def allocated(self) -> dict[int, int]:
        """Pinned buffers held per batch size (inputs + outputs)."""
        return {size: len(self.inputs.get(size, ())) + len(self.outputs.get(size, ()))
                for size in sorted(set(self.inputs) | set(self.outputs))}
