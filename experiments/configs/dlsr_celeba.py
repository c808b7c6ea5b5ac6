"""DLSR protocol, ID CelebA (TFDS celeb_a train/test, resized to 32x32).

OOD sets as in the DLSR release for CelebA: CIFAR-100 and the six DLSR sets
(SVHN, LSUN-crop, LSUN-resize, iSUN, Textures, Places365).
Args (comma-separated): backbone=efficientnet_b4 (default) | lite0 | ..., root=PATH,
runlocal. See experiments/configs/protocol.py and docs/DATASETS.md.
"""

from experiments.configs import dlsr_cifar10
from experiments.configs import protocol

OOD = {"cifar100": "cifar100", **dlsr_cifar10.OOD}


def get_config(arg: str = ""):
  return protocol.build(arg, protocol="dlsr_celeba", id_set="celeba", ood=OOD)
