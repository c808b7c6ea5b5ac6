"""ID CIFAR-10 with EfficientNet-Lite0 (offline weights) vs the DLSR OOD sets.

The DLSR CIFAR-10 protocol (dlsr_cifar10.py) with backbone=lite0: LFDN W = 1024,
E = 512, N = 16. Variants: `...cifar10_lite0.py:runlocal` shrinks everything for a
CPU run; `root=PATH` sets the folder-set root (see dlsr_cifar10.py).
"""

from experiments.configs import dlsr_cifar10


def get_config(arg: str = ""):
  return dlsr_cifar10.get_config(",".join(a for a in ("backbone=lite0", arg) if a))
