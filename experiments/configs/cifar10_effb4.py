"""The paper's setting: ID CIFAR-10, EfficientNet-B4 at 224x224, C = 720.

Bring the weights: --config.weights=/path/to/efficientnet-b4-6ed6700e.pth
(or the native file written by experiments.convert_weights).
"""

from experiments.configs import cifar10_lite0


def get_config(arg: str = ""):
  c = cifar10_lite0.get_config(arg)
  c.backbone = "efficientnet_b4"
  c.weights = "efficientnet-b4-6ed6700e.pth"
  if "runlocal" not in arg.split(","):
    c.model.width, c.model.embed_dim, c.model.num_blocks = 1440, 720, 16
  return c
