"""The PyTorch ODIN baseline (`reference/torch_odin.py`) computes what dlsr_jax's ODIN does.

Same ResNet-20 weights on both sides (random torch weights with randomised BN,
saved and read by `models.load`), a few random images; scores agree to rtol 1e-4
and the perturbed logits' ranking agrees, so `benchmarks/bench_classifier.py`
times the same computation on both sides.
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dlsr_jax import models  # noqa: E402
from dlsr_jax.detectors import odin  # noqa: E402
from reference import torch_odin, torch_resnet_cifar  # noqa: E402


def _randomise_bn(model, seed):
  g = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      with torch.no_grad():
        m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
  torch.manual_seed(0)
  ref = torch_resnet_cifar.CifarResNet(20)
  _randomise_bn(ref, seed=1)
  path = str(tmp_path_factory.mktemp("w") / "resnet20.pth")
  torch.save(ref.state_dict(), path)
  net = models.load("cifar_resnet20", path)
  # T and eps are arguments: one compilation serves every parametrisation.
  kernel = jax.jit(lambda p, x, t, e: odin.odin_score(net, p, x, t, e))
  return net, ref.eval(), kernel


@pytest.mark.parametrize("temperature,eps", [(1000.0, 0.0014), (1.0, 0.002), (10.0, 0.0)])
def test_torch_odin_matches_dlsr_jax(nets, temperature, eps):
  net, ref, kernel = nets
  images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  ours = np.asarray(kernel(net.params, images, temperature, eps))
  theirs = torch_odin.odin_score(ref, torch.from_numpy(images).permute(0, 3, 1, 2),
                                 net.mean, net.std, temperature, eps).numpy()
  assert ours.shape == theirs.shape == (6,)
  np.testing.assert_allclose(ours, theirs, rtol=1e-4)
  # At T = 1000 the scores sit near -1/K; their spread must agree too, not just the level.
  spread_ours, spread_theirs = ours - ours.mean(), theirs - theirs.mean()
  np.testing.assert_allclose(spread_ours, spread_theirs,
                             atol=1e-3 * np.max(np.abs(spread_theirs)) + 1e-9)


def test_torch_odin_step_matches_perturb(nets):
  """x' itself: the signed-gradient step agrees pixel for pixel (up to near-zero gradients)."""
  net, ref, _ = nets
  images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  x01 = images.astype(np.float32) / 255.0
  ours = np.asarray(jax.jit(lambda p, x: odin.perturb(net, p, x, 1000.0, 0.01))(
      net.params, x01))
  x = torch.from_numpy(x01).permute(0, 3, 1, 2).requires_grad_(True)
  m = torch.tensor(net.mean).view(1, 3, 1, 1)
  s = torch.tensor(net.std).view(1, 3, 1, 1)
  logits = ref((x - m) / s)[0]
  loss = torch.nn.functional.cross_entropy(logits / 1000.0, logits.detach().argmax(-1),
                                           reduction="sum")
  (grad,) = torch.autograd.grad(loss, x)
  theirs = (x.detach() - 0.01 * torch.where(grad >= 0, 1.0, -1.0)).permute(0, 2, 3, 1).numpy()
  same = np.isclose(ours, theirs, atol=1e-6)
  assert same.mean() > 0.999, f"{(~same).sum()} of {same.size} pixels stepped differently"
