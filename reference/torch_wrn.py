"""PyTorch Wide ResNet matching `dlsr_jax.models.wrn` key for key (test-only code).

Pre-activation blocks; where the width changes the conv1x1 shortcut reads the
pre-activated input. Keys: `conv1`, `block{1,2,3}.layer.{i}.bn1/conv1/bn2/conv2/
convShortcut`, `bn1`, `fc`. Inputs are NCHW, normalised.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class WideBlock(nn.Module):
  """BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3 + shortcut."""

  def __init__(self, cin: int, planes: int, stride: int, dropout: float):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
    self.dropout = dropout
    self.same = cin == planes and stride == 1
    if not self.same:
      self.convShortcut = nn.Conv2d(cin, planes, 1, stride=stride, bias=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    act = F.relu(self.bn1(x))
    out = F.relu(self.bn2(self.conv1(act)))
    out = F.dropout(out, self.dropout, self.training)
    out = self.conv2(out)
    return (x if self.same else self.convShortcut(act)) + out


class WideGroup(nn.Module):
  def __init__(self, cin: int, planes: int, stride: int, blocks: int, dropout: float):
    super().__init__()
    self.layer = nn.Sequential(*[
        WideBlock(cin if i == 0 else planes, planes, stride if i == 0 else 1, dropout)
        for i in range(blocks)])

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.layer(x)


class WideResNet(nn.Module):
  """WRN-depth-widen: returns (logits, pre_logits)."""

  def __init__(self, depth: int = 40, widen: int = 2, num_classes: int = 10,
               dropout: float = 0.0):
    super().__init__()
    n = (depth - 4) // 6
    widths = [16 * widen, 32 * widen, 64 * widen]
    self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
    self.block1 = WideGroup(16, widths[0], 1, n, dropout)
    self.block2 = WideGroup(widths[0], widths[1], 2, n, dropout)
    self.block3 = WideGroup(widths[1], widths[2], 2, n, dropout)
    self.bn1 = nn.BatchNorm2d(widths[2])
    self.fc = nn.Linear(widths[2], num_classes)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = self.block3(self.block2(self.block1(self.conv1(x))))
    feats = F.relu(self.bn1(x)).mean(dim=(2, 3))
    return self.fc(feats), feats
