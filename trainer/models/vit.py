"""`hag_vit_tiny`: ViT-Tiny whose residual branches are scaled by hard-attention gates.

In every block `x = x + sigmoid(g1) * Attn(LN(x))` and `x = x + sigmoid(g2) * MLP(LN(x))`
(the gates take LayerScale's place). Defaults are ViT-Tiny/16 at 384 px: patch 16, dim 192,
12 blocks, 3 heads. Module names follow timm (`patch_embed.proj`, `cls_token`, `pos_embed`,
`blocks.N.attn.qkv`, ...) so ImageNet weights load by name.

Several streams: their channels are concatenated before the patch embedding (one token
sequence, one patch projection over 3+3(+1) channels). This keeps the token count, and so the
cost of every block, the same as one stream; only the patch projection grows.
The head reads the class token after the final LayerNorm.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError
from .base import STREAM_CHANNELS, HagModel, SizeHead, check_streams, head_output_names
from .gates import gate_scale, make_gate, scale_linear_outputs_


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class GatedBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, gates: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.gate_attn = make_gate(dim, gates, channel_dim=-1)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gate_mlp = make_gate(dim, gates, channel_dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gate_attn(self.attn(self.norm1(x)))
        return x + self.gate_mlp(self.mlp(self.norm2(x)))

    @torch.no_grad()
    def fold_gates_(self) -> None:
        # g1 scales the attention output = rows and bias of the output projection;
        # g2 likewise for the MLP's second linear layer.
        s1, s2 = gate_scale(self.gate_attn), gate_scale(self.gate_mlp)
        if s1 is not None:
            scale_linear_outputs_(self.attn.proj, s1)
        if s2 is not None:
            scale_linear_outputs_(self.mlp.fc2, s2)
        self.gate_attn = nn.Identity()
        self.gate_mlp = nn.Identity()


class HagViT(HagModel):
    """Gated Vision Transformer sizer (ViT-Tiny/16 by default)."""

    architecture = "hag_vit_tiny"

    def __init__(
        self,
        streams: tuple[str, ...] = ("rgb",),
        input_size: int = 384,
        patch_size: int = 16,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        head: str = "regression",
        num_classes: int = 3,
        gates: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        streams = check_streams(streams)
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.init_kwargs = dict(streams=list(streams), input_size=int(input_size), patch_size=int(patch_size),
                                embed_dim=int(embed_dim), depth=int(depth), num_heads=int(num_heads),
                                mlp_ratio=float(mlp_ratio), head=head, num_classes=int(num_classes),
                                gates=bool(gates), dropout=float(dropout))
        self.input_names = streams
        self.output_names = head_output_names(head)
        self.input_size = int(input_size)
        self.patch_size = int(patch_size)
        self.grid = input_size // patch_size
        in_channels = sum(STREAM_CHANNELS[s] for s in streams)
        self.patch_embed = PatchEmbed(in_channels, patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid * self.grid, embed_dim))
        self.blocks = nn.Sequential(*[GatedBlock(embed_dim, num_heads, mlp_ratio, gates) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.head = SizeHead(embed_dim, head, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, inputs=None, *more_inputs, **named_inputs) -> dict[str, torch.Tensor]:
        named = self.gather_inputs(inputs, more_inputs, named_inputs)
        x = named[self.input_names[0]] if len(self.input_names) == 1 else \
            torch.cat([named[s] for s in self.input_names], dim=1)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            raise ValueError(f"{self.architecture} was built for {self.input_size}x{self.input_size} inputs, "
                             f"got {x.shape[-2]}x{x.shape[-1]}")
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(self.dropout(x[:, 0]))

    def _fold_gates_in_place(self) -> None:
        for block in self.blocks:
            block.fold_gates_()

    # ---- ImageNet weights (timm naming) ----
    def imagenet_state_from(self, source: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Map a timm ViT state dict onto this model: pos_embed resized to the input grid,
        the RGB patch filters spread over the concatenated streams; the classifier `head.*`
        (and anything else unknown) is returned as unused."""
        own = self.state_dict()
        mapped: dict[str, torch.Tensor] = {}
        unused: list[str] = []
        for key, tensor in source.items():
            if key not in own or key.startswith("head."):
                unused.append(key)
                continue
            if key == "pos_embed":
                tensor = resize_pos_embed(tensor, self.grid)
            elif key == "patch_embed.proj.weight":
                tensor = spread_patch_filters(tensor, self.input_names)
            if tensor.shape != own[key].shape:
                raise ConfigError(f"ImageNet ViT weight {key} has shape {tuple(tensor.shape)}, this model needs "
                                  f"{tuple(own[key].shape)} (embed_dim/depth/patch_size must match the file)")
            mapped[key] = tensor
        return mapped, unused


def spread_patch_filters(weight: torch.Tensor, streams: tuple[str, ...]) -> torch.Tensor:
    """RGB patch filters (D,3,p,p) -> filters over the concatenated streams.

    Each 3-channel stream gets the filters divided by the number of streams, a 1-channel
    stream gets their channel sum likewise divided, so identical images on every stream give
    the pretrained response.
    """
    if weight.shape[1] != 3:
        raise ConfigError(f"patch_embed.proj.weight has {weight.shape[1]} input channels, expected 3 (RGB)")
    parts = [weight if STREAM_CHANNELS[s] == 3 else weight.sum(dim=1, keepdim=True) for s in streams]
    return torch.cat(parts, dim=1) / len(streams)


def resize_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """Bicubic resize of a (1, 1+G*G, D) position table (class token first) to `grid`."""
    tokens = pos_embed.shape[1] - 1
    old_grid = int(math.isqrt(tokens))
    if old_grid * old_grid != tokens:
        raise ConfigError(f"pos_embed has {tokens} patch positions, which is not a square grid")
    if old_grid == grid:
        return pos_embed
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    dim = patches.shape[-1]
    patches = patches.reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False, antialias=True)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos_embed.dtype)
    return torch.cat([cls, patches], dim=1)
