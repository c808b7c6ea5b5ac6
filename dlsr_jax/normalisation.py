"""Per-channel input normalisations (mean, std on the [0, 1] scale) shared by nets.

A neutral home for the constants, so that `models/` and `backbones/` both read them
without importing each other.
"""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# "Inception-style" (x - 127) / 128 on the [0, 255] scale: what the TF EfficientNet-Lite
# (edge) models were trained with (tensorflow/tpu, lite/efficientnet_lite_builder.py).
INCEPTION_MEAN = (127.0 / 255.0,) * 3
INCEPTION_STD = (128.0 / 255.0,) * 3
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
