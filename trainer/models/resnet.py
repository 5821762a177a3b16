"""`hag_resnet18`: one ResNet-18 per input stream with hard-attention gates (method.md).

Per stream: conv1/bn1/maxpool, four residual stages, a gate on each stage output. Then global
average pooling, the streams' vectors concatenated, gate `L1`, `fc -> ReLU`, gate `L2`, and
the head. Module names inside a trunk follow torchvision's ResNet-18 (`conv1`, `bn1`,
`layer1.0.conv1`, `layer2.0.downsample.0`, ...) so ImageNet weights load by prefix.

`GatedResNetTrunk` is reusable on its own (the detector uses it): `forward_features(x)`
returns the four gated stage outputs; `fold_gates_()` folds stage gates 1-3 into the next
stage and hands back every stage's scale for the other readers of the stage outputs.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import ConfigError
from .base import STREAM_CHANNELS, HagModel, SizeHead, check_streams, head_output_names, init_conv_bn_
from .gates import (gate_scale, make_gate, scale_conv_input_channels_, scale_linear_columns_)

RESNET18_WIDTHS = (64, 128, 256, 512)
RESNET18_BLOCKS = (2, 2, 2, 2)


def scaled_width(channels: int, width_mult: float) -> int:
    return max(4, int(round(channels * width_mult)))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)

    @torch.no_grad()
    def fold_input_scale_(self, scale: torch.Tensor) -> None:
        """Make the block compute `old_block(x * scale)` by scaling its input convolutions.

        Only possible when the block has a downsample convolution: otherwise the identity
        shortcut reads the scaled input directly and no weight can absorb the factor.
        """
        if self.downsample is None:
            raise ValueError("cannot fold an input scale into a block whose shortcut is the identity")
        scale_conv_input_channels_(self.conv1, scale)
        scale_conv_input_channels_(self.downsample[0], scale)


class GatedResNetTrunk(nn.Module):
    """ResNet-18 feature extractor with a gate after each of the four stages."""

    def __init__(self, width_mult: float = 1.0, gates: bool = True, in_channels: int = 3) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        self.width_mult = float(width_mult)
        self.stage_channels = tuple(scaled_width(c, width_mult) for c in RESNET18_WIDTHS)
        stem = self.stage_channels[0]
        self.conv1 = nn.Conv2d(in_channels, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        previous = stem
        for index, (channels, blocks) in enumerate(zip(self.stage_channels, RESNET18_BLOCKS)):
            stride = 1 if index == 0 else 2
            layers = [BasicBlock(previous, channels, stride)]
            layers += [BasicBlock(channels, channels) for _ in range(blocks - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*layers))
            previous = channels
        self.stage_gates = nn.ModuleList(make_gate(c, gates) for c in self.stage_channels)
        self.out_channels = self.stage_channels[-1]
        self._init_weights()

    def _init_weights(self) -> None:
        init_conv_bn_(self)
        # Zero-init the last BN of each block so every block starts as the identity
        # (torchvision's zero_init_residual): trains faster from scratch.
        for module in self.modules():
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four gated stage outputs (strides 4, 8, 16, 32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for stage, gate in zip(self.stages(), self.stage_gates):
            x = gate(stage(x))
            features.append(x)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[-1]

    @torch.no_grad()
    def fold_gates_(self) -> list[torch.Tensor | None]:
        """Remove the stage gates in place; return each stage's scale (None where gate-free).

        Gates 1-3 are folded into the next stage's first block (conv1 and downsample conv;
        BatchNorm comes after those convolutions, so it sees the same values as before).
        Afterwards `forward_features` returns UNGATED stage outputs: every other reader of
        stage k's output (pooling + fc for the sizer, a neck for the detector) must fold
        `scales[k]` itself. Stage 4's scale is never folded here.
        """
        scales = [gate_scale(gate) for gate in self.stage_gates]
        for index in range(3):
            if scales[index] is not None:
                self.stages()[index + 1][0].fold_input_scale_(scales[index])
        self.stage_gates = nn.ModuleList(nn.Identity() for _ in self.stage_channels)
        return scales


class HagResNet18(HagModel):
    """Multi-stream ResNet-18 sizer with stage gates and gated fully connected layers."""

    architecture = "hag_resnet18"

    def __init__(
        self,
        streams: tuple[str, ...] = ("rgb", "mask"),
        input_size: int = 224,
        width_mult: float = 1.0,
        head: str = "regression",
        num_classes: int = 3,
        hidden: int = 128,
        gates: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        streams = check_streams(streams)
        if input_size < 32:
            raise ValueError(f"input_size must be at least 32 pixels for ResNet-18, got {input_size}")
        if hidden < 1:
            raise ValueError(f"hidden must be positive, got {hidden}")
        self.init_kwargs = dict(streams=list(streams), input_size=int(input_size),
                                width_mult=float(width_mult), head=head, num_classes=int(num_classes),
                                hidden=int(hidden), gates=bool(gates), dropout=float(dropout))
        self.input_names = streams
        self.output_names = head_output_names(head)
        self.input_size = int(input_size)
        self.backbones = nn.ModuleDict(
            {s: GatedResNetTrunk(width_mult, gates, STREAM_CHANNELS[s]) for s in streams})
        feature_dim = sum(b.out_channels for b in self.backbones.values())
        self.gate_l1 = make_gate(feature_dim, gates)
        self.fc = nn.Linear(feature_dim, hidden)
        self.relu = nn.ReLU()
        self.gate_l2 = make_gate(hidden, gates)
        self.dropout = nn.Dropout(dropout)
        self.head = SizeHead(hidden, head, num_classes)

    def forward(self, inputs=None, *more_inputs, **named_inputs) -> dict[str, torch.Tensor]:
        named = self.gather_inputs(inputs, more_inputs, named_inputs)
        pooled = [self.backbones[s](named[s]).mean(dim=(2, 3)) for s in self.input_names]
        x = self.gate_l1(torch.cat(pooled, dim=1))
        x = self.gate_l2(self.relu(self.fc(x)))
        return self.head(self.dropout(x))

    def _fold_gates_in_place(self) -> None:
        # Stage-4 gate commutes with average pooling, so it and L1 both scale the columns of
        # fc; L2 scales the columns of the output layer(s).
        column_scale = []
        for stream in self.input_names:
            trunk = self.backbones[stream]
            s4 = trunk.fold_gates_()[3]
            column_scale.append(s4 if s4 is not None else torch.ones(trunk.out_channels,
                                                                   device=self.fc.weight.device))
        column_scale = torch.cat(column_scale)
        l1 = gate_scale(self.gate_l1)
        if l1 is not None:
            column_scale = column_scale * l1
        scale_linear_columns_(self.fc, column_scale)
        l2 = gate_scale(self.gate_l2)
        if l2 is not None:
            for layer in self.head.output_layers():
                scale_linear_columns_(layer, l2)
        self.gate_l1 = nn.Identity()
        self.gate_l2 = nn.Identity()

    # ---- ImageNet weights (torchvision naming) ----
    def imagenet_state_from(self, source: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Map a torchvision ResNet-18 state dict onto every stream's trunk.

        Returns (target key -> tensor, unused source keys). The 1000-class `fc` is unused.
        A single-channel stream (depth) gets conv1 summed over the RGB filters, so a grey
        input replicated to three channels would give the same response.
        """
        if self.init_kwargs["width_mult"] != 1.0:
            raise ConfigError(f"ImageNet ResNet-18 weights need width_mult 1.0; this model has "
                              f"width_mult {self.init_kwargs['width_mult']}")
        mapped: dict[str, torch.Tensor] = {}
        used: set[str] = set()
        trunk_keys = set(next(iter(self.backbones.values())).state_dict())
        for key, tensor in source.items():
            if key not in trunk_keys:
                continue
            used.add(key)
            for stream, trunk in self.backbones.items():
                value = tensor
                if key == "conv1.weight" and trunk.conv1.in_channels != tensor.shape[1]:
                    if trunk.conv1.in_channels != 1:
                        raise ConfigError(f"conv1.weight has {tensor.shape[1]} input channels; stream "
                                          f"{stream!r} needs {trunk.conv1.in_channels}")
                    value = tensor.sum(dim=1, keepdim=True)
                mapped[f"backbones.{stream}.{key}"] = value
        unused = [k for k in source if k not in used]
        return mapped, unused
