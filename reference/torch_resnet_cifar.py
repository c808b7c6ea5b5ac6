"""PyTorch CIFAR ResNets matching `dlsr_jax.models.resnet_cifar` key for key.

Written from the description in `../shared/weights/SOURCES.md` (test-only code):
* `CifarResNet(depth)`: ResNet-20/32/44/56, option A shortcuts; state-dict keys
  `conv1`, `bn1`, `layer{1,2,3}.{i}.conv1/bn1/conv2/bn2`, `linear` (the akamaster
  layout, so `load_state_dict` accepts those files once `module.` is stripped).
* `ResNet18`: 32x32 stem, projection shortcuts `shortcut.0` (conv1x1) and
  `shortcut.1` (BN), head `fc`.
Inputs are NCHW, normalised.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

CIFAR_DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9}


def _conv3x3(cin: int, cout: int, stride: int) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU; shortcut "A" or "projection"."""

  def __init__(self, cin: int, planes: int, stride: int, shortcut: str):
    super().__init__()
    self.conv1 = _conv3x3(cin, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv3x3(planes, planes, 1)
    self.bn2 = nn.BatchNorm2d(planes)
    self.option_a = False
    self.pad = planes // 4
    self.stride = stride
    if stride != 1 or cin != planes:
      if shortcut == "A":
        self.option_a = True
      else:
        self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride=stride, bias=False),
                                      nn.BatchNorm2d(planes))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.option_a:
      sub = x[:, :, ::self.stride, ::self.stride]
      identity = F.pad(sub, (0, 0, 0, 0, self.pad, self.pad))  # pads dim 1 (channels)
    elif hasattr(self, "shortcut"):
      identity = self.shortcut(x)
    else:
      identity = x
    return F.relu(out + identity)


def _make_stages(module: nn.Module, cin: int, widths, strides, blocks: int,
                 shortcut: str) -> None:
  for s, (planes, stride) in enumerate(zip(widths, strides)):
    layers = []
    for b in range(blocks):
      layers.append(BasicBlock(cin, planes, stride if b == 0 else 1, shortcut))
      cin = planes
    setattr(module, f"layer{s + 1}", nn.Sequential(*layers))


class CifarResNet(nn.Module):
  """ResNet-(6n+2), option A: returns (logits, pre_logits)."""

  def __init__(self, depth: int = 20, num_classes: int = 10):
    super().__init__()
    self.conv1 = _conv3x3(3, 16, 1)
    self.bn1 = nn.BatchNorm2d(16)
    _make_stages(self, 16, (16, 32, 64), (1, 2, 2), CIFAR_DEPTHS[depth], "A")
    self.linear = nn.Linear(64, num_classes)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    feats = x.mean(dim=(2, 3))
    return self.linear(feats), feats


class ResNet18(nn.Module):
  """ResNet-18, 32x32 stem, projection shortcuts: returns (logits, pre_logits)."""

  def __init__(self, num_classes: int = 10):
    super().__init__()
    self.conv1 = _conv3x3(3, 64, 1)
    self.bn1 = nn.BatchNorm2d(64)
    _make_stages(self, 64, (64, 128, 256, 512), (1, 2, 2, 2), 2, "projection")
    self.fc = nn.Linear(512, num_classes)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    feats = x.mean(dim=(2, 3))
    return self.fc(feats), feats
