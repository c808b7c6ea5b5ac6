"""OpenOOD v1.5 CIFAR-10 protocol: near = CIFAR-100, TinyImageNet; far = MNIST, SVHN,
Textures, Places365 (results also averaged per group: data.groups).

TIN and Places365 are the OpenOOD image lists materialised as folders under
data.root (docs/DATASETS.md); the others come from TFDS with the same images
(MNIST: train + test = 70,000; Textures: all 5,640 DTD images).
Args (comma-separated): backbone=efficientnet_b4 (default) | lite0 | ..., root=PATH,
runlocal. See experiments/configs/protocol.py.
"""

from experiments.configs import protocol

NEAR = ("cifar100", "tin")
FAR = ("mnist", "svhn", "textures", "places365")
# Validation sets (tuning, and the ID-val fits of ReAct, VRA, Residual, KLM, TempScale): a
# fixed 10 % of the ID train source, and OpenOOD's OOD-val list (val_tin.txt, disjoint from
# its test TIN) materialised under data.root like the test lists.
VAL = "holdout:0.1"


def ood_sets(id_set: str, near_set: str) -> dict:
  """{config name: datasets.OOD_SOURCES key} of the OpenOOD v1.5 protocol for `id_set`."""
  return {
      near_set: near_set,
      "tin": f"openood_{id_set}_tin",
      "mnist": "mnist_all",
      "svhn": "svhn",
      "textures": "textures",
      "places365": f"openood_{id_set}_places365",
  }


def get_config(arg: str = ""):
  return protocol.build(arg, protocol="openood_v1.5_cifar10", id_set="cifar10",
                        ood=ood_sets("cifar10", "cifar100"),
                        groups={"near": NEAR, "far": FAR},
                        val=VAL, ood_val="openood_cifar10_tin_val")
