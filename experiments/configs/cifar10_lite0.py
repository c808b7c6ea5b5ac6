"""ID CIFAR-10 with EfficientNet-Lite0 (offline weights) vs the DLSR OOD sets.

Variants: `...cifar10_lite0.py:runlocal` shrinks everything for a CPU run.
"""

from experiments.configs import common


def get_config(arg: str = ""):
  c = common.get_config()
  c.backbone = "efficientnet_lite0"
  c.data.train = "tfds:cifar10:train"
  c.data.test = "tfds:cifar10:test"
  c.data.ood.svhn = "tfds:svhn_cropped:test"
  c.data.ood.lsun_crop = "folder:data/LSUN"
  c.data.ood.lsun_resize = "folder:data/LSUN_resize"
  c.data.ood.isun = "folder:data/iSUN"
  c.data.ood.textures = "tfds:dtd:test"
  c.data.ood.places365 = "folder:data/Places365"
  c.model.width, c.model.embed_dim = 1024, 512   # C = 512 for Lite0
  if "runlocal" in arg.split(","):
    c.data.limit = 512
    c.model.width, c.model.embed_dim, c.model.num_blocks = 256, 128, 4
    c.train.num_epochs = 3
    c.train.batch_size = 64
    c.train.log_every_steps = 4
  return c
