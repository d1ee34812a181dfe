"""Residual networks for gxnor's presets, built as own networks (``model=resnet20``, ...).

The ResNet family for CIFAR-10 / SVHN of He et al. (2016, section 4.2): a 3x3 convolution
with ``width`` channels, three stages of n = (depth - 2) / 6 basic blocks with width,
2 width and 4 width channels (the second and third stage start with stride 2 and a 1x1
convolution on the shortcut), global average pooling and a dense layer to the classes.
A basic block is

    conv3x3 -> BN -> act -> conv3x3 -> BN, + shortcut, -> act

and every convolution, the dense layer and every activation are discretized like any own
network (:mod:`.own`); the dense layer is followed by a BatchNorm, as in gxnor's own nets.
``model=resnet20`` is depth 20 (0.27 M weights at width 16); ``model=resnet8`` is depth 8,
one block a stage, for 28x28 and 8x8 inputs.
"""

from __future__ import annotations

from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1, self.act1 = nn.BatchNorm2d(cout), nn.Hardtanh()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(cout), nn.Hardtanh()
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(y)) + self.shortcut(x))


def resnet(depth: int = 20, width: int = 16, in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """The ResNet of ``depth`` = 6 n + 2 layers (8, 14, 20, 32, 44, 56, ...)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6 n + 2 with n >= 1 (8, 14, 20, 32, ...); got {depth}")
    n = (depth - 2) // 6
    layers = [nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.Hardtanh()]
    cin = width
    for stage in range(3):
        cout = width * 2**stage
        for block in range(n):
            layers.append(BasicBlock(cin, cout, 2 if stage and not block else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes, bias=False),
               nn.BatchNorm1d(num_classes)]
    return nn.Sequential(*layers)
