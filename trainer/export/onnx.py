"""ONNX export of a (folded) model, graph checks, and numeric parity against PyTorch.

Models in this project take a dict of named input tensors and return a dict of named
outputs; ONNX wants positional inputs and outputs, so export goes through a small adapter
that fixes their order to `model.input_names` / `model.output_names`. The ONNX input and
output names are exactly those names, and the batch axis is dynamic.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from pipeline.errors import BundleError

log = logging.getLogger(__name__)

MIN_OPSET = 18
DEFAULT_OPSET = 18
EXPORTERS = ("dynamo", "legacy")

# onnxruntime (fp32) against the PyTorch model it was exported from: different convolution
# and GEMM kernels sum in different orders, which costs a few ulps per layer.
PARITY_RTOL = 1e-4
PARITY_ATOL = 1e-4


class PositionalAdapter(nn.Module):
    """Calls a dict-in/dict-out model with positional tensors, returning a tuple of outputs."""

    def __init__(self, model: nn.Module, input_names: Sequence[str], output_names: Sequence[str]):
        super().__init__()
        self.model = model
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(dict(zip(self.input_names, inputs)))
        return tuple(outputs[name] for name in self.output_names)


def model_io_names(model: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        return tuple(model.input_names), tuple(model.output_names)
    except AttributeError:
        raise BundleError(f"{type(model).__name__}: model has no input_names/output_names; "
                          "cannot name the ONNX graph's inputs and outputs") from None


def stream_channels(input_names: Sequence[str]) -> dict[str, int]:
    """Input channels per stream name, as the models define them (depth 1, images 3)."""
    try:
        from trainer.models.base import STREAM_CHANNELS
    except ImportError:
        STREAM_CHANNELS = {}
    return {name: int(STREAM_CHANNELS.get(name, 3)) for name in input_names}


def example_inputs(input_names: Sequence[str], input_size: int | Sequence[int], batch: int = 2,
                   channels: Mapping[str, int] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random NCHW float32 inputs, one per stream (deterministic for a given seed).

    `input_size` is a side length or (width, height).
    """
    width, height = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    channels = channels or stream_channels(input_names)
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(batch, channels[name], height, width, generator=generator)
            for name in input_names}


def export_onnx(model: nn.Module, path: str | Path, inputs: Mapping[str, torch.Tensor],
                opset: int = DEFAULT_OPSET, exporter: str = "dynamo") -> Path:
    """Export `model` (eval mode, CPU) to `path` with a dynamic batch axis; check the graph.

    `exporter="dynamo"` (torch.export based, the default) constant-folds and names
    initialisers after the parameters; `"legacy"` is the TorchScript exporter, kept because it
    is much faster for tests and as a fallback.
    """
    if opset < MIN_OPSET:
        raise BundleError(f"opset {opset}: bundles need ONNX opset {MIN_OPSET} or later")
    if exporter not in EXPORTERS:
        raise BundleError(f"exporter {exporter!r}: expected one of {', '.join(EXPORTERS)}")
    path = Path(path)
    input_names, output_names = model_io_names(model)
    missing = [n for n in input_names if n not in inputs]
    if missing:
        raise BundleError(f"example inputs lack {', '.join(missing)} (model wants {', '.join(input_names)})")
    adapter = PositionalAdapter(model, input_names, output_names).eval()
    args = tuple(inputs[n].detach().cpu().float() for n in input_names)
    with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter_logs():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=4096)
            # the exporter reports progress on stdout; library code stays quiet
            with contextlib.redirect_stdout(io.StringIO()):
                program = torch.onnx.export(
                    adapter, args, dynamo=True, opset_version=opset,
                    input_names=list(input_names), output_names=list(output_names),
                    # forward(*inputs) is one varargs entry, so its shapes nest one level
                    dynamic_shapes=(tuple({0: batch} for _ in input_names),),
                    external_data=False, verbose=False)
            program.save(str(path))
        else:
            axes = {n: {0: "batch"} for n in (*input_names, *output_names)}
            torch.onnx.export(adapter, args, str(path), dynamo=False, opset_version=opset,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=axes, do_constant_folding=True)
    check_onnx(path, input_names, output_names, opset)
    return path


