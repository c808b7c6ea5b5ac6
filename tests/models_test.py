"""Classifiers: parity with the PyTorch references, CIFAR-10 accuracy, loading errors.

Parity criterion: max|ours - ref| / max|ref| < 1e-4 on logits and pre-logits.
  * ResNet-20: the akamaster file read by our safe reader vs the reference model
    loaded with `torch.load` of the same file.
  * ResNet-18 (32x32) and WRN-40-2: random torch weights with randomised BN
    affines/statistics, saved with `torch.save` and loaded by `models.load`.
Accuracy on the 1017 pixel-exact CIFAR-10 test images, in eval mode.
The shared files live in `../shared` beside the clone (override: $DLSR_SHARED_DIR).
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from dlsr_jax import models
from dlsr_jax.weights import convert
from reference import torch_resnet_cifar, torch_wrn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("DLSR_SHARED_DIR", os.path.join(ROOT, "..", "shared"))
WEIGHTS = os.path.join(SHARED, "weights", "cifar10_resnet")
TEST_SET = os.path.join(SHARED, "data", "cifar10_test_exact.npz")
FILES = {20: "resnet20-12fca82f.th", 56: "resnet56-4bfd9763.th"}
REL_TOL = 1e-4


def shared_file(path: str) -> str:
  assert os.path.isfile(path), (
      f"missing shared test file {path}: the tests need ../shared (weights and data) beside "
      "the clone, or DLSR_SHARED_DIR pointing at it")
  return path


@pytest.fixture(scope="module")
def cifar10():
  with np.load(shared_file(TEST_SET)) as d:
    return d["images"], d["labels"]


def rel_diff(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def torch_forward(model: torch.nn.Module, x_nhwc: np.ndarray):
  model.eval()
  with torch.no_grad():
    logits, feats = model(torch.from_numpy(np.array(x_nhwc)).permute(0, 3, 1, 2))
  return logits.numpy(), feats.numpy()


def randomise_bn(model: torch.nn.Module, seed: int) -> None:
  g = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      with torch.no_grad():
        m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def test_resnet20_matches_torch_on_published_weights(cifar10):
  path = shared_file(os.path.join(WEIGHTS, FILES[20]))
  net = models.load("cifar_resnet20", path)
  ckpt = torch.load(path, map_location="cpu")
  ref = torch_resnet_cifar.CifarResNet(20)
  ref.load_state_dict({k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()})
  x = net.preprocess(cifar10[0][:8])
  logits, out = jax.jit(net.apply)(net.params, x)
  ref_logits, ref_feats = torch_forward(ref, x)
  d_logits, d_feats = rel_diff(logits, ref_logits), rel_diff(out["pre_logits"], ref_feats)
  print(f"resnet20 parity: logits {d_logits:.2e}, pre_logits {d_feats:.2e}")
  assert d_logits < REL_TOL and d_feats < REL_TOL
  np.testing.assert_array_equal(np.argmax(logits, 1), np.argmax(ref_logits, 1))


@pytest.mark.parametrize("depth,min_acc", [(20, 0.910), (56, 0.920)])
def test_cifar10_accuracy(cifar10, depth, min_acc):
  net = models.load(f"cifar_resnet{depth}", shared_file(os.path.join(WEIGHTS, FILES[depth])))
  images, labels = cifar10
  predict = jax.jit(lambda p, x: jnp.argmax(net.apply(p, net.preprocess(x))[0], -1))
  bs, preds = 256, []
  for i in range(0, len(images), bs):
    batch = images[i:i + bs]
    padded = np.concatenate([batch, np.zeros((bs - len(batch),) + batch.shape[1:], batch.dtype)])
    preds.append(np.asarray(predict(net.params, padded))[:len(batch)])
  acc = float(np.mean(np.concatenate(preds) == labels))
  print(f"cifar_resnet{depth}: {acc:.2%} on {len(labels)} images")
  assert acc >= min_acc


@pytest.mark.parametrize("name,ref_fn,dim", [
    ("resnet18_32x32", lambda: torch_resnet_cifar.ResNet18(10), 512),
    ("wrn40_2", lambda: torch_wrn.WideResNet(40, 2, 10), 128),
])
def test_random_weights_match_torch(tmp_path, name, ref_fn, dim):
  torch.manual_seed(0)
  ref = ref_fn()
  randomise_bn(ref, seed=1)
  path = str(tmp_path / f"{name}.pth")
  torch.save(ref.state_dict(), path)
  net = models.load(name, path)
  x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  logits, out = jax.jit(net.apply)(net.params, x)
  ref_logits, ref_feats = torch_forward(ref, x)
  assert logits.shape == (2, 10) and out["pre_logits"].shape == (2, dim)
  d_logits, d_feats = rel_diff(logits, ref_logits), rel_diff(out["pre_logits"], ref_feats)
  print(f"{name} parity: logits {d_logits:.2e}, pre_logits {d_feats:.2e}")
  assert d_logits < REL_TOL and d_feats < REL_TOL


@pytest.mark.parametrize("name,dim,maps,norm", [
    ("resnet18_32x32", 512, {"layer1": (32, 64), "layer4": (4, 512)}, "cifar10"),
    ("wrn40_2", 128, {"block1": (32, 32), "block3": (8, 128)}, "cifar10"),
    ("cifar_resnet32", 64, {"layer1": (32, 16), "layer3": (8, 64)}, "imagenet"),
])
def test_random_init_shapes_and_train_mode(name, dim, maps, norm):
  net = models.load(name, num_classes=7, seed=3)
  assert net.resolution == 32 and net.weights_id == "random-seed3"
  assert (net.mean, net.std) == models.NORMALISATIONS[norm]
  x = net.preprocess(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8))

  @jax.jit
  def both(params, x):
    evaluated = net.apply(params, x)
    trained, updates = net.module.apply(params, x, train=True, mutable=["batch_stats"])
    return evaluated, trained, updates

  (logits, out), (train_logits, _), updates = both(net.params, x)
  assert logits.shape == (2, 7) and train_logits.shape == (2, 7)
  assert out["pre_logits"].shape == (2, dim)
  for key, (size, ch) in maps.items():
    assert out[key].shape == (2, size, size, ch)
  before = jax.tree.leaves(net.params["batch_stats"])
  after = jax.tree.leaves(updates["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  again = models.load(name, num_classes=7, seed=3)
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, net.params, again.params)))
  kernels = [v for k, v in convert.flatten_variables(net.params).items()
             if k.endswith("kernel") and v.ndim == 4 and v.shape[-1] >= 64]
  k = np.asarray(kernels[-1])  # He normal, fan-out
  np.testing.assert_allclose(k.std(), np.sqrt(2.0 / (9 * k.shape[-1])), rtol=0.05)


def test_option_a_shortcut():
  x = jnp.arange(2 * 4 * 4 * 16, dtype=jnp.float32).reshape(2, 4, 4, 16)
  y = models.resnet_cifar.option_a_shortcut(x, 32, 2)
  assert y.shape == (2, 2, 2, 32)
  np.testing.assert_array_equal(y[..., 8:24], x[:, ::2, ::2, :])
  assert not np.any(y[..., :8]) and not np.any(y[..., 24:])


def test_normalise_preprocess_and_jit():
  path = shared_file(os.path.join(WEIGHTS, FILES[20]))
  net = models.load("cifar_resnet20", path)
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)
  x01 = images.astype(np.float32) / 255.0
  np.testing.assert_allclose(net.preprocess(images), net.normalise(x01), atol=1e-6)
  np.testing.assert_allclose(net.normalise(x01)[..., 0], (x01[..., 0] - 0.485) / 0.229,
                             rtol=1e-5, atol=1e-6)
  grad = jax.grad(lambda v: jnp.sum(net.normalise(v)))(jnp.asarray(x01))
  np.testing.assert_allclose(grad[0, 0, 0], 1.0 / np.asarray(net.std), rtol=1e-6)
  assert net.weights_id == "12fca82f" + net.weights_id[8:]
  assert models.load("cifar_resnet20", path, normalisation="none").std == (1.0, 1.0, 1.0)
  with pytest.raises(ValueError, match="unknown normalisation"):
    models.load("cifar_resnet20", path, normalisation="mnist")


def test_heads():
  feats = np.random.default_rng(0).standard_normal((5, 24)).astype(np.float32)
  lin = models.load("linear_head", num_features=24, num_classes=3)
  logits, out = lin.apply(lin.params, feats)
  assert logits.shape == (5, 3) and out["pre_logits"].shape == (5, 24)
  assert lin.params["params"]["fc"]["kernel"].shape == (24, 3) and lin.resolution is None
  mlp = models.load("mlp_head", num_features=24, hidden=16)
  logits, out = jax.jit(mlp.apply)(mlp.params, feats)
  assert logits.shape == (5, 10) and out["pre_logits"].shape == (5, 16)
  with pytest.raises(ValueError, match="num_features"):
    models.load("mlp_head")
  with pytest.raises(ValueError, match="takes features"):
    mlp.preprocess(np.zeros((1, 32, 32, 3), np.uint8))
  with pytest.raises(ValueError, match="no setting"):
    models.load("linear_head", num_features=24, hidden=16)


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="unknown model 'resnet21'") as e:
    models.load("resnet21")
  for name in ("cifar_resnet20", "cifar_resnet56", "resnet18_32x32", "wrn40_2", "mlp_head"):
    assert name in str(e.value)


def test_bad_weights_name_the_keys(tmp_path):
  ref = torch_resnet_cifar.CifarResNet(20)
  sd = ref.state_dict()
  del sd["layer2.1.conv2.weight"]
  sd["layer3.0.bn9.weight"] = sd.pop("layer3.0.bn1.weight")
  sd["linear.weight"] = torch.zeros(7, 64)
  path = str(tmp_path / "bad.pth")
  torch.save({"state_dict": sd, "best_prec1": 1.0}, path)
  with pytest.raises(models.CheckpointMismatchError) as e:
    models.load("cifar_resnet20", path)
  msg = str(e.value)
  for key in ("layer2.1.conv2.weight", "layer3.0.bn1.weight", "layer3.0.bn9.weight",
              "linear.weight"):
    assert key in msg, msg
  assert e.value.mismatched == (("linear.weight", (7, 64), (10, 64)),)
  with pytest.raises(models.CheckpointMismatchError, match="linear.weight"):
    models.load("cifar_resnet20", shared_file(os.path.join(WEIGHTS, FILES[20])),
                num_classes=100)
  with pytest.raises(FileNotFoundError):
    models.load("cifar_resnet20", str(tmp_path / "absent.th"))


def test_models_does_not_import_backbones():
  # models/ reads weights through dlsr_jax.weights and constants from dlsr_jax.normalisation;
  # the frozen backbones sit above it (backbones -> models), never below.
  code = ("import sys; import dlsr_jax.models; "
          "print(sorted(m for m in sys.modules if m.startswith('dlsr_jax.')))")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        check=False, timeout=300, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-2000:]
  loaded = proc.stdout.strip()
  assert "dlsr_jax.weights.torch_reader" in loaded, loaded
  assert "dlsr_jax.backbones" not in loaded, loaded
