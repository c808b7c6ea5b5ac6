"""The offline quickstart: pretrained Lite0 features, ID = handwritten digits 0-4.

Near-OOD = the digits 5-9 (same style, unseen classes); far-OOD = letters rendered from
matplotlib's fonts (NotMNIST-style), crops of scikit-image/scikit-learn sample photographs,
and noise images. Rows: DLSR (MSE / MFsim / LR at several k), Mahalanobis and KNN on the
backbone features, and a small MLP head on the same cached features (trained on the ID digits
with their labels) with MSP, ODIN, Energy, class-conditional Mahalanobis and KNN on its
outputs. ODIN on a head cannot perturb pixels (the backbone is not differentiated): its
input step is taken on the head's input features (eps in feature units, z-scored features).
"""

import ml_collections

from experiments.configs import common

VARIANTS = ("tiny",)   # `quickstart.py:tiny`: random weights, few images (the smoke test)


def parse_variants(arg: str) -> set[str]:
  """'tiny' -> {"tiny"}; raises ValueError naming an unknown variant and the valid ones."""
  words = {w.strip() for w in (arg or "").split(",") if w.strip()}
  unknown = sorted(words - set(VARIANTS))
  if unknown:
    raise ValueError(f"unknown quickstart config variant(s) {unknown} in {arg!r}; valid: "
                     f"{', '.join(VARIANTS)} (comma-separated), or none")
  return words


def get_config(arg: str = ""):
  variants = parse_variants(arg)
  c = common.get_config()
  c.backbone = "efficientnet_lite0"
  c.weights = "imagenet"
  c.data.train = "offline:digits04:train"
  c.data.test = "offline:digits04:test"
  c.data.ood.digits59 = "offline:digits59:test"
  c.data.ood.letters = "offline:letters"
  c.data.ood.photos = "offline:photos"
  c.data.ood.noise = "offline:noise"
  c.data.groups.near = "digits59"
  c.data.groups.far = "letters,photos,noise"
  c.model.width, c.model.embed_dim, c.model.num_blocks = 512, 256, 4
  c.optim.learning_rate = 1e-3
  c.optim.ema_decay = 0.999
  c.train.batch_size = 64
  c.train.num_epochs = 40
  c.train.log_every_steps = 100
  c.train.checkpoint_every_epochs = 10
  c.train.lr_reference_steps = 0   # one epoch of the 631 ID digits (9 steps)
  c.eval.ks = (3, 5, 10)
  c.eval.batch_size = 128
  c.eval.knn_k = 10                # 631 training images (the paper's 50 is for 50,000)

  c.nets.head = ml_collections.ConfigDict(dict(
      kind="head", model="mlp_head", hidden=128, num_classes=5, epochs=30, batch_size=64,
      learning_rate=0.05, log_every_steps=100))
  row = lambda type_, **kw: ml_collections.ConfigDict(dict(type=type_, net="head", **kw))
  c.detectors.head_msp = row("msp")
  c.detectors.head_odin = row("odin", input="features", temperature=1000.0, eps=0.005)
  c.detectors.head_energy = row("energy")
  c.detectors.head_mahalanobis = row("mahalanobis", array="pre_logits",
                                     class_conditional=True, shrinkage=0.01)
  c.detectors.head_knn = row("knn", array="pre_logits", k=c.eval.get_ref("knn_k"))
  if "tiny" in variants:  # for the smoke test: random weights, few images
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
    c.nets.head.epochs, c.nets.head.batch_size, c.nets.head.hidden = 2, 16, 16
    c.detectors.head_mahalanobis.shrinkage = 0.1
  return c
