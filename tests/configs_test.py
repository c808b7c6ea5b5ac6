"""Every experiment config loads, names valid sources and takes command-line overrides."""

import dataclasses
import glob
import importlib
import os

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags
from PIL import Image

from dlsr_jax import data
from experiments.configs import datasets, protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "experiments", "configs")

PROTOCOL_VARIANTS = ("", "backbone=lite0", "backbone=efficientnet_b4", "runlocal",
                     "backbone=b4,runlocal", "root=/data/ood", "backbone=lite0,root=/x,runlocal")
VARIANTS = {
    "quickstart": ("", "tiny"),
    "cifar10_lite0": ("", "runlocal", "root=/data/ood"),
    "cifar10_effb4": ("", "runlocal", "root=/data/ood"),
}
DLSR_SIX = {"svhn", "lsun_crop", "lsun_resize", "isun", "textures", "places365"}
OPENOOD_FAR = {"mnist", "svhn", "textures", "places365"}
EXPECTED_OOD = {
    "dlsr_cifar10": DLSR_SIX,
    "dlsr_cifar100": DLSR_SIX,
    "dlsr_cifar10_gray": {"mnist", "fashion_mnist", "kmnist", "omniglot", "notmnist"},
    "dlsr_celeba": DLSR_SIX | {"cifar100"},
    "openood_cifar10": {"cifar100", "tin"} | OPENOOD_FAR,
    "openood_cifar100": {"cifar10", "tin"} | OPENOOD_FAR,
    "cifar10_lite0": DLSR_SIX,
    "cifar10_effb4": DLSR_SIX,
}
EXPECTED_ID = {"dlsr_cifar100": "cifar100", "openood_cifar100": "cifar100",
               "dlsr_celeba": "celeb_a"}
EXPECTED_GROUPS = {
    "openood_cifar10": {"near": "cifar100,tin", "far": "mnist,svhn,textures,places365"},
    "openood_cifar100": {"near": "cifar10,tin", "far": "mnist,svhn,textures,places365"},
}
PROTOCOLS = sorted(n for n in EXPECTED_OOD if n.startswith(("dlsr_", "openood_")))


def _config_names():
  names = []
  for path in sorted(glob.glob(os.path.join(CONFIG_DIR, "*.py"))):
    name = os.path.splitext(os.path.basename(path))[0]
    if hasattr(importlib.import_module(f"experiments.configs.{name}"), "get_config") \
        and name != "common":
      names.append(name)
  return names


def _load(name, arg=""):
  return importlib.import_module(f"experiments.configs.{name}").get_config(arg)


def _all_variants():
  return [(n, v) for n in _config_names()
          for v in VARIANTS.get(n, PROTOCOL_VARIANTS if n in PROTOCOLS else ("",))]


def _sources(c):
  return [c.data.train, c.data.test] + [v for _, v in sorted(c.data.ood.items())]


def test_every_protocol_has_a_config_file():
  assert set(PROTOCOLS) | set(VARIANTS) <= set(_config_names())
  assert len(PROTOCOLS) == 6


@pytest.mark.parametrize("name,arg", _all_variants())
def test_config_loads_and_every_source_is_valid(name, arg):
  c = _load(name, arg)
  for source in _sources(c):
    datasets.check_source(source)
  assert c.data.ood, name
  if name in EXPECTED_OOD:
    assert set(c.data.ood) == EXPECTED_OOD[name]
    want_id = EXPECTED_ID.get(name, "cifar10")
    assert c.data.train == f"tfds:{want_id}:train" and c.data.test == f"tfds:{want_id}:test"
    assert set(c.data.groups) == set(EXPECTED_GROUPS.get(name, {}))
    for group in c.data.groups.values():
      members = group.split(",")
      assert members and set(members) <= set(c.data.ood), (name, group)
  c.lock()   # what the entry points do; must not fail


def test_config_source_schemes_match_the_data_module():
  assert datasets.SCHEMES == data.SCHEMES


@pytest.mark.parametrize("name", PROTOCOLS)
def test_groups_match_expected(name):
  assert _load(name).data.groups.to_dict() == EXPECTED_GROUPS.get(name, {})


@pytest.mark.parametrize("name", PROTOCOLS)
def test_backbone_arg_sets_weights_and_paper_lfdn_size(name):
  b4 = _load(name)
  assert (b4.backbone, b4.weights) == ("efficientnet_b4", "efficientnet-b4-6ed6700e.pth")
  assert (b4.model.width, b4.model.embed_dim, b4.model.num_blocks) == (1440, 720, 16)
  lite = _load(name, "backbone=lite0")
  assert (lite.backbone, lite.weights) == ("efficientnet_lite0", "imagenet")
  assert (lite.model.width, lite.model.embed_dim, lite.model.num_blocks) == (1024, 512, 16)
  small = _load(name, "backbone=lite0,runlocal")
  assert small.data.limit == 512 and small.train.num_epochs == 3
  assert (small.model.width, small.model.embed_dim, small.model.num_blocks) == (256, 128, 4)
  assert _load(name).data.limit == 0
  assert _load(name, "backbone=lite2").weights == "imagenet"  # also shipped offline
  assert _load(name, "backbone=lite3").weights == "efficientnet-lite3-*.pth"


