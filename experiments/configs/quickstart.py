"""The offline quickstart: pretrained Lite0 features, ID = scikit-learn digits.

OOD sets are made offline from what installed packages ship: letters rendered
from matplotlib's fonts (NotMNIST-style), crops of scikit-image/scikit-learn
sample photographs, and noise images.
"""

from experiments.configs import common


def get_config(arg: str = ""):
  c = common.get_config()
  c.backbone = "efficientnet_lite0"
  c.weights = "imagenet"
  c.data.train = "offline:digits:train"
  c.data.test = "offline:digits:test"
  c.data.ood.letters = "offline:letters"
  c.data.ood.photos = "offline:photos"
  c.data.ood.noise = "offline:noise"
  c.model.width, c.model.embed_dim, c.model.num_blocks = 512, 256, 4
  c.optim.learning_rate = 1e-3
  c.optim.ema_decay = 0.999
  c.train.batch_size = 64
  c.train.num_epochs = 40
  c.train.log_every_steps = 100
  c.train.checkpoint_every_epochs = 10
  c.train.lr_reference_steps = 0   # one epoch of the 1,258 digits (19 steps)
  c.eval.ks = (3, 5, 10)
  c.eval.batch_size = 128
  if "tiny" in arg.split(","):  # for the smoke test: random weights, few images
    c.weights = "none"
    c.resolution = 64
    c.data.limit = 48
    c.model.width, c.model.embed_dim, c.model.num_blocks = 32, 16, 1
    c.train.batch_size = 16
    c.train.num_epochs = 2
    c.train.log_every_steps = 2
    c.eval.ks = (2, 3)
    c.eval.batch_size = 16
    c.eval.knn_k = 5
    c.eval.mahalanobis_shrinkage = 0.1   # N = 48 < C
  return c
