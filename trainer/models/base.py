"""What every hagview sizer model shares: named inputs, named outputs, heads and gate access.

Calling convention (design.md): `model({"rgb": x, "mask": y})` returns a dict of named
tensors. For ONNX export the same forward also takes the streams as positional tensors in
`model.input_names` order: `model(rgb, mask)`; outputs come back in `model.output_names`
order (dict insertion order), so `torch.onnx.export(model, (rgb, mask),
input_names=list(model.input_names), output_names=list(model.output_names))` works as is.
Keyword tensors work too (`model(rgb=x, mask=y)`), which is how `torch.onnx.export(model,
(inputs_dict,), ...)` and `torch.export` with `kwargs=` pass a trailing dict.
"""
from __future__ import annotations

import copy
from typing import Iterator, Mapping

import torch
from torch import nn

from pipeline.sizeclass import MAX_SIZE_MM, MIN_SIZE_MM
from .gates import gate_parameters, main_parameters, named_gate_parameters

# Input channels per stream: RGB crop, box-masked RGB frame, single-channel depth map.
STREAM_CHANNELS = {"rgb": 3, "mask": 3, "depth": 1}
HEAD_KINDS = ("regression", "classification", "both")

# The regression output is an affine map of a unit-scale linear output onto the target
# range [0.5, 20] mm (the reference scales its targets to [-1, 1] for the same reason:
# a freshly initialised head then predicts mid-range sizes and gradients are well scaled).
SIZE_CENTER_MM = (MAX_SIZE_MM + MIN_SIZE_MM) / 2.0
SIZE_HALF_RANGE_MM = (MAX_SIZE_MM - MIN_SIZE_MM) / 2.0


def check_streams(streams, allowed=tuple(STREAM_CHANNELS)) -> tuple[str, ...]:
    streams = tuple(streams)
    if not streams:
        raise ValueError("streams must name at least one input stream")
    unknown = [s for s in streams if s not in allowed]
    if unknown:
        raise ValueError(f"unknown input stream {unknown[0]!r}; known streams: {', '.join(allowed)}")
    if len(set(streams)) != len(streams):
        raise ValueError(f"streams has a duplicate: {list(streams)}")
    return streams


def head_output_names(head: str) -> tuple[str, ...]:
    if head == "regression":
        return ("size_mm",)
    if head == "classification":
        return ("logits",)
    if head == "both":
        return ("size_mm", "logits")
    raise ValueError(f"head must be one of {', '.join(HEAD_KINDS)}, got {head!r}")


class SizeHead(nn.Module):
    """Output layer(s): `size` (N,1) in mm, and/or `classifier` (N,C) logits."""

    def __init__(self, in_features: int, head: str = "regression", num_classes: int = 3) -> None:
        super().__init__()
        self.output_names = head_output_names(head)
        if "logits" in self.output_names and num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 for a classification head, got {num_classes}")
        self.size = nn.Linear(in_features, 1) if "size_mm" in self.output_names else None
        self.classifier = nn.Linear(in_features, num_classes) if "logits" in self.output_names else None

    def output_layers(self) -> list[nn.Linear]:
        return [layer for layer in (self.size, self.classifier) if layer is not None]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.size is not None:
            out["size_mm"] = SIZE_CENTER_MM + SIZE_HALF_RANGE_MM * self.size(x)
        if self.classifier is not None:
            out["logits"] = self.classifier(x)
        return out


class HagModel(nn.Module):
    """Base of the registered models: named inputs/outputs, gate groups, folding template.

    Subclasses set `architecture`, `init_kwargs`, `input_names`, `output_names` in their
    constructor, accept `gates: bool`, and implement `_fold_gates_in_place()` which moves
    every gate into neighbouring weights and replaces it by `nn.Identity`.
    """

    architecture: str = ""
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    init_kwargs: dict = {}

    # ---- inputs ----
    def gather_inputs(self, inputs, more: tuple, named: dict | None = None) -> dict[str, torch.Tensor]:
        """Accept a dict of named tensors, keyword tensors, or positional tensors in `input_names` order."""
        if named:
            if inputs is not None or more:
                raise TypeError("pass inputs either by name or by position, not both")
            inputs = named
        if isinstance(inputs, Mapping):
            if more:
                raise TypeError("pass either one dict of named inputs or positional tensors, not both")
            missing = [name for name in self.input_names if name not in inputs]
            if missing:
                raise KeyError(f"{self.architecture}: input {missing[0]!r} is missing "
                               f"(expects {', '.join(self.input_names)}; got {', '.join(inputs) or 'nothing'})")
            return {name: inputs[name] for name in self.input_names}
        tensors = (inputs, *more)
        if len(tensors) != len(self.input_names):
            raise TypeError(f"{self.architecture}: expected {len(self.input_names)} input tensors "
                            f"({', '.join(self.input_names)}), got {len(tensors)}")
        return dict(zip(self.input_names, tensors))

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """Zero tensors in `input_names` order, shaped as the model expects (for export/tracing)."""
        device = next(self.parameters()).device
        size = self.input_size
        return tuple(torch.zeros(batch, STREAM_CHANNELS[s], size, size, device=device) for s in self.input_names)

    def dynamic_batch_shapes(self, batch_dim) -> tuple:
        """`dynamic_shapes` for `torch.onnx.export(..., dynamo=True)` / `torch.export` with the
        inputs passed positionally: forward is `(inputs, *more_inputs)`, hence the nesting."""
        first = {0: batch_dim}
        return (first, tuple({0: batch_dim} for _ in self.input_names[1:]))

    # ---- gate groups (Gradient Routing) ----
    def gate_parameters(self) -> Iterator[nn.Parameter]:
        return gate_parameters(self)

    def named_gate_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return named_gate_parameters(self)

    def main_parameters(self) -> Iterator[nn.Parameter]:
        return main_parameters(self)

    @torch.no_grad()
    def gate_values(self) -> dict[str, torch.Tensor]:
        """`sigmoid(logit)` per gate, keyed by gate parameter name (for reports)."""
        return {name: torch.sigmoid(p).detach().cpu() for name, p in self.named_gate_parameters()}

    # ---- folding ----
    def _fold_gates_in_place(self) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def fold_gates(self) -> "HagModel":
        """A gate-free copy computing the same function (exact folding; fp32 within ~1e-6).

        The copy is an instance of the same class built with `gates=False` (the baseline
        architecture), so its `init_kwargs` rebuild it through the registry and its state
        dict is the folded weights. `self` is left unchanged.
        """
        work = copy.deepcopy(self)
        work._fold_gates_in_place()
        folded = type(self)(**{**self.init_kwargs, "gates": False})
        folded.load_state_dict(work.state_dict(), strict=True)
        reference = next(self.parameters())
        folded.to(device=reference.device, dtype=reference.dtype)
        folded.train(self.training)
        folded.folded_from_gates = any(True for _ in self.gate_parameters())
        return folded


def init_conv_bn_(model: nn.Module) -> None:
    """He (fan-out) init for every convolution, BatchNorm as the identity: torchvision's CNN init,
    used by the trunks trained from scratch."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