def test_dlsr_defaults_come_from_the_library():
  from dlsr_jax import lfdn, schedule  # pylint: disable=g-import-not-at-top
  from dlsr_jax.detectors.dlsr import DLSRSettings  # pylint: disable=g-import-not-at-top
  from dlsr_jax.training import loop, optim  # pylint: disable=g-import-not-at-top
  from experiments.configs import common  # pylint: disable=g-import-not-at-top
  c, settings = common.get_config(), DLSRSettings()
  assert set(common.DLSR_REFS) == {f.name for f in dataclasses.fields(DLSRSettings)} - {"levels"}
  for name, (block, key) in common.DLSR_REFS.items():
    assert c[block][key] == getattr(settings, name), name
    assert type(c[block][key]) is type(getattr(settings, name)), name
  # DLSRSettings' own defaults are the library configs' (the paper's recipe).
  paper = lfdn.paper_config(720)
  assert (settings.width, settings.embed_dim, settings.num_blocks) == (1440, 720, 16) == (
      paper.width, paper.embed_dim, paper.num_blocks)
  assert settings.model(720) == lfdn.LFDNConfig(features=720) == paper
  assert settings.schedule_kind == schedule.ScheduleConfig().kind == "scaled_linear"
  assert settings.optim() == optim.AdamWConfig()
  assert settings.fit(seed=0) == loop.FitConfig()


def test_legacy_cifar10_configs_keep_their_backbones():
  assert _load("cifar10_lite0").backbone == "efficientnet_lite0"
  eff = _load("cifar10_effb4", "runlocal")
  assert eff.backbone == "efficientnet_b4" and eff.model.width == 256
  assert _load("cifar10_lite0", "runlocal").to_dict() == _load(
      "dlsr_cifar10", "backbone=lite0,runlocal").to_dict()


def test_openood_sources():
  c = _load("openood_cifar10", "root=/d")
  assert c.data.ood.mnist == "tfds:mnist:train+test"
  assert c.data.ood.textures == "tfds:dtd:train+validation+test"
  assert c.data.ood.tin == "folder:/d/openood/cifar10/tin"
  assert _load("openood_cifar100", "root=/d").data.ood.places365 == \
      "folder:/d/openood/cifar100/places365"


def test_root_arg_and_root_key_move_every_folder_set():
  c = _load("dlsr_cifar10", "root=/data/ood")
  assert c.data.ood.lsun_crop == "folder:/data/ood/LSUN"
  assert c.data.ood.svhn == "tfds:svhn_cropped:test"
  c.lock()
  c.data.root = "/elsewhere"
  assert {k: v for k, v in c.data.ood.items() if v.startswith("folder:")} == {
      "lsun_crop": "folder:/elsewhere/LSUN", "lsun_resize": "folder:/elsewhere/LSUN_resize",
      "isun": "folder:/elsewhere/iSUN", "places365": "folder:/elsewhere/Places365"}
  c.data.ood.isun = "folder:/my/iSUN"     # one set overridden, the others still follow root
  c.data.root = "/r"
  assert (c.data.ood.isun, c.data.ood.lsun_crop) == ("folder:/my/iSUN", "folder:/r/LSUN")
  assert '"lsun_crop": "folder:/r/LSUN"' in c.to_json_best_effort()


def _parse_flags(*argv):
  fv = flags.FlagValues()
  argv = ["prog", *argv]
  # As in experiments/{train,evaluate}.py; sys_argv tells config_flags which
  # override flags to define (it reads sys.argv by default).
  config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  return fv.config


def test_command_line_overrides_through_config_flags():
  path = os.path.join(CONFIG_DIR, "dlsr_cifar10.py")
  c = _parse_flags(f"--config={path}:backbone=lite0,runlocal",
                   "--config.data.ood.svhn=folder:/my/svhn", "--config.data.root=/mnt/ood",
                   "--config.data.tfds_data_dir=/mnt/tfds")
  assert c.backbone == "efficientnet_lite0" and c.data.limit == 512
  assert c.data.ood.svhn == "folder:/my/svhn"
  assert c.data.ood.lsun_resize == "folder:/mnt/ood/LSUN_resize"
  assert c.data.tfds_data_dir == "/mnt/tfds"
  c = _parse_flags(f"--config={os.path.join(CONFIG_DIR, 'openood_cifar10.py')}",
                   "--config.data.groups.near=cifar100", "--config.weights=/w/b4.pth")
  assert c.data.groups.near == "cifar100" and c.weights == "/w/b4.pth"


