"""The PyTorch OE baseline (`reference/torch_outlier_exposure.py`) computes dlsr_jax's OE step.

`benchmarks/bench_classifier.py --parts=oe` times the two against each other; this checks
they do the same work: on the same torch-initialised ResNet-20 weights and the same batch
(4 ID images + 8 outliers, augmentation off on both sides) the first step's loss agrees,
and so does the second step's, which also depends on the first update (gradients, SGD
Nesterov + weight decay, the cosine's first learning rate). Both sides are built by the
benchmark's own helpers, so the settings compared are the ones timed.
"""

import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import bench_classifier  # noqa: E402
from dlsr_jax import models, parallel  # noqa: E402
from dlsr_jax.training import loop  # noqa: E402
from reference import torch_outlier_exposure, torch_resnet_cifar  # noqa: E402

LR = 0.1        # large enough that the second step's loss moves well past the tolerance
RTOL = 1e-4


def _nchw(a):
  return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()


def test_uniform_cross_entropy_is_logsumexp_minus_mean():
  z = torch.tensor([[5.0, -2.0, 0.0], [1.0, 1.0, 1.0]])
  want = np.mean(np.log(np.exp(z.numpy()).sum(-1)) - z.numpy().mean(-1))
  np.testing.assert_allclose(float(torch_outlier_exposure.uniform_cross_entropy(z)), want,
                             rtol=1e-6)


def test_oe_step_loss_matches_dlsr_jax(tmp_path):
  torch.manual_seed(0)
  ref = torch_resnet_cifar.CifarResNet(20)
  path = os.path.join(tmp_path, "r20.pth")
  torch.save(ref.state_dict(), path)
  net = models.load("cifar_resnet20", path)
  (b,) = bench_classifier.oe_batches(1, 4, 8, seed=0)

  obj = bench_classifier.oe_objective(net, lr=LR, total_steps=10, augment=False)
  mesh = parallel.make_mesh(jax.devices()[:1])
  init_fn, step_fn = loop.jitted_step(obj.init, obj.step, mesh)   # what the benchmark times
  init_key, loop_key, bad_step = loop.step_inputs(0, mesh)
  put = lambda a: parallel.host_to_global(a, mesh)  # noqa: E731
  batch = {"in": {"x": put(b["x"]), "y": put(b["y"])}, "outliers": {"x": put(b["x_out"])}}
  state, jax_losses = init_fn(init_key), []
  for _ in range(2):
    state, metrics, bad_step = step_fn(state, batch, loop_key, bad_step)
    jax_losses.append(float(metrics["loss"]))

  tr = bench_classifier.torch_oe_trainer(net, ref, lr=LR, total_steps=10, augment=False)
  args = (_nchw(b["x"]), torch.from_numpy(b["y"]).long(), _nchw(b["x_out"]))
  torch_losses = [float(tr.step(*args)[0]) for _ in range(2)]

  diff = np.abs(np.array(jax_losses) - np.array(torch_losses)) / np.abs(torch_losses)
  print(f"OE loss jax {jax_losses} torch {torch_losses}; max relative difference {diff.max():.2e}")
  np.testing.assert_allclose(jax_losses, torch_losses, rtol=RTOL)
  # The second step's check can fail: the update moved the loss far beyond the tolerance.
  assert abs(torch_losses[1] - torch_losses[0]) > 100 * RTOL * abs(torch_losses[0])
  assert int(bad_step) == 0


def test_oe_trainer_rejects_a_negative_weight():
  with pytest.raises(ValueError, match="weight must be >= 0"):
    torch_outlier_exposure.TorchOETrainer(torch_resnet_cifar.CifarResNet(20), (0.5,) * 3,
                                          (0.25,) * 3, total_steps=10, weight=-1.0)


def test_bench_times_oe_by_default_and_quick_keeps_it_tiny(capsys):
  assert bench_classifier.parse_args([]).parts.split(",") == ["train", "odin", "oe", "forward"]
  quick = bench_classifier.parse_args(["--quick", "--out_dir=/nonexistent"])
  assert (quick.batch_size, quick.oe_outliers) == (8, 8)
  with pytest.raises(SystemExit):
    bench_classifier.parse_args(["--parts=train,oee"])
  assert "unknown parts ['oee']" in capsys.readouterr().err
