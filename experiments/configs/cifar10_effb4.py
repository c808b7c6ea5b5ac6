"""The paper's setting: ID CIFAR-10, EfficientNet-B4 at 224x224, C = 720 (W = 1440, E = 720).

The DLSR CIFAR-10 protocol (dlsr_cifar10.py) with backbone=efficientnet_b4.
Bring the weights: --config.weights=/path/to/efficientnet-b4-6ed6700e.pth
(or the native file written by experiments.convert_weights).
Variants: `runlocal`, `root=PATH` (see dlsr_cifar10.py).
"""

from experiments.configs import dlsr_cifar10


def get_config(arg: str = ""):
  return dlsr_cifar10.get_config(",".join(a for a in ("backbone=efficientnet_b4", arg) if a))
