"""TorchXRayVision's DenseNet-121 (``densenet121-res224-all``) rebuilt from plain torch modules.

Same modules, same child names and so the same state-dict keys as ``xrv.models.DenseNet``
(``features.conv0``, ``features.denseblockN.denselayerM.{norm1,conv1,norm2,conv2}``,
``features.transitionN``, ``features.norm5``, ``classifier``): the published weights load with
``strict=True``. One input channel, 18 outputs, 6,966,034 parameters (torchxrayvision BENCHMARKS.md).

The module returns logits; ``op_norm`` turns them into the library's default calibrated output.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

GROWTH_RATE = 32
BLOCK_CONFIG = (6, 12, 24, 16)
NUM_INIT_FEATURES = 64
BN_SIZE = 4


class DenseLayer(nn.Module):
    """BN-ReLU-1×1 conv, BN-ReLU-3×3 conv on the concatenation of every earlier output."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, BN_SIZE * GROWTH_RATE, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(BN_SIZE * GROWTH_RATE)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(
            BN_SIZE * GROWTH_RATE, GROWTH_RATE, kernel_size=3, stride=1, padding=1, bias=False
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        out: torch.Tensor = self.conv2(self.relu2(self.norm2(x)))
        return out


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers named ``denselayer1``…; the output concatenates them all."""

    def __init__(self, num_layers: int, in_channels: int) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(in_channels + i * GROWTH_RATE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN, ReLU, 1×1 conv halving the channels, 2×2 average pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(in_channels))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, bias=False))
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


class XrvDenseNet121(nn.Module):
    """The network of ``densenet121-res224-all``: (N, 1, 224, 224) in [-1024, 1024] → (N, 18) logits."""

    def __init__(self, num_classes: int = 18, in_channels: int = 1) -> None:
        super().__init__()
        stem: OrderedDict[str, nn.Module] = OrderedDict(
            [
                (
                    "conv0",
                    nn.Conv2d(in_channels, NUM_INIT_FEATURES, kernel_size=7, stride=2, padding=3, bias=False),
                ),
                ("norm0", nn.BatchNorm2d(NUM_INIT_FEATURES)),
                ("relu0", nn.ReLU(inplace=True)),
                ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
            ]
        )
        self.features = nn.Sequential(stem)
        channels = NUM_INIT_FEATURES
        for i, num_layers in enumerate(BLOCK_CONFIG):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(num_layers, channels))
            channels += num_layers * GROWTH_RATE
            if i != len(BLOCK_CONFIG) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(channels, channels // 2))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        out = F.relu(features)
        out = F.adaptive_avg_pool2d(out, (1, 1)).flatten(1)
        logits: torch.Tensor = self.classifier(out)
        return logits


def op_norm(probabilities: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """TorchXRayVision's calibration: map each label's operating threshold onto 0.5, piecewise linearly.

    ``p < t`` → ``p / (2t)``; ``p ≥ t`` → ``1 − (1 − p) / (2(1 − t))``; a NaN threshold gives 0.5.
    """
    t = thresholds.to(probabilities).expand_as(probabilities)
    below = probabilities / (2 * t)
    above = 1.0 - (1.0 - probabilities) / (2 * (1.0 - t))
    out = torch.where(probabilities < t, below, above)
    return torch.where(torch.isnan(t), torch.full_like(out, 0.5), out)
