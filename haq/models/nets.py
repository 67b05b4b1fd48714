"""Network definitions (our own; torchvision is not required).

MobileNet-V1 (Howard et al. 2017), MobileNet-V2 (Sandler et al., CVPR 2018), ResNet-20
for CIFAR and ResNet-18/50 (He et al., CVPR 2016), plus the small MobileNetV2-style
network for the embedded digits data. Module names follow torchvision's where it has the
model (``features.N``, ``classifier``, ``layerN.M.convK``, ``fc``), so state dicts
converted from torchvision load without renaming.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


def _make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class InvertedResidual(nn.Module):
    """MobileNet-V2 block: 1x1 expansion, 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.use_res = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(c_in, hidden, 1))
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, c_out, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res else out


MBV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
"""(expansion t, channels c, repeats n, first stride s), Table 2 of the MobileNet-V2 paper."""


class MobileNetV2(nn.Module):
    """MobileNet-V2. `small_input=True` adapts it to 32x32 images (stem and the first
    stride-2 stage use stride 1), the common CIFAR variant."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0, in_channels: int = 3,
                 small_input: bool = False, settings: Sequence[tuple[int, int, int, int]] = MBV2_SETTINGS,
                 stem_channels: int = 32, last_channels: int = 1280, dropout: float = 0.2,
                 stem_stride: int | None = None) -> None:
        super().__init__()
        c = _make_divisible(stem_channels * width)
        last = _make_divisible(last_channels * max(1.0, width))
        if stem_stride is None:
            stem_stride = 1 if small_input else 2
        features: list[nn.Module] = [conv_bn(in_channels, c, 3, stem_stride)]
        for i, (t, ch, n, s) in enumerate(settings):
            out = _make_divisible(ch * width)
            if small_input and i == 1:
                s = 1
            for j in range(n):
                features.append(InvertedResidual(c, out, s if j == 0 else 1, t))
                c = out
        features.append(conv_bn(c, last, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean((2, 3))
        return self.classifier(x)


class MobileNetV1(nn.Module):
    """MobileNet-V1: a stem conv and 13 depthwise-separable blocks."""

    CFG = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
           (512, 1), (1024, 2), (1024, 1))

    def __init__(self, num_classes: int = 1000, width: float = 1.0, in_channels: int = 3, small_input: bool = False) -> None:
        super().__init__()
        c = int(32 * width)
        layers: list[nn.Module] = [conv_bn(in_channels, c, 3, 1 if small_input else 2)]
        for out, s in self.CFG:
            out = int(out * width)
            layers += [conv_bn(c, c, 3, s, groups=c), conv_bn(c, out, 1)]
            c = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    """1x1 projection of a residual block's input when its shape changes (torchvision's ``downsample``)."""
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * 4
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + idt)


class ResNet(nn.Module):
    """ResNet for ImageNet (stem 7x7/2 + max-pool, four stages) with torchvision's names."""

    def __init__(self, block: type[BasicBlock | Bottleneck], depths: Sequence[int], num_classes: int = 1000,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c = 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), depths)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(c, width, stride))
                c = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(c, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


class CifarResNet(nn.Module):
    """ResNet-20/32/56 for 32x32 images (He et al. 2016, Section 4.2): 3 stages of 16/32/64."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        c = 16
        for i, width in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(c, width, 2 if i > 0 and j == 0 else 1))
                c = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


DIGITS_SETTINGS = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2))
"""The embedded default: a MobileNetV2-style net for 16x16 digits with depthwise layers."""


def digits_mbv2(num_classes: int = 10, in_channels: int = 1, width: float = 1.0) -> MobileNetV2:
    """Small MobileNetV2-style network for the 16x16 digits data (17 quantizable layers);
    `width` scales the channels (the dense baselines of the pruning experiment)."""
    return MobileNetV2(num_classes, width, in_channels, settings=DIGITS_SETTINGS, stem_channels=16,
                       last_channels=128, dropout=0.0, stem_stride=1)


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
