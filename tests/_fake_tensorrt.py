"""Stand-ins for `torch_tensorrt`, `tensorrt` and the CUDA runtime, so the TensorRT control flow
(device index, cache, fallbacks, background builds, locking, buffers) runs on a CPU in CI.

What is faked is only what a CPU cannot do: `FakeCompiler.module()` is a torch_tensorrt whose
`dynamo.compile` checks its arguments the way torch-tensorrt 2.12/2.13 do (an index-less device
fails as in 2.13's runtime; 2.13 has no `use_explicit_typing`) and returns the exported program's
own module instead of a TensorRT engine; `save`/`load` are real `torch.export.save`/`load` files.
`FakeCuda` answers device queries for N fake GPUs and places their tensors on the CPU. Installed
without a FakeCuda, everything but the compiler is the real CUDA runtime: on a GPU machine
without TensorRT (the GPU check) the engine's CUDA path runs for real that way.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import sys
import threading
import time
import types

import torch

from pipeline.engines import cuda as cuda_module


class FakeStream:
    def __init__(self, device):
        self.device = device
        self.synchronized = 0

    def synchronize(self):
        self.synchronized += 1


class FakeCuda(cuda_module.CudaRuntime):
    """`count` fake GPUs, `current` the current one; records every device index it is asked about."""

    def __init__(self, count: int = 2, current: int = 0, name: str = "Fake GPU", oom_on_stream: bool = False):
        self.count, self.current, self.name, self.oom_on_stream = count, current, name, oom_on_stream
        self.indices: list[int] = []        # device indices queried, placed on, or given streams
        self.pinned: list[tuple] = []       # shapes of pinned buffers allocated
        self.releases = 0

    def available(self):
        return True

    def current_device(self):
        return self.current

    def device_count(self):
        return self.count

    def properties(self, index):
        self.indices.append(index)
        return f"{self.name} {index}", "9.0"

    def placement(self, device):
        self.indices.append(device.index)
        return torch.device("cpu")

    def new_stream(self, device):
        self.indices.append(device.index)
        if self.oom_on_stream:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return FakeStream(device)

    def use_stream(self, stream):
        return contextlib.nullcontext()

    def pinned_empty(self, shape, dtype):
        self.pinned.append(tuple(shape))
        return torch.empty(shape, dtype=dtype)

    def release_memory(self):
        self.releases += 1


class ConcurrencyProbe:
    """Wraps a program: counts calls and the most calls ever running at once."""

    def __init__(self, program, hold_s: float = 0.0):
        self.program, self.hold_s = program, hold_s
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self._count_lock = threading.Lock()

    def __call__(self, *inputs):
        with self._count_lock:
            self.calls += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.hold_s:
                time.sleep(self.hold_s)
            return self.program(*inputs)
        finally:
            with self._count_lock:
                self.active -= 1


class FakeCompiler:
    """A torch_tensorrt stand-in (2.13's compile signature unless `explicit_typing_arg`). `fail`: an exception `compile` raises; `gate`: an Event each
    compile waits for (to hold a background build); `hold_s`: programs sleep this long per call."""

    def __init__(self, version: str = "2.13.0", fail: BaseException | None = None,
                 gate: threading.Event | None = None, hold_s: float = 0.0, explicit_typing_arg: bool = False):
        self.version, self.fail, self.gate, self.hold_s = version, fail, gate, hold_s
        self.explicit_typing_arg = explicit_typing_arg      # compile's signature as in 2.6-2.12
        self.compiles: list[dict] = []
        self.loads: list[str] = []
        self.saves: list[str] = []
        self.probes: list[ConcurrencyProbe] = []

    def _compile(self, exported_program, options):
        device = options.get("device")
        gpu_id = device.index if isinstance(device, torch.device) else None
        if gpu_id is None:     # torch-tensorrt 2.13's runtime: torch.device(f"cuda:{gpu_id}")
            raise RuntimeError(f"Invalid device string: 'cuda:{gpu_id}'")
        if self.gate is not None and not self.gate.wait(60):
            raise RuntimeError("fake compile: gate never opened")
        if self.fail is not None:
            raise self.fail
        timing = options.get("timing_cache_path")
        self.compiles.append({**options, "gpu_id": gpu_id, "timing_cache_existed":
                              bool(timing) and __import__("os").path.exists(timing),
                              "input_dtypes": [t.dtype for t in options["arg_inputs"]]})
        if timing:
            with open(timing, "ab") as f:      # TensorRT appends what it timed
                f.write(b"timings;")
        return exported_program.module()

    def module(self) -> types.ModuleType:
        fake = self
        trt = _module("torch_tensorrt")
        trt.__version__ = self.version
        dynamo = types.ModuleType("torch_tensorrt.dynamo")
        if not self.explicit_typing_arg:
            def compile(exported_program, inputs=None, *, arg_inputs=None, device=None, min_block_size=5,
                        timing_cache_path="/tmp/torch_tensorrt_engine_cache/timing_cache.bin"):
                return fake._compile(exported_program, {"arg_inputs": arg_inputs, "device": device,
                                                         "min_block_size": min_block_size,
                                                         "timing_cache_path": timing_cache_path})
        else:
            def compile(exported_program, inputs=None, *, arg_inputs=None, device=None, min_block_size=5,
                        use_explicit_typing=False,
                        timing_cache_path="/tmp/torch_tensorrt_engine_cache/timing_cache.bin"):
                return fake._compile(exported_program, {"arg_inputs": arg_inputs, "device": device,
                                                         "min_block_size": min_block_size,
                                                         "use_explicit_typing": use_explicit_typing,
                                                         "timing_cache_path": timing_cache_path})
        dynamo.compile = compile
        trt.dynamo = dynamo

        def save(module, file_path, *, arg_inputs=None, output_format="exported_program", retrace=True):
            fake.saves.append(str(file_path))
            torch.export.save(torch.export.export(module, tuple(arg_inputs)), file_path)

        class Loaded:
            def __init__(self, exported):
                self.exported = exported

            def module(self):
                probe = ConcurrencyProbe(self.exported.module(), fake.hold_s)
                fake.probes.append(probe)
                return probe

        def load(file_path):
            fake.loads.append(str(file_path))
            return Loaded(torch.export.load(file_path))

        trt.save, trt.load = save, load
        return trt


def _module(name: str) -> types.ModuleType:
    # with a spec: torch._dynamo's import-time skip list calls importlib.util.find_spec on these names
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    return module


def tensorrt_module(version: str = "10.13.0") -> types.ModuleType:
    module = _module("tensorrt")
    module.__version__ = version
    return module


class BrokenWheelFinder(importlib.abc.MetaPathFinder):
    """Makes `import torch_tensorrt` fail the way a wheel built for another torch/CUDA does."""

    def __init__(self, message: str = "libnvinfer.so.10: cannot open shared object file: No such file or directory"):
        self.message = message

    def find_spec(self, name, path=None, target=None):
        if name == "torch_tensorrt":
            raise ImportError(self.message)
        return None


def install(monkeypatch, compiler: FakeCompiler, cuda: cuda_module.CudaRuntime | None = None):
    """Put the fakes in place for one test (undone by monkeypatch)."""
    monkeypatch.setitem(sys.modules, "torch_tensorrt", compiler.module())
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt_module())
    if cuda is not None:
        monkeypatch.setattr(cuda_module, "CUDA", cuda)
    import pipeline.engines as engines
    monkeypatch.setattr(engines, "NVIDIA_DEVICE_NODES", ("/",))     # a path that exists: "driver present"
    return compiler


def install_globally(compiler: FakeCompiler, cuda: cuda_module.CudaRuntime | None = None):
    """The same for a fresh process (no monkeypatch there)."""
    sys.modules["torch_tensorrt"] = compiler.module()
    sys.modules["tensorrt"] = tensorrt_module()
    if cuda is not None:
        cuda_module.CUDA = cuda
    import pipeline.engines as engines
    engines.NVIDIA_DEVICE_NODES = ("/",)
    return compiler
