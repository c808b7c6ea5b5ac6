"""DLSR paper protocol, ID CIFAR-10: SVHN, LSUN-crop, LSUN-resize, iSUN, Textures, Places365.

Args (comma-separated): backbone=efficientnet_b4 (default, paper) | lite0 | ...,
root=PATH (folder sets), runlocal. See experiments/configs/protocol.py and
docs/DATASETS.md, e.g.

  python -m experiments.train --config=experiments/configs/dlsr_cifar10.py:backbone=lite0 \
      --workdir=wd
"""

from experiments.configs import protocol

OOD = {
    "svhn": "svhn",
    "lsun_crop": "lsun_crop",
    "lsun_resize": "lsun_resize",
    "isun": "isun",
    "textures": "textures",
    "places365": "places365",
}


def get_config(arg: str = ""):
  return protocol.build(arg, protocol="dlsr_cifar10", id_set="cifar10", ood=OOD)
