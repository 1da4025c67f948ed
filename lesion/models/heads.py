"""Classifier heads that sit on a truncated timm trunk."""

from __future__ import annotations

import torch
from torch import nn


class VggHead(nn.Sequential):
    """The study's VGG-style head: four 3x3 conv blocks, 2x2 average pool, Dense 512 tanh, Dense num_classes.

    Keras order per block is Conv+ReLU then BatchNorm, which is kept here. The Dense input size depends on the
    trunk's feature map (1024x14x14 at 224 px gives 128x7x7 = 6,272).
    """

    def __init__(self, in_channels: int, feature_hw: tuple[int, int], num_classes: int, dropout: float = 0.5):
        widths = [in_channels, 32, 64, 64, 128]
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(c_out)]
        pooled = (feature_hw[0] // 2) * (feature_hw[1] // 2)
        if pooled == 0:
            raise ValueError(
                f"VggHead needs a feature map of at least 2x2, got {feature_hw}; raise backbone.input_size"
            )
        super().__init__(
            *blocks,
            nn.AvgPool2d(2),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(widths[-1] * pooled, 512),
            nn.Tanh(),
            nn.Linear(512, num_classes),
        )


class PooledLinearHead(nn.Sequential):
    """Global average pool, dropout and a linear classifier, for trunks cut before timm's own head."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0):
        super().__init__(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_channels, num_classes)
        )


class TruncatedNet(nn.Module):
    """A `features_only` timm trunk followed by a head on its last feature map; forward returns logits."""

    def __init__(self, trunk: nn.Module, head: nn.Module):
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x)[-1])
