"""TensorRT programs compiled with torch-tensorrt from a bundle's folded model, cached on disk.

Precision follows TensorRT's strongly typed networks (TensorRT 10.x deprecated weak typing;
torch-tensorrt's `use_explicit_typing=True`): the precision of every layer is written into
the graph itself rather than chosen by builder flags. For "fp16" the folded model is cast to
half precision and every LayerNorm is replaced by one that computes in float32 (its input is
cast up and its result cast back), so the ViT's normalisation statistics never lose precision;
inputs and outputs stay float32 at the program boundary.

One static-shape program is compiled per batch size (batch 1 and the tracks' batch sizes);
each is cached as `BUNDLE/model.trt-cache/<key>.ep` (torch_tensorrt.save / torch_tensorrt.load)
with a `<key>.json` beside it listing what the key was made of. The key hashes GPU name,
compute capability, TensorRT and torch-tensorrt versions, the bundle's content hash, input
shapes and precision, so a program is rebuilt only when one of them changes.

Everything CUDA/TensorRT is imported inside the functions: this module imports without them.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.errors import BackendUnavailable, BundleError

from pipeline.bundle import Bundle

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32")
DEFAULT_BATCH_SIZES = (1, 2, 4, 8)
CACHE_DIR_NAME = "model.trt-cache"     # *.trt-cache/ is git-ignored
INSTALL_HINT = "pip install hagview[tensorrt] (or scripts/install_tensorrt.sh)"


def unavailable_reason() -> str | None:
    """Why TensorRT cannot run here, or None (cheap: no compilation)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "CUDA is not available (torch.cuda.is_available() is False)"
    if importlib.util.find_spec("torch_tensorrt") is None:
        return f"torch_tensorrt is not installed: {INSTALL_HINT}"
    if importlib.util.find_spec("tensorrt") is None:
        return f"tensorrt is not installed: {INSTALL_HINT}"
    return None


def require_tensorrt() -> None:
    reason = unavailable_reason()
    if reason:
        raise BackendUnavailable(f"tensorrt: {reason}")


def cache_key(fields: Mapping[str, object]) -> str:
    """Stable file-name-safe key of the fields (sorted JSON, sha256, 24 hex digits)."""
    text = json.dumps(dict(fields), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_fields(bundle: Bundle, shapes: Mapping[str, Sequence[int]], precision: str,
                 device: str = "cuda") -> dict[str, object]:
    """Everything a compiled program depends on (needs CUDA and torch-tensorrt)."""
    import tensorrt
    import torch
    import torch_tensorrt

    index = torch.device(device).index or 0
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu": torch.cuda.get_device_name(index),
            "compute_capability": f"{major}.{minor}",
            "tensorrt": tensorrt.__version__,
            "torch_tensorrt": torch_tensorrt.__version__,
            "torch": torch.__version__,
            "bundle": bundle.content_hash,
            "shapes": {name: list(shape) for name, shape in shapes.items()},
            "precision": precision}


def _typed_for_precision(model, precision: str):
    """The folded model with its precision written into the graph (see module docstring)."""
    import torch
    from torch import nn

    class Float32LayerNorm(nn.Module):
        """LayerNorm that computes in float32 whatever dtype it is given."""

        def __init__(self, norm: nn.LayerNorm):
            super().__init__()
            self.norm = copy.deepcopy(norm).float()

        def forward(self, x):
            return self.norm(x.float()).to(x.dtype)

    class TypedProgram(nn.Module):
        """Positional float32 inputs in, float32 outputs out, `dtype` in between."""

        def __init__(self, model, input_names, output_names, dtype):
            super().__init__()
            self.model, self.input_names, self.output_names, self.dtype = model, input_names, output_names, dtype

        def forward(self, *inputs):
            outputs = self.model({n: x.to(self.dtype) for n, x in zip(self.input_names, inputs)})
            return tuple(outputs[n].float() for n in self.output_names)

    model = copy.deepcopy(model).eval()
    dtype = torch.float16 if precision == "fp16" else torch.float32
    if precision == "fp16":
        model = model.half()
        for parent in list(model.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, nn.LayerNorm):
                    setattr(parent, child_name, Float32LayerNorm(child))
    return TypedProgram(model, tuple(model.input_names), tuple(model.output_names), dtype)


