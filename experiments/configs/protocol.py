"""Shared builder of the benchmark protocol configs (dlsr_*.py, openood_*.py).

Config args (after the file name, comma-separated, any order):

  backbone=NAME  efficientnet_b4 (default; alias b4) with the paper's
                 efficientnet-b4-6ed6700e.pth, or lite0 (efficientnet_lite0,
                 offline ImageNet weights, as lite1 and lite2), or any other
                 registry name / alias (b0-b7, lite0-lite4, resnet50).
  root=PATH      data root of the folder sets (default "data"; also
                 --config.data.root=PATH, which every folder path follows).
  runlocal       shrink everything for a CPU smoke run.

e.g. --config=experiments/configs/dlsr_cifar10.py:backbone=lite0,root=/data/ood

The LFDN follows the paper: width W = 2C, embedding E = C, N = 16 blocks, with
C the feature dimension of the backbone's default layers (B4: 720, Lite0: 512).
Keys added to common.py: data.root, data.protocol; data.groups (common.py's
near/far groups of OOD set names as comma-separated strings) is filled in, or
left empty when the protocol has none.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import ml_collections

from experiments.configs import common
from experiments.configs import datasets
from experiments.configs import methods

DEFAULT_BACKBONE = "efficientnet_b4"
BACKBONE_ALIASES = {
    **{f"b{i}": f"efficientnet_b{i}" for i in range(8)},
    **{f"lite{i}": f"efficientnet_lite{i}" for i in range(5)},
    "r50": "resnet50",
}
FLAGS = ("runlocal",)
KEYS = ("backbone", "root")


@dataclasses.dataclass(frozen=True)
class Args:
  """Parsed config args."""
  backbone: str = DEFAULT_BACKBONE
  root: str = datasets.DEFAULT_ROOT
  runlocal: bool = False


def parse_args(arg: str) -> Args:
  """'backbone=lite0,root=/data,runlocal' -> Args; raises ValueError on anything else."""
  values: dict = {}
  for token in (t.strip() for t in (arg or "").split(",")):
    if not token:
      continue
    key, eq, value = token.partition("=")
    if not eq and key in FLAGS:
      name, parsed = key, True
    elif eq and key in KEYS and value:
      name, parsed = key, value
    else:
      raise ValueError(f"unknown config arg {token!r} in {arg!r}; expected a comma-separated "
                       f"list of {', '.join(k + '=VALUE' for k in KEYS)}, "
                       f"{', '.join(FLAGS)}")
    if name in values:
      raise ValueError(f"config arg {name!r} given twice in {arg!r}")
    values[name] = parsed
  if "backbone" in values:
    values["backbone"] = resolve_backbone(values["backbone"])
  return Args(**values)


def resolve_backbone(name: str) -> str:
  """Alias or registry name -> registry name (raises ValueError if unknown)."""
  from dlsr_jax import backbones  # pylint: disable=g-import-not-at-top
  full = BACKBONE_ALIASES.get(name, name)
  if full not in backbones.names():
    raise ValueError(f"unknown backbone {name!r}; use one of {', '.join(backbones.names())} "
                     f"or an alias {', '.join(BACKBONE_ALIASES)}")
  return full


def feature_dim(backbone: str) -> int:
  """C of the backbone's default DLSR layers (efficientnet_b4: 720, lite0: 512)."""
  from dlsr_jax import backbones  # pylint: disable=g-import-not-at-top
  cfg = backbones.config(backbone)
  return sum(cfg.level_channels[i] for i in cfg.default_layers)


def default_weights(backbone: str) -> str:
  """'imagenet' where weights ship offline (Lite0-Lite2), else the usual file name."""
  from dlsr_jax import backbones  # pylint: disable=g-import-not-at-top
  if backbone in backbones.offline_imagenet_names():
    return "imagenet"
  return backbones.config(backbone).reference_weights


def apply_backbone(c: ml_collections.ConfigDict, backbone: str) -> None:
  """Backbone, weights and the paper's LFDN size W = 2C, E = C, N = 16."""
  dim = feature_dim(backbone)
  c.backbone = backbone
  c.weights = default_weights(backbone)
  c.model.width, c.model.embed_dim, c.model.num_blocks = methods.lfdn_size(dim)


def apply_runlocal(c: ml_collections.ConfigDict) -> None:
  """Few images, a small LFDN and 3 epochs: a CPU smoke run of the whole pipeline."""
  c.data.limit = 512
  c.model.width, c.model.embed_dim, c.model.num_blocks = 256, 128, 4
  c.train.num_epochs = 3
  c.train.batch_size = 64
  c.train.log_every_steps = 4


def make_groups(groups: Mapping[str, Sequence[str]]) -> ml_collections.ConfigDict:
  """{"near": ["cifar100", "tin"]} -> ConfigDict(near="cifar100,tin")."""
  return ml_collections.ConfigDict({g: ",".join(names) for g, names in groups.items()})


def build(arg: str, *, protocol: str, id_set: str, ood: Mapping[str, str],
          groups: Mapping[str, Sequence[str]] = (), val: str = "",
          ood_val: str = "") -> ml_collections.ConfigDict:
  """A protocol config on top of common.get_config().

  Args:
    arg: the config arg string (see the module docstring).
    protocol: its name, stored as data.protocol (e.g. "openood_v1.5_cifar10").
    id_set: a key of datasets.ID_SETS.
    ood: {OOD set name in the config: datasets.OOD_SOURCES key}.
    groups: {group name: OOD set names}, e.g. near/far.
    val: data.val, the ID validation split ("holdout:FRACTION" of the ID train source, or
      a source); "" = none.
    ood_val: a datasets.OOD_SOURCES key: data.ood_val, the OOD validation set (never one of
      the test sets: experiments.build refuses that); "" = none.

  Returns:
    The unlocked ConfigDict.
  """
  args = parse_args(arg)
  groups = dict(groups)
  for g, names in groups.items():
    missing = [n for n in names if n not in ood]
    if missing:
      raise ValueError(f"group {g!r} of {protocol} names unknown OOD sets {missing}")
  c = common.get_config()
  c.data.root = args.root
  c.data.protocol = protocol
  c.data.train, c.data.test = datasets.id_sources(id_set)
  datasets.set_ood(c, ood)
  c.data.groups = make_groups(groups)
  c.data.val = val
  if ood_val:
    c.data.ood_val = datasets.ood_source(ood_val, c.data.get_ref("root"))
  c.eval.trapezoid_aupr = protocol.startswith("openood")   # OpenOOD reports the trapezoid
  apply_backbone(c, args.backbone)
  if args.runlocal:
    apply_runlocal(c)
  return c
