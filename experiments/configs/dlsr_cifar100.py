"""DLSR paper protocol, ID CIFAR-100: SVHN, LSUN-crop, LSUN-resize, iSUN, Textures, Places365.

Args (comma-separated): backbone=efficientnet_b4 (default) | lite0 | ..., root=PATH,
runlocal. See experiments/configs/protocol.py and docs/DATASETS.md.
"""

from experiments.configs import dlsr_cifar10
from experiments.configs import protocol


def get_config(arg: str = ""):
  return protocol.build(arg, protocol="dlsr_cifar100", id_set="cifar100", ood=dlsr_cifar10.OOD)
