"""The PyTorch classifier baseline (`reference/torch_classifier.py`) matches dlsr_jax's recipe.

* its batched crop + flip equals a per-image loop (and `dlsr_jax.augment.crop_flip`
  given the same offsets and flips);
* torch SGD (Nesterov 0.9, weight decay 5e-4) with `CosineAnnealingLR` follows
  `dlsr_jax.training.optim.sgd` step for step on the same gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dlsr_jax import augment  # noqa: E402
from dlsr_jax.training import optim  # noqa: E402
from reference import torch_classifier, torch_resnet_cifar  # noqa: E402


def test_crop_flip_matches_loop_and_dlsr_jax():
  images = torch.from_numpy(
      np.random.default_rng(0).integers(0, 256, (16, 3, 32, 32), dtype=np.uint8))
  gen = torch.Generator().manual_seed(3)
  out = torch_classifier.random_crop_flip(images, 4, gen)
  gen = torch.Generator().manual_seed(3)     # replay the draws
  offsets = torch.randint(0, 9, (16, 2), generator=gen)
  flip = torch.rand(16, generator=gen) < 0.5
  padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
  for i in range(16):
    oy, ox = offsets[i].tolist()
    want = padded[i, :, oy:oy + 32, ox:ox + 32]
    if flip[i]:
      want = want.flip(-1)
    assert torch.equal(out[i], want)
  ours = augment.crop_flip(jnp.asarray(images.permute(0, 2, 3, 1).numpy()),
                           jnp.asarray(offsets.numpy()), jnp.asarray(flip.numpy()), 4)
  np.testing.assert_array_equal(np.asarray(ours), out.permute(0, 2, 3, 1).numpy())


def test_sgd_matches_optax():
  total = 7
  rng = np.random.default_rng(0)
  w0 = rng.standard_normal((5, 3)).astype(np.float32)
  grads = [rng.standard_normal((5, 3)).astype(np.float32) for _ in range(total)]
  tx = optim.sgd(optim.SGDConfig(), total)
  params = {"w": jnp.asarray(w0)}
  state = tx.init(params)
  p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
  opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
  sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
  for g in grads:
    updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
    params = jax.tree.map(lambda a, u: a + u, params, updates)
    p.grad = torch.from_numpy(g.copy())
    opt.step()
    sched.step()
  np.testing.assert_allclose(np.asarray(params["w"]), p.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_trainer_step_runs_and_learns():
  torch.manual_seed(0)
  model = torch_resnet_cifar.CifarResNet(20)
  tr = torch_classifier.TorchClassifierTrainer(model, (0.5,) * 3, (0.25,) * 3, total_steps=10,
                                               lr=0.05)
  images = torch.from_numpy(
      np.random.default_rng(0).integers(0, 256, (8, 3, 32, 32), dtype=np.uint8))
  labels = torch.arange(8) % 10
  losses = [float(tr.step(images, labels)[0]) for _ in range(3)]
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]
  assert model.training
