"""torchvision ResNet / DenseNet, built with ``weights=None`` (nothing is downloaded), in the
form the pretrained encoders use: the same module names (so torchvision's weight files load key
for key), residual additions and ReLUs out of place (Opacus' per-sample-gradient hooks cannot
follow an in-place change of a hooked layer's output), BatchNorm optionally with frozen
statistics, the first convolution for the modality's channel count, no classifier.

Imported only when such an encoder is built (torchvision is not needed to load the plugin).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.densenet import DenseNet
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .pretrained import DENSENETS, RESNETS, FrozenStatsBatchNorm2d, freeze_batchnorm_stats


class OutOfPlaceBasicBlock(BasicBlock):
    """torchvision's BasicBlock (same submodules and keys), its residual added out of place."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + identity)


class OutOfPlaceBottleneck(Bottleneck):
    """torchvision's Bottleneck (same submodules and keys), its residual added out of place."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + identity)


def _no_inplace(net: nn.Module) -> None:
    for m in net.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False


def _first_conv(old: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    if old.in_channels == in_channels:
        return old
    conv = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=old.bias is not None)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def build_resnet(arch: str, in_channels: int, frozen_stats: bool) -> tuple[ResNet, int]:
    """torchvision ``arch`` (resnet18...) without its ``fc``; returns (net, feature width)."""
    kind, layers = RESNETS[arch]
    block = OutOfPlaceBasicBlock if kind == "basic" else OutOfPlaceBottleneck
    net = ResNet(block, list(layers), norm_layer=FrozenStatsBatchNorm2d if frozen_stats else nn.BatchNorm2d)
    net.conv1 = _first_conv(net.conv1, in_channels)
    width = net.fc.in_features
    net.fc = nn.Identity()
    _no_inplace(net)
    return net, width


def build_densenet(arch: str, in_channels: int, frozen_stats: bool) -> tuple[DenseNet, int]:
    """torchvision ``arch`` (densenet121...) without its ``classifier``; returns (net, feature width)."""
    blocks, growth, init = DENSENETS[arch]
    net = DenseNet(growth_rate=growth, block_config=blocks, num_init_features=init)
    net.features.conv0 = _first_conv(net.features.conv0, in_channels)
    width = net.classifier.in_features
    net.classifier = nn.Identity()
    if frozen_stats:
        freeze_batchnorm_stats(net)
    _no_inplace(net)
    return net, width


def densenet_features(net: DenseNet, x: Tensor) -> Tensor:
    """torchvision's DenseNet forward up to its classifier (ReLU out of place): ``[B, width]``."""
    f = torch.relu(net.features(x))
    return nn.functional.adaptive_avg_pool2d(f, 1).flatten(1)
