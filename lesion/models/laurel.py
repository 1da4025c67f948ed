"""LAuReL, the Learned Augmented Residual Layer (Menghani et al., arXiv 2411.07501), for timm's ResNet blocks.

A residual block computes x' = act(f(x) + s(x)), with s the identity or the downsampling shortcut. LAuReL learns
how the two branches mix:

- `rw`    (RW, residual weights):  x' = act(alpha * f(x) + beta * s(x)), two learned scalars per block;
- `lr`    (LR, low rank):          x' = act(f(x) + s(x) + B A s(x)), A: C -> r and B: r -> C learned per block;
- `rw_lr` (both):                  x' = act(alpha * f(x) + beta * (s(x) + B A s(x))).

On convolutional feature maps the low-rank map acts on channels at every pixel (two bias-free 1x1 convolutions).
At initialisation alpha = beta = 1 and B = 0, so a wrapped block computes exactly (bit for bit) the function of the
original one and pretrained weights stay valid. Added parameters per block: 2 for RW, 2 C r for LR, 2 + 2 C r for both,
with C the block's output channels.

Only the blocks of trained stages are wrapped: a frozen block stays the plain timm block.
"""

from __future__ import annotations

import torch
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

VARIANTS = ("none", "rw", "lr", "rw_lr")


class Laurel(nn.Module):
    """The learned mixing of one block's branches (see the module docstring)."""

    def __init__(self, channels: int, weights: bool, rank: int | None) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(())) if weights else None
        self.beta = nn.Parameter(torch.ones(())) if weights else None
        self.down = nn.Conv2d(channels, rank, 1, bias=False) if rank else None  # A
        self.up = nn.Conv2d(rank, channels, 1, bias=False) if rank else None  # B
        if rank:
            nn.init.orthogonal_(self.down.weight)
            nn.init.zeros_(self.up.weight)

    def combine(self, branch: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        if self.up is not None:
            shortcut = shortcut + self.up(self.down(shortcut))
        if self.alpha is not None:
            return self.alpha * branch + self.beta * shortcut
        return branch + shortcut


class LaurelBottleneck(Bottleneck):
    """timm's Bottleneck with its residual addition replaced by `self.laurel.combine` (same parameter names)."""

    laurel: Laurel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        x = self.bn3(self.conv3(x))
        return self.act3(self.laurel.combine(self._finish_branch(x), self._shortcut(shortcut)))

    def _finish_branch(self, x: torch.Tensor) -> torch.Tensor:
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        return x

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) if self.downsample is not None else x


class LaurelBasicBlock(BasicBlock):
    """timm's BasicBlock (ResNet18/34) with its residual addition replaced by `self.laurel.combine`."""

    laurel: Laurel
    _finish_branch = LaurelBottleneck._finish_branch
    _shortcut = LaurelBottleneck._shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        x = self.bn2(self.conv2(x))
        return self.act2(self.laurel.combine(self._finish_branch(x), self._shortcut(shortcut)))


_WRAPPED = {Bottleneck: LaurelBottleneck, BasicBlock: LaurelBasicBlock}


def apply_laurel(net: nn.Module, variant: str, rank: int = 16, model_name: str = "") -> list[str]:
    """Wrap the trainable ResNet blocks of `net` in place with a LAuReL variant; returns the wrapped block names."""
    if variant not in VARIANTS:
        raise ValueError(f"backbone.laurel must be one of {VARIANTS}, got {variant!r}")
    if variant == "none":
        return []
    if "lr" in variant.split("_") and (not isinstance(rank, int) or rank < 1):
        raise ValueError(f"backbone.laurel_rank must be a positive integer for laurel={variant}, got {rank!r}")
    blocks = [(n, m) for n, m in net.named_modules() if type(m) in _WRAPPED]
    if not blocks:
        raise ValueError(
            f"backbone.laurel={variant} applies to the ResNet family (timm Bottleneck/BasicBlock), "
            f"and {model_name or type(net).__name__} has no such blocks; set backbone.laurel=none"
        )
    wrapped = []
    for name, block in blocks:
        if not any(p.requires_grad for p in block.parameters()):
            continue  # a frozen stage keeps its plain residual
        channels = (block.bn3 if isinstance(block, Bottleneck) else block.bn2).num_features
        laurel = Laurel(channels, weights="rw" in variant, rank=rank if "lr" in variant.split("_") else None)
        block.__class__ = _WRAPPED[type(block)]
        block.laurel = laurel.to(next(block.parameters()).device)
        wrapped.append(name)
    return wrapped


def laurel_parameter_count(channels: list[int], variant: str, rank: int) -> int:
    """The formula for the parameters LAuReL adds, given the output channels of each wrapped block."""
    weights = 2 if variant in ("rw", "rw_lr") else 0
    low_rank = 2 * rank if variant in ("lr", "rw_lr") else 0
    return sum(weights + low_rank * c for c in channels)
