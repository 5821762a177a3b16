"""Hard-attention gates (method.md, "The gate") and the weight surgery that folds them away.

A gate is one learnable logit per channel; the feature map is multiplied channel-wise by
`sigmoid(logit)`. Each channel is weighted on its own (no softmax), so one channel's weight
never takes from another's.

Gate parameters are found through the `Gate` module type (see `gate_parameters`), so a
trainer splits the two Gradient Routing groups with `model.gate_parameters()` /
`model.main_parameters()` and never inspects layer types itself.

At inference `sigmoid(logit)` is a constant, so the product can be moved into a neighbouring
linear map. The `scale_*_` helpers do that in place; they are exact in exact arithmetic and
within float rounding in fp32.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn


class Gate(nn.Module):
    """Multiply a tensor channel-wise by `sigmoid(logit)`.

    `channel_dim` is the axis holding the channels: 1 for NCHW feature maps and (N, C)
    vectors, -1 for (N, tokens, C) token sequences.
    """

    def __init__(self, channels: int, channel_dim: int = 1) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"Gate needs at least one channel, got {channels}")
        self.channels = int(channels)
        self.channel_dim = int(channel_dim)
        self.logit = nn.Parameter(torch.empty(self.channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Xavier-normal on a (1, C) view, as the reference does: std = sqrt(2 / (C + 1)) with
        # the sigmoid gain (1.0), so sigmoid(logit) starts near 0.5, away from saturation.
        with torch.no_grad():
            nn.init.xavier_normal_(self.logit.view(1, self.channels),
                                   gain=nn.init.calculate_gain("sigmoid"))

    def scale(self) -> torch.Tensor:
        """The per-channel factors `sigmoid(logit)`, shape (C,)."""
        return torch.sigmoid(self.logit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = self.channel_dim % x.dim()
        shape = [1] * x.dim()
        shape[dim] = self.channels
        return x * self.scale().to(x.dtype).view(shape)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, channel_dim={self.channel_dim}"


def make_gate(channels: int, enabled: bool, channel_dim: int = 1) -> nn.Module:
    """A `Gate`, or `nn.Identity` for the gate-free baseline (same state-dict keys otherwise)."""
    return Gate(channels, channel_dim) if enabled else nn.Identity()


def gate_modules(module: nn.Module) -> Iterator[tuple[str, Gate]]:
    for name, sub in module.named_modules():
        if isinstance(sub, Gate):
            yield name, sub


def named_gate_parameters(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    for name, gate in gate_modules(module):
        yield (f"{name}.logit" if name else "logit"), gate.logit


def gate_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    for _, param in named_gate_parameters(module):
        yield param


def main_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """Every parameter that is not a gate logit (the main Gradient Routing group)."""
    gate_ids = {id(p) for p in gate_parameters(module)}
    for param in module.parameters():
        if id(param) not in gate_ids:
            yield param


def gate_scale(gate: nn.Module) -> torch.Tensor | None:
    """`sigmoid(logit)` detached, or None for an identity (gate-free) position."""
    if isinstance(gate, Gate):
        return gate.scale().detach()
    return None


# ---- folding helpers: multiply a per-channel constant into the weights that read it ----

@torch.no_grad()
def scale_conv_input_channels_(conv: nn.Conv2d, scale: torch.Tensor) -> None:
    """Make `conv(x)` equal the old `conv(x * scale[c])`: scale input-channel slices of the weight.

    Exact because a convolution is linear in its input and zero padding stays zero when scaled;
    a bias is untouched (it does not depend on the input).
    """
    if conv.groups != 1:
        raise ValueError("folding a channel scale into a grouped convolution is not supported")
    if scale.numel() != conv.in_channels:
        raise ValueError(f"scale has {scale.numel()} entries, conv has {conv.in_channels} input channels")
    conv.weight.mul_(scale.to(conv.weight).view(1, -1, 1, 1))


@torch.no_grad()
def scale_linear_columns_(linear: nn.Linear, scale: torch.Tensor) -> None:
    """Make `linear(x)` equal the old `linear(x * scale)`: scale the weight's input columns."""
    if scale.numel() != linear.in_features:
        raise ValueError(f"scale has {scale.numel()} entries, linear has {linear.in_features} inputs")
    linear.weight.mul_(scale.to(linear.weight).view(1, -1))


@torch.no_grad()
def scale_linear_outputs_(linear: nn.Linear, scale: torch.Tensor) -> None:
    """Make `linear(x)` equal the old `scale * linear(x)`: scale the weight's rows and the bias."""
    if scale.numel() != linear.out_features:
        raise ValueError(f"scale has {scale.numel()} entries, linear has {linear.out_features} outputs")
    linear.weight.mul_(scale.to(linear.weight).view(-1, 1))
    if linear.bias is not None:
        linear.bias.mul_(scale.to(linear.bias))
