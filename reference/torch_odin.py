"""PyTorch ODIN equivalent to `dlsr_jax.detectors.odin` (test/benchmark-only code).

With f the classifier on normalised inputs and x the pixels in [0, 1]: pseudo-label
y = argmax f(norm(x)) (unscaled logits); loss = sum over the batch of
CE(f(norm(x)) / T, y); x' = x - eps * sign(d loss / d x), the gradient taken through
the normalisation and a zero gradient counting as +1; score = -max softmax(f(x') / T).
The model runs in eval mode (running BN statistics).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def odin_score(model: nn.Module, images: torch.Tensor, mean: Sequence[float],
               std: Sequence[float], temperature: float, eps: float,
               clip: bool = False) -> torch.Tensor:
  """ODIN scores of uint8 NCHW images.

  Args:
    model: returns (logits, pre_logits); put in eval mode here.
    images: [B, 3, H, W] uint8.
    mean, std: per-channel normalisation on the [0, 1] scale.
    temperature: T > 0.
    eps: the step in [0, 1] pixel units.
    clip: clip x' to [0, 1].

  Returns:
    [B] float32 scores, higher = more OOD.
  """
  model.eval()
  dev = images.device
  m = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
  s = torch.tensor(std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
  x = (images.float() / 255.0).requires_grad_(True)
  logits = model((x - m) / s)[0].float()
  labels = logits.detach().argmax(-1)
  loss = F.cross_entropy(logits / temperature, labels, reduction="sum")
  (grad,) = torch.autograd.grad(loss, x)
  with torch.no_grad():
    x2 = x.detach() - eps * torch.where(grad >= 0, 1.0, -1.0)
    if clip:
      x2 = x2.clamp(0.0, 1.0)
    logits2 = model((x2 - m) / s)[0].float()
    return -F.softmax(logits2 / temperature, dim=-1).max(-1).values
