"""TensorRT programs compiled with torch-tensorrt from a bundle's folded model, cached on disk.

Precision follows TensorRT's strongly typed networks (weak typing was deprecated in TensorRT 10
and removed in 11): the precision of every layer is written into the graph itself rather than
chosen by builder flags. For "fp16" the folded model is cast to half precision and every
LayerNorm is replaced by one that computes in float32 (its input is cast up and its result cast
back), so the ViT's normalisation statistics never lose precision; inputs and outputs stay
float32 at the program boundary; the output head (a model's `output_layers`) also computes in
float32, so sizes in mm keep float32 resolution. torch-tensorrt 2.6-2.12 is told so with
`use_explicit_typing=True`; 2.13 dropped the argument (always strongly typed), so it is passed
only where the installed `compile` has it.

One static-shape program is compiled per batch size (batch 1 and the tracks' batch sizes);
each is cached as `<cache dir>/<key>.pt2` (torch_tensorrt.save / torch_tensorrt.load; torch
2.13 expects the .pt2 suffix) with a `<key>.json` beside it listing what the key was made of.
The key hashes GPU name, compute capability, TensorRT and torch-tensorrt versions, the bundle's
content hash, input shapes and precision, so a program is rebuilt only when one of them
changes. The cache dir is `BUNDLE/model.trt-cache/`, or `$HAGVIEW_CACHE/tensorrt/`
(default `~/.cache/hagview/tensorrt/`) where the bundle directory cannot be written (a
read-only install). TensorRT's timing cache (kernel timings per GPU and TensorRT version) is
kept beside the programs, so the later batch sizes and rebuilds skip most of the tactic search.

The device is resolved once to `torch.device("cuda", N)`: torch-tensorrt turns an index-less
`torch.device("cuda")` into `Device(gpu_id=None)`, which its runtime cannot use.

Everything CUDA/TensorRT is imported inside the functions: this module imports without them.
All CUDA calls go through `pipeline.engines.cuda.CUDA`, the one seam CPU tests replace.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from pipeline.bundle import Bundle
from pipeline.engines import cuda
from pipeline.errors import BackendUnavailable, BundleError, describe_error

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32")
DEFAULT_BATCH_SIZES = (1, 2, 4, 8)
CACHE_DIR_NAME = "model.trt-cache"     # *.trt-cache/ is git-ignored
PROGRAM_SUFFIX = ".pt2"
CACHE_ENV = "HAGVIEW_CACHE"
INSTALL_HINT = "run scripts/install_tensorrt.sh (pip install hagview[tensorrt] matches torch 2.13 only)"
# arg_inputs came in 2.5 and use_explicit_typing in 2.6 (see the module docstring)
MIN_TORCH_TENSORRT = (2, 6)


def _major_minor(version: str) -> tuple[int, int]:
    parts = version.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


def import_torch_tensorrt():
    """torch_tensorrt, or BackendUnavailable with one line saying why it cannot be used."""
    try:
        import torch_tensorrt
    except ModuleNotFoundError as exc:
        if exc.name in ("torch_tensorrt", "tensorrt"):
            raise BackendUnavailable(f"tensorrt: {exc.name} is not installed: {INSTALL_HINT}") from None
        raise BackendUnavailable(f"tensorrt: torch_tensorrt does not import ({describe_error(exc)}): "
                                 f"{INSTALL_HINT}") from None
    except Exception as exc:  # a wheel built for another torch/CUDA fails with ImportError/OSError/...
        raise BackendUnavailable(f"tensorrt: torch_tensorrt does not import ({describe_error(exc)}): "
                                 f"{INSTALL_HINT}") from None
    import torch

    version = getattr(torch_tensorrt, "__version__", "0")
    if _major_minor(version) < MIN_TORCH_TENSORRT:
        raise BackendUnavailable(f"tensorrt: torch-tensorrt {version} is older than "
                                 f"{'.'.join(map(str, MIN_TORCH_TENSORRT))}: {INSTALL_HINT}")
    if _major_minor(version) != _major_minor(torch.__version__):
        raise BackendUnavailable(f"tensorrt: torch-tensorrt {version} does not match torch {torch.__version__} "
                                 f"(X.Y must be equal): {INSTALL_HINT}")
    return torch_tensorrt


def unavailable_reason() -> str | None:
    """Why TensorRT cannot run here, or None. Imports torch_tensorrt (only where CUDA exists):
    an installed package that does not import is as unusable as a missing one."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch is not installed"
    if not cuda.CUDA.available():
        return "CUDA is not available (torch.cuda.is_available() is False)"
    try:
        import_torch_tensorrt()
    except BackendUnavailable as exc:
        return str(exc).removeprefix("tensorrt: ")
    return None