def compile_program(model, shapes: Mapping[str, Sequence[int]], precision: str, device: str = "cuda"):
    """Compile `model` (folded, float32) for static `shapes` with explicit typing."""
    import torch
    import torch_tensorrt

    if precision not in PRECISIONS:
        raise BundleError(f"tensorrt precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    program = _typed_for_precision(model, precision).to(device)
    inputs = tuple(torch.randn(*shape, device=device) for shape in shapes.values())
    with torch.no_grad():
        exported = torch.export.export(program, inputs)
        compiled = torch_tensorrt.dynamo.compile(
            exported, arg_inputs=list(inputs), use_explicit_typing=True, min_block_size=1,
            device=torch.device(device))
    return compiled, inputs


class ProgramCache:
    """Compiled programs for one bundle, keyed as described in the module docstring."""

    def __init__(self, bundle: Bundle, precision: str = "fp16", device: str = "cuda",
                 cache_dir: str | Path | None = None):
        if precision not in PRECISIONS:
            raise BundleError(f"tensorrt precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        self.bundle = bundle
        self.precision = precision
        self.device = device
        self.cache_dir = Path(cache_dir) if cache_dir else bundle.path / CACHE_DIR_NAME
        self.builds = 0        # programs compiled (not loaded) by this cache object
        self._model = None

    def shapes_for(self, batch: int) -> dict[str, tuple[int, ...]]:
        return {name: self.bundle.example_shape(batch, name) for name in self.bundle.input_names}

    def key_for(self, batch: int) -> tuple[str, dict]:
        fields = cache_fields(self.bundle, self.shapes_for(batch), self.precision, self.device)
        return cache_key(fields), fields

    def path_for(self, batch: int) -> Path:
        return self.cache_dir / f"{self.key_for(batch)[0]}.ep"

    def load_or_build(self, batch: int):
        """The compiled program for `batch`, from the cache when its key is there."""
        import torch_tensorrt

        from pipeline.fsutil import write_json_atomic

        key, fields = self.key_for(batch)
        path = self.cache_dir / f"{key}.ep"
        if path.is_file():
            try:
                program = torch_tensorrt.load(str(path)).module()
                log.info("tensorrt: loaded cached program %s (batch %d, %s)", path.name, batch, self.precision)
                return program
            except Exception as exc:  # a stale or truncated cache entry is rebuilt, not fatal
                log.warning("tensorrt: cached program %s unusable (%s); rebuilding", path, exc)
        if self._model is None:
            self._model = self.bundle.build_torch_model(device="cpu")
        log.info("tensorrt: building %s program for %s, batch %d (first run on this GPU; this takes a while)",
                 self.precision, self.bundle.path.name, batch)
        start = time.perf_counter()
        compiled, inputs = compile_program(self._model, self.shapes_for(batch), self.precision, self.device)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # written under a temporary name (same ".ep" suffix) and renamed: a crash leaves no torn cache file
        tmp = self.cache_dir / f".{key}.tmp-{os.getpid()}.ep"
        try:
            torch_tensorrt.save(compiled, str(tmp), arg_inputs=list(inputs))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        write_json_atomic(path.with_suffix(".json"), {"key": key, **fields,
                                                       "build_seconds": round(time.perf_counter() - start, 2)})
        self.builds += 1
        log.info("tensorrt: built %s in %.1f s, cached as %s", self.bundle.path.name,
                 time.perf_counter() - start, path)
        return torch_tensorrt.load(str(path)).module()


def prebuild(bundle: Bundle, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, precision: str = "fp16",
             device: str = "cuda") -> list[Path]:
    """Compile (or find cached) programs for every batch size; returns their cache files."""
    require_tensorrt()
    cache = ProgramCache(bundle, precision=precision, device=device)
    paths = []
    for batch in sorted(set(int(b) for b in batch_sizes)):
        cache.load_or_build(batch)
        paths.append(cache.path_for(batch))
    return paths
