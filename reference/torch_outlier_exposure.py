"""PyTorch Outlier Exposure train step equivalent to `dlsr_jax.objectives.outlier_exposure`.

The benchmark baseline of `benchmarks/bench_classifier.py --parts=oe` (test/benchmark-only
code), written from SPEC 4.4 and the dlsr_jax objective; the structure (normalisation,
optimizer, scheduler, memory format) is `reference.torch_classifier.TorchClassifierTrainer`'s.
One step does what the dlsr_jax step does inside its jit:

  * augmentation of the ID and the outlier images alike (zero padding 4, a random 32x32
    crop and a horizontal flip with probability 1/2, independently per image; one
    `random_crop_flip` call on the concatenated uint8 batch);
  * uint8 -> [0, 1] -> (x - mean) / std;
  * ONE train-mode forward pass on the ID + outlier batch (BatchNorm statistics of the
    concatenation, as the paper's code and the dlsr_jax objective do);
  * loss = CE(ID logits, labels) + weight * mean over the outliers of
    (-mean_k log_softmax(logits)_k) (cross-entropy to the uniform distribution), backward;
  * the parent's SGD (Nesterov 0.9, weight decay 5e-4 on every parameter) and cosine decay
    to 0 over `total_steps`; the OE recipe fine-tunes at lr 0.001.

Images are uint8 NCHW tensors, labels int64 [B]. Models return `(logits, pre_logits)`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from reference import torch_classifier


def uniform_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
  """Mean over the batch of -(1/K) sum_k log softmax(logits)_k (CE to the uniform)."""
  return (-F.log_softmax(logits.float(), dim=-1).mean(-1)).mean()


class TorchOETrainer(torch_classifier.TorchClassifierTrainer):
  """A classifier fine-tuned with Outlier Exposure; `step(images, labels, outliers)`.

  Args:
    model, mean, std, total_steps, momentum, nesterov, weight_decay, pad, seed,
      channels_last: as `TorchClassifierTrainer`.
    lr: the peak learning rate (the OE recipe: 0.001).
    weight: lambda, the weight of the outlier term (0.5 in the paper).
    augment: random crop + flip of both batches (False: the images as given, e.g. to
      compare one step with dlsr_jax's `augment=False` objective).
  """

  def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
               total_steps: int, lr: float = 1e-3, weight: float = 0.5,
               augment: bool = True, **kwargs):
    super().__init__(model, mean, std, total_steps, lr=lr, **kwargs)
    if not weight >= 0:
      raise ValueError(f"TorchOETrainer weight must be >= 0, got {weight}")
    self.weight = weight
    self.augment = augment

  def step(self, images: torch.Tensor, labels: torch.Tensor,  # type: ignore[override]
           outliers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One update on uint8 [B, C, H, W] ID images, int64 [B] labels, uint8 [B_out, C, H, W].

    Returns:
      (loss, ID accuracy) of the batch, as 0-d tensors (no host sync).
    """
    n = images.shape[0]
    x = torch.cat([images, outliers])
    if self.augment:
      x = torch_classifier.random_crop_flip(x, self.pad, self.gen)
    x = ((x.float() / 255.0 - self.mean) / self.std).contiguous(memory_format=self.fmt)
    logits, _ = self.model(x)
    loss = F.cross_entropy(logits[:n], labels) + self.weight * uniform_cross_entropy(logits[n:])
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    self.sched.step()
    acc = (logits[:n].detach().argmax(-1) == labels).float().mean()
    return loss.detach(), acc