def require_tensorrt() -> None:
    reason = unavailable_reason()
    if reason:
        raise BackendUnavailable(f"tensorrt: {reason}")


def cache_key(fields: Mapping[str, object]) -> str:
    """Stable file-name-safe key of the fields (sorted JSON, sha256, 24 hex digits)."""
    text = json.dumps(dict(fields), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def gpu_fields(device) -> dict[str, str]:
    """What a compiled program or a timing cache depends on besides the model."""
    import tensorrt
    import torch
    import torch_tensorrt

    name, capability = cuda.CUDA.properties(device.index)
    return {"gpu": name, "compute_capability": capability, "tensorrt": tensorrt.__version__,
            "torch_tensorrt": torch_tensorrt.__version__, "torch": torch.__version__}


def cache_fields(bundle: Bundle, shapes: Mapping[str, Sequence[int]], precision: str,
                 gpu: Mapping[str, str]) -> dict[str, object]:
    """Everything a compiled program depends on: `gpu_fields` and the model's."""
    return {**gpu, "bundle": bundle.content_hash,
            "shapes": {name: list(shape) for name, shape in shapes.items()}, "precision": precision}


def user_cache_dir() -> Path:
    """`$HAGVIEW_CACHE/tensorrt`, default `~/.cache/hagview/tensorrt`."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hagview"
    return Path(root).expanduser() / "tensorrt"


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError:
        return False
    return True


def typed_program(model, precision: str):
    """The folded model with its precision written into the graph (see module docstring):
    positional float32 inputs in bundle order, a tuple of float32 outputs."""
    import torch
    from torch import nn

    class Float32LayerNorm(nn.Module):
        """LayerNorm that computes in float32 whatever dtype it is given."""

        def __init__(self, norm: nn.LayerNorm):
            super().__init__()
            self.norm = copy.deepcopy(norm).float()

        def forward(self, x):
            return self.norm(x.float()).to(x.dtype)

    class Float32Head(nn.Module):
        """An output head (a module with `output_layers`, e.g. SizeHead) computed in float32: a
        size in mm held in fp16 moves in steps of 0.0156 mm above 16 mm, more than the 1e-2 mm
        the FP16 path must stay within; the head is one small Linear per output."""

        def __init__(self, head: nn.Module):
            super().__init__()
            self.head = copy.deepcopy(head).float()

        def forward(self, x):
            return self.head(x.float())

    class TypedProgram(nn.Module):
        """Positional float32 inputs in, float32 outputs out, `dtype` in between."""

        def __init__(self, model, input_names, output_names, dtype):
            super().__init__()
            self.model, self.input_names, self.output_names, self.dtype = model, input_names, output_names, dtype

        def forward(self, *inputs):
            outputs = self.model({n: x.to(self.dtype) for n, x in zip(self.input_names, inputs)})
            return tuple(outputs[n].float() for n in self.output_names)

    if precision not in PRECISIONS:
        raise BundleError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    model = copy.deepcopy(model).eval()
    dtype = torch.float16 if precision == "fp16" else torch.float32
    if precision == "fp16":
        model = model.half()
        for parent in list(model.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, nn.LayerNorm):
                    setattr(parent, child_name, Float32LayerNorm(child))
                elif callable(getattr(child, "output_layers", None)):
                    setattr(parent, child_name, Float32Head(child))
    return TypedProgram(model, tuple(model.input_names), tuple(model.output_names), dtype)


def compile_program(model, shapes: Mapping[str, Sequence[int]], precision: str, device,
                    timing_cache: Path | None = None):
    """Compile `model` (folded, float32) for static `shapes` on `device` (an indexed cuda device).
    Returns (compiled program, example inputs)."""
    import torch

    torch_tensorrt = import_torch_tensorrt()
    placement = cuda.CUDA.placement(device)
    program = typed_program(model, precision).to(placement)
    inputs = tuple(torch.randn(*shape, device=placement) for shape in shapes.values())
    options = {"arg_inputs": list(inputs), "min_block_size": 1, "device": device}
    accepted = inspect.signature(torch_tensorrt.dynamo.compile).parameters
    if "use_explicit_typing" in accepted:        # 2.6-2.12; 2.13 is always strongly typed
        options["use_explicit_typing"] = True
    if timing_cache is not None and "timing_cache_path" in accepted:
        options["timing_cache_path"] = str(timing_cache)
    with torch.no_grad():
        exported = torch.export.export(program, inputs)
        compiled = torch_tensorrt.dynamo.compile(exported, **options)
    return compiled, inputs


Progress = Callable[[str], None]


class ProgramCache:
    """Compiled programs for one bundle, keyed as described in the module docstring.

    `cache_dir` None: beside the bundle when that directory can be written, else the user cache;
    programs are looked up in both places.
    """

    def __init__(self, bundle: Bundle, precision: str = "fp16", device=None,
                 cache_dir: str | Path | None = None):
        if precision not in PRECISIONS:
            raise BundleError(f"tensorrt precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        self.bundle = bundle
        self.precision = precision
        self.device = cuda.resolve_device(device, "tensorrt")
        beside = bundle.path / CACHE_DIR_NAME
        if cache_dir is not None:
            self.cache_dir = Path(cache_dir)
            self.search_dirs = (self.cache_dir,)
        else:
            self.cache_dir = beside if _writable(beside) else user_cache_dir()
            self.search_dirs = tuple(dict.fromkeys((beside, user_cache_dir())))
            if self.cache_dir != beside:
                log.info("tensorrt: %s is not writable; caching programs in %s", beside, self.cache_dir)
        self.builds = 0        # programs compiled (not loaded) by this cache object
        self.build_seconds: list[float] = []
        self._model = None
        self._gpu = None

    def shapes_for(self, batch: int) -> dict[str, tuple[int, ...]]:
        return {name: self.bundle.example_shape(batch, name) for name in self.bundle.input_names}

    @property
    def gpu(self) -> dict[str, str]:
        if self._gpu is None:
            self._gpu = gpu_fields(self.device)
        return self._gpu

    def key_for(self, batch: int) -> tuple[str, dict]:
        fields = cache_fields(self.bundle, self.shapes_for(batch), self.precision, self.gpu)
        return cache_key(fields), fields

    def path_for(self, batch: int) -> Path:
        """Where the program for `batch` is (or will be written)."""
        key = self.key_for(batch)[0]
        found = self._find(key)
        return found or self.cache_dir / f"{key}{PROGRAM_SUFFIX}"

    def _find(self, key: str) -> Path | None:
        return next((d / f"{key}{PROGRAM_SUFFIX}" for d in self.search_dirs
                     if (d / f"{key}{PROGRAM_SUFFIX}").is_file()), None)

    @property
    def timing_cache_path(self) -> Path:
        """TensorRT's timing cache for this GPU and TensorRT version, beside the programs."""
        return self.cache_dir / f"timing-{cache_key(self.gpu)}.cache"

    def missing(self, batch_sizes: Sequence[int]) -> list[int]:
        """The batch sizes that have no cached program (each needs a build)."""
        return [b for b in sorted(set(batch_sizes)) if self._find(self.key_for(b)[0]) is None]

    def estimate_seconds(self) -> float | None:
        """Seconds one build takes: this object's last build, else the builds recorded in the cache."""
        if self.build_seconds:
            return self.build_seconds[-1]
        seen = []
        for directory in self.search_dirs:
            for record in directory.glob("*.json") if directory.is_dir() else ():
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    data = json.loads(record.read_text(encoding="utf-8"))
                    if data.get("bundle") == self.bundle.content_hash and data.get("precision") == self.precision:
                        seen.append(float(data["build_seconds"]))
        return max(seen) if seen else None

    def load_all(self, batch_sizes: Sequence[int], progress: Progress | None = None) -> dict[int, object]:
        """The programs for every batch size; builds what is missing, saying "building TensorRT
        engine i/n for <bundle>, ~N s" before each build."""
        sizes = sorted(set(int(b) for b in batch_sizes))
        to_build = self.missing(sizes)
        programs = {}
        for batch in sizes:
            step = None
            if batch in to_build:
                step = (to_build.index(batch) + 1, len(to_build))
            programs[batch] = self.load_or_build(batch, progress=progress, step=step)
        return programs

    def load_or_build(self, batch: int, progress: Progress | None = None, step: tuple[int, int] | None = None):
        """The compiled program for `batch`, from the cache when its key is there."""
        torch_tensorrt = import_torch_tensorrt()
        from pipeline.fsutil import write_json_atomic

        key, fields = self.key_for(batch)
        found = self._find(key)
        if found is not None:
            try:
                program = torch_tensorrt.load(str(found)).module()
                log.info("tensorrt: loaded cached program %s (batch %d, %s)", found.name, batch, self.precision)
                return program
            except Exception as exc:  # a stale or torn cache entry is rebuilt, not fatal
                log.warning("tensorrt: cached program %s unusable (%s); rebuilding", found, describe_error(exc))
        path = self.cache_dir / f"{key}{PROGRAM_SUFFIX}"
        estimate = self.estimate_seconds()
        index, total = step or (1, 1)
        message = (f"building TensorRT engine {index}/{total} for {self.bundle.path.name} "
                   f"({self.precision}, batch {batch}), "
                   + (f"~{estimate:.0f} s" if estimate else "first build on this GPU, about a minute"))
        log.info("tensorrt: %s", message)
        if progress is not None:
            progress(message)
        if self._model is None:
            self._model = self.bundle.build_torch_model(device="cpu")
        start = time.perf_counter()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        compiled, inputs = compile_program(self._model, self.shapes_for(batch), self.precision, self.device,
                                           timing_cache=self.timing_cache_path)
        # written under a temporary name (same suffix) and renamed: a crash leaves no torn cache file
        tmp = self.cache_dir / f".{key}.tmp-{os.getpid()}{PROGRAM_SUFFIX}"
        try:
            torch_tensorrt.save(compiled, str(tmp), arg_inputs=list(inputs))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        seconds = time.perf_counter() - start
        write_json_atomic(path.with_suffix(".json"), {"key": key, **fields, "build_seconds": round(seconds, 2)})
        self.builds += 1
        self.build_seconds.append(seconds)
        log.info("tensorrt: built %s batch %d in %.1f s, cached as %s", self.bundle.path.name, batch, seconds, path)
        return torch_tensorrt.load(str(path)).module()


def prebuild(bundle: Bundle, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, precision: str = "fp16",
             device=None, progress: Progress | None = None) -> list[Path]:
    """Compile (or find cached) programs for every batch size; returns their cache files."""
    require_tensorrt()
    cache = ProgramCache(bundle, precision=precision, device=device)
    cache.load_all(batch_sizes, progress=progress)
    return [cache.path_for(b) for b in sorted(set(int(b) for b in batch_sizes))]