@contextlib.contextmanager
def _quiet_exporter_logs():
    """The ONNX exporter's optimiser logs every pass at INFO; keep warnings and errors only."""
    names = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def check_onnx(path: str | Path, input_names: Sequence[str], output_names: Sequence[str],
               min_opset: int = MIN_OPSET) -> None:
    """onnx.checker plus the contract: names, opset, a dynamic (symbolic) batch axis."""
    import onnx

    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises several unrelated types
        raise BundleError(f"{path}: ONNX check failed: {str(exc).splitlines()[0]}") from None
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < min_opset:
        raise BundleError(f"{path}: ONNX opset {opset} is older than {min_opset}")
    graph_inputs = [i.name for i in proto.graph.input
                    if i.name not in {init.name for init in proto.graph.initializer}]
    graph_outputs = [o.name for o in proto.graph.output]
    if graph_inputs != list(input_names):
        raise BundleError(f"{path}: ONNX inputs {graph_inputs} differ from {list(input_names)}")
    if graph_outputs != list(output_names):
        raise BundleError(f"{path}: ONNX outputs {graph_outputs} differ from {list(output_names)}")
    for value in proto.graph.input:
        if value.name in graph_inputs:
            dim0 = value.type.tensor_type.shape.dim[0]
            if dim0.HasField("dim_value"):
                raise BundleError(f"{path}: input {value.name!r} has a fixed batch of {dim0.dim_value}; "
                                  "bundles need a dynamic batch axis")


def gate_operations(path_or_proto) -> list:
    """Nodes of an ONNX graph that apply a gate: what folding must remove.

    Each applied gate is one `Mul` by a per-channel constant: an initialiser of more than one
    element (the dynamo exporter folds `sigmoid(g)` into one), or `Sigmoid` of an initialiser
    reached through shape/type-only ops (the legacy exporter). Those `Sigmoid` nodes are
    returned too. Scalar constants (attention scale, the GELU formula) are not gates;
    BatchNorm is exported folded into Conv or as its own op.
    """
    import onnx
    from onnx import numpy_helper

    proto = path_or_proto if isinstance(path_or_proto, onnx.ModelProto) else onnx.load(str(path_or_proto))
    graph = proto.graph
    sizes = {init.name: int(np.prod(init.dims)) if len(init.dims) else 1 for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    sizes[node.output[0]] = int(numpy_helper.to_array(attribute.t).size)
    # follow shape-only ops so that Sigmoid(g) -> Reshape -> Mul still counts as constant
    constant_from_gate: set[str] = set()
    found = []
    for node in graph.node:
        if node.op_type == "Sigmoid" and node.input[0] in sizes:
            found.append(node)
            constant_from_gate.add(node.output[0])
        elif node.op_type in ("Reshape", "Unsqueeze", "Expand", "Cast", "Identity", "Flatten") \
                and node.input and node.input[0] in constant_from_gate:
            constant_from_gate.add(node.output[0])
        elif node.op_type == "Mul" and any(
                (name in sizes and sizes[name] > 1) or name in constant_from_gate for name in node.input):
            found.append(node)
    return found


def onnx_session(path: str | Path, threads: int | None = None):
    """A CPU onnxruntime session with every graph optimisation on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def max_relative_error(reference: np.ndarray, other: np.ndarray) -> float:
    scale = max(float(np.abs(reference).max(initial=0.0)), 1e-12)
    return float(np.abs(reference - other).max(initial=0.0)) / scale


def verify_onnx_parity(model: nn.Module, path: str | Path, inputs: Mapping[str, torch.Tensor],
                       rtol: float = PARITY_RTOL, atol: float = PARITY_ATOL,
                       expected: Mapping[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Run `path` in onnxruntime and `model` in PyTorch on `inputs`; raise BundleError unless
    every output satisfies |onnx - torch| <= atol + rtol * |torch|. Returns max abs error per output.
    `expected` are the model's outputs on `inputs` when already computed.
    """
    input_names, output_names = model_io_names(model)
    if expected is None:
        with torch.no_grad():
            expected = model.eval()(dict(inputs))
    expected = {k: v.detach().cpu().numpy() for k, v in expected.items()}
    session = onnx_session(path)
    feeds = {n: inputs[n].detach().cpu().numpy().astype(np.float32) for n in input_names}
    got = dict(zip(output_names, session.run(list(output_names), feeds)))
    errors = {}
    for name in output_names:
        if got[name].shape != expected[name].shape:
            raise BundleError(f"{path}: output {name!r} has shape {got[name].shape} in onnxruntime "
                              f"but {expected[name].shape} in PyTorch")
        errors[name] = float(np.abs(got[name] - expected[name]).max(initial=0.0))
        if not np.allclose(got[name], expected[name], rtol=rtol, atol=atol):
            raise BundleError(f"{path}: onnxruntime output {name!r} differs from PyTorch by up to "
                              f"{errors[name]:.3g} (tolerance atol={atol:g} + rtol={rtol:g}*|x|)")
    return errors
