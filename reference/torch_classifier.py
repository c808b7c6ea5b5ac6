"""PyTorch classifier train step equivalent to `dlsr_jax.objectives.cross_entropy`.

The benchmark baseline for `benchmarks/bench_classifier.py` (test/benchmark-only
code). One step does what the dlsr_jax step does inside its jit:

  * augmentation on the batch tensor: zero padding 4, a random 32x32 crop per
    image (offsets uniform in [0, 8]) and a horizontal flip with probability 1/2;
  * uint8 -> [0, 1] -> (x - mean) / std;
  * forward in train mode (batch statistics, running averages updated);
  * mean softmax cross-entropy, backward;
  * `torch.optim.SGD(lr, momentum=0.9, nesterov=True, weight_decay=5e-4)` on every
    parameter (as `dlsr_jax.training.optim.sgd` with decay="all"), and a cosine
    learning-rate decay to 0 over `total_steps` (`CosineAnnealingLR`, stepped per
    update as optax's `cosine_decay_schedule`).

Images are uint8 NCHW tensors (torch's layout), labels int64 [B]. Models return
`(logits, pre_logits)` as `reference.torch_resnet_cifar`'s.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F


def random_crop_flip(images: torch.Tensor, pad: int = 4,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
  """Random crop of the zero-padded batch and random horizontal flip, vectorised.

  Args:
    images: [B, C, H, W] (any dtype), on any device.
    pad: zero padding on every side.
    generator: random source (on the images' device); None = torch's global one.

  Returns:
    [B, C, H, W] of the input dtype.
  """
  b, _, h, w = images.shape
  dev = images.device
  padded = F.pad(images, (pad, pad, pad, pad))
  offsets = torch.randint(0, 2 * pad + 1, (b, 2), device=dev, generator=generator)
  flip = torch.rand(b, device=dev, generator=generator) < 0.5
  rows = offsets[:, :1] + torch.arange(h, device=dev)                    # [B, H]
  cols = offsets[:, 1:] + torch.arange(w, device=dev)                    # [B, W]
  cols = torch.where(flip[:, None], cols.flip(1), cols)
  idx = torch.arange(b, device=dev)[:, None, None]
  # Advanced indices around the channel slice: the result is [B, H, W, C].
  out = padded[idx, :, rows[:, :, None], cols[:, None, :]]
  return out.permute(0, 3, 1, 2).contiguous()


class TorchClassifierTrainer:
  """A classifier and its SGD optimizer; `step(images, labels)` is one training step.

  Args:
    model: returns (logits, pre_logits) for normalised NCHW float inputs.
    mean, std: per-channel normalisation on the [0, 1] scale.
    total_steps: the cosine's length.
    lr, momentum, nesterov, weight_decay: SGD settings (defaults: the CIFAR recipe).
    pad: crop padding.
    seed: augmentation seed.
    channels_last: run the model in torch's channels_last memory format.
  """

  def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
               total_steps: int, lr: float = 0.1, momentum: float = 0.9,
               nesterov: bool = True, weight_decay: float = 5e-4, pad: int = 4,
               seed: int = 0, channels_last: bool = False):
    self.model = model.train()
    dev = next(model.parameters()).device
    self.fmt = torch.channels_last if channels_last else torch.contiguous_format
    self.model.to(memory_format=self.fmt)
    self.mean = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    self.std = torch.tensor(std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    self.pad = pad
    self.gen = torch.Generator(device=dev).manual_seed(seed)
    self.opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                               nesterov=nesterov, weight_decay=weight_decay)
    self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=total_steps)

  def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One update on uint8 [B, C, H, W] images and int64 [B] labels.

    Returns:
      (loss, accuracy) of the batch, as 0-d tensors (no host sync).
    """
    x = random_crop_flip(images, self.pad, self.gen)
    x = ((x.float() / 255.0 - self.mean) / self.std).contiguous(memory_format=self.fmt)
    logits, _ = self.model(x)
    loss = F.cross_entropy(logits, labels)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    self.sched.step()
    acc = (logits.detach().argmax(-1) == labels).float().mean()
    return loss.detach(), acc
