"""A small CNN for genface's Classifier: digits/MNIST class judges that train in seconds on a CPU."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks (two 2x max-pools), global average pool, linear head.

    `features` (width·2-d) is the penultimate layer: Classifier.features and the `classifier` FID/KID
    extractor use it. Any input resolution >= 4 px.
    """

    def __init__(self, num_outputs: int, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        if num_outputs < 1 or in_channels < 1 or width < 1:
            raise ValueError(
                f"SmallCNN: num_outputs, in_channels and width must be >= 1, got {num_outputs}, {in_channels}, {width}"
            )
        self.in_channels = in_channels

        def block(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(True)]

        self.body = nn.Sequential(
            *block(in_channels, width), nn.MaxPool2d(2), *block(width, 2 * width), nn.MaxPool2d(2),
            *block(2 * width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(2 * width, num_outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