@pytest.mark.parametrize("arg,match", [
    ("backbone=vgg16", "unknown backbone 'vgg16'"),
    ("runlocl", "unknown config arg 'runlocl'"),
    ("root=", "unknown config arg 'root='"),
    ("runlocal=1", "unknown config arg"),
    ("backbone=b4,backbone=lite0", "'backbone' given twice"),
])
def test_bad_args_fail_with_clear_errors(arg, match):
  with pytest.raises(ValueError, match=match):
    _load("dlsr_cifar10", arg)


def test_cifar10_lite0_rejects_a_second_backbone():
  with pytest.raises(ValueError, match="given twice"):
    _load("cifar10_lite0", "backbone=b4")


def test_parse_args_aliases():
  assert protocol.parse_args(" backbone=lite2 , runlocal ") == protocol.Args(
      backbone="efficientnet_lite2", runlocal=True)
  assert protocol.parse_args("backbone=resnet50").backbone == "resnet50"
  assert protocol.feature_dim("efficientnet_b4") == 720
  assert protocol.feature_dim("efficientnet_lite0") == 512


@pytest.mark.parametrize("source,match", [
    ("tfds:dtd:bogus", "no split 'bogus'.*train, validation, test"),
    ("tfds:places365_small:val", "no split 'val'"),
    ("tfds:imagenet2012:test", "not one the protocols use"),
    ("tfds:cifar10", "tfds:NAME:SPLIT"),
    ("http://x", "unknown scheme 'http'"),
    ("folder:", "no \\(expanded\\) path"),
    ("folder:{root}/LSUN", "no \\(expanded\\) path"),
    ("svhn", "SCHEME:"),
])
def test_check_source_errors(source, match):
  with pytest.raises(ValueError, match=match):
    datasets.check_source(source)


def test_check_source_accepts_split_expressions():
  for s in ("tfds:mnist:test[:50%]", "tfds:dtd:train+validation+test", "tfds:cifar10:3.0.2:test",
            "folder:/a/b", "npz:x.npz", "offline:digits:train"):
    datasets.check_source(s)
  assert datasets.tfds_split_names("train[10:]+test") == ["train", "test"]


def test_unknown_dataset_keys():
  with pytest.raises(ValueError, match="unknown OOD set 'lsun'"):
    datasets.ood_source("lsun")
  with pytest.raises(ValueError, match="unknown ID set 'svhn'"):
    datasets.id_sources("svhn")
  with pytest.raises(ValueError, match="unknown OOD sets \\['nope'\\]"):
    protocol.build("", protocol="p", id_set="cifar10", ood={"svhn": "svhn"},
                   groups={"far": ["svhn", "nope"]})


def test_folder_sources_load_from_a_data_root(tmp_path):
  """Every folder set of every protocol loads through dlsr_jax.data from root=tmp."""
  folders = set()
  for name in PROTOCOLS:
    c = _load(name, f"root={tmp_path}")
    folders |= {v for v in c.data.ood.values() if v.startswith("folder:")}
  rng = np.random.default_rng(0)
  for source in folders:
    path = source[len("folder:"):]
    os.makedirs(os.path.join(path, "class_a"))
    Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).save(
        os.path.join(path, "class_a", "0.png"))
  assert len(folders) == 9
  for source in sorted(folders):
    assert data.load_images(source, image_size=8).images.shape == (1, 8, 8, 3), source


def test_tfds_sources_load_with_mocked_data(tmp_path, no_network):
  """Every TFDS source is a registered builder with an `image` feature (mocked, offline)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  sources = set()
  for name in PROTOCOLS:
    c = _load(name)
    sources |= {s for s in _sources(c) if s.startswith("tfds:")}
  sources |= {s for s in datasets.OOD_SOURCES.values() if s.startswith("tfds:")}
  assert {s.split(":")[1] for s in sources} == set(datasets.TFDS_SPLITS)
  with tfds.testing.mock_data(num_examples=2):
    for source in sorted(sources):
      s = data.load_images(source, image_size=8, tfds_data_dir=str(tmp_path))
      assert s.images.shape == (2, 8, 8, 3), source


def test_objectives_config_args_and_overrides():
  weights = os.path.join(ROOT, "..", "shared", "weights", "cifar10_resnet", "w.th")
  c = _parse_flags(f"--config={os.path.join(CONFIG_DIR, 'objectives_cifar10.py')}:"
                   f"weights={weights},outliers=npz:/o/intel_scenes.npz,root=/r",
                   "--config.methods.finetune_epochs=3", "--config.nets.oe.weight=0.25")
  assert c.nets.base.weights == weights and c.nets.base.epochs == 0
  assert c.nets.oe.outliers == "npz:/o/intel_scenes.npz" == c.nets.oe_um.outliers
  assert c.nets.oe.epochs == 3 == c.nets.gan.epochs and c.nets.oe.weight == 0.25
  assert c.data.root == "/r"
  c = _parse_flags(f"--config={os.path.join(CONFIG_DIR, 'objectives_cifar10.py')}",
                   "--config.data.root=/mnt")
  assert c.nets.oe.outliers == "folder:/mnt/tin597" and c.nets.base.epochs == 200
