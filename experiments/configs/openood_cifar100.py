"""OpenOOD v1.5 CIFAR-100 protocol: near = CIFAR-10, TinyImageNet; far = MNIST, SVHN,
Textures, Places365 (results also averaged per group: data.groups).

Same sources as openood_cifar10.py, with the CIFAR-100 image lists for TIN and
Places365 (docs/DATASETS.md).
Args (comma-separated): backbone=efficientnet_b4 (default) | lite0 | ..., root=PATH,
runlocal. See experiments/configs/protocol.py.
"""

from experiments.configs import openood_cifar10
from experiments.configs import protocol

NEAR = ("cifar10", "tin")
VAL = openood_cifar10.VAL


def get_config(arg: str = ""):
  return protocol.build(arg, protocol="openood_v1.5_cifar100", id_set="cifar100",
                        ood=openood_cifar10.ood_sets("cifar100", "cifar10"),
                        groups={"near": NEAR, "far": openood_cifar10.FAR},
                        val=VAL, ood_val="openood_cifar100_tin_val")
