"""ID CIFAR-10 vs the greyscale sets: MNIST, FashionMNIST, KMNIST, Omniglot, NotMNIST.

Greyscale images are repeated to RGB and resized to data.image_size (32).
Args (comma-separated): backbone=efficientnet_b4 (default) | lite0 | ..., root=PATH
(NotMNIST folder), runlocal. See experiments/configs/protocol.py and docs/DATASETS.md.
"""

from experiments.configs import protocol

OOD = {
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist",
    "kmnist": "kmnist",
    "omniglot": "omniglot",
    "notmnist": "notmnist",
}


def get_config(arg: str = ""):
  return protocol.build(arg, protocol="dlsr_cifar10_gray", id_set="cifar10", ood=OOD)
