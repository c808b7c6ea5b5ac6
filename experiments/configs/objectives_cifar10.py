r"""Training-time OOD methods on a CIFAR-10 ResNet-20, every net through the same detectors.

  python -m experiments.train --workdir=wd \
      --config=experiments/configs/objectives_cifar10.py:weights=resnet20-12fca82f.th,outliers=folder:data/tin597
  python -m experiments.evaluate --workdir=wd --config=...   # the same config

Nets (`c.nets`, each trained in <workdir>/<net>/, resumable; SPEC 4.4):
  base     cifar_resnet20: the `weights` file as loaded, or trained from scratch (200 epochs,
           the SPEC 4.2 recipe) when no weights are given;
  plain    cross-entropy fine-tuned from base on the fine-tuning schedule (the baseline of the
           methods fine-tuned on the same schedule);
  oe       Outlier Exposure from base (weight 0.5, 128 ID + 256 outlier images per step);
  um       Unleashing Mask from base (b estimated from a copy with 3.5 % of each layer's
           weights dropped); umap: UMAP from base (weights frozen, top-80 % mask learned);
  oe_um    Outlier Exposure started from um;
  conf     the confidence branch from base (a new sigmoid head; lambda0 0.1, beta 0.3);
  gan      the GAN synthetic outliers from base (DCGAN trained alongside, beta 0.1).
Fine-tuning schedule (`c.methods`): `finetune_epochs` epochs (10, the OE recipe), SGD Nesterov
0.9, lr `finetune_lr` (0.001) cosine, wd 5e-4, batch 128. UMAP trains its scores at
`umap_lr` (0.1: scores are a new parameterisation, as edge-popup trains them).
Detector rows: MSP, ODIN (T 1000, eps 0.0014), Energy and class-conditional Mahalanobis on
every net's pre-logits; the confidence score on conf.

Args (comma-separated): weights=PATH (the base ResNet-20 file), outliers=SOURCE (the auxiliary
outlier set: a data source that is none of the test sets; default TinyImageNet-597 under the
data root, `folder:{root}/tin597`), and the protocol args (root=PATH, runlocal). ID and OOD sets
are those of `openood_cifar10.py` (override with --config.data....).
"""

from __future__ import annotations

import ml_collections

from experiments.configs import datasets, openood_cifar10

DEFAULT_OUTLIERS = "folder:{root}/tin597"
MODEL = "cifar_resnet20"
DETECTORS = {
    "msp": dict(type="msp"),
    "odin": dict(type="odin", temperature=1000.0, eps=0.0014),
    "energy": dict(type="energy"),
    "mahalanobis": dict(type="mahalanobis", array="pre_logits", class_conditional=True,
                        shrinkage=0.0),
}


def _split_args(arg: str) -> tuple[dict, str]:
  ours, rest = {}, []
  for token in (t.strip() for t in (arg or "").split(",")):
    key, eq, value = token.partition("=")
    if eq and key in ("weights", "outliers"):
      if not value:
        raise ValueError(f"config arg {key}= needs a value")
      ours[key] = value
    elif token:
      rest.append(token)
  return ours, ",".join(rest)


def add_methods(c: ml_collections.ConfigDict, *, weights: str = "",
                outliers: str = DEFAULT_OUTLIERS) -> None:
  """Adds c.methods, the nets above and their detector rows to `c` (replacing c.detectors)."""
  c.methods = ml_collections.ConfigDict(dict(
      base_weights=weights, base_epochs=0 if weights else 200, outliers=outliers,
      finetune_epochs=10, finetune_lr=1e-3, umap_lr=0.1, outliers_batch_size=256, seed=0))
  m = c.methods
  finetune = dict(kind="classifier", model=MODEL, init_from="base", seed=m.get_ref("seed"),
                  epochs=m.get_ref("finetune_epochs"), learning_rate=m.get_ref("finetune_lr"))
  outlier_stream = dict(outliers=m.get_ref("outliers"),
                        outliers_batch_size=m.get_ref("outliers_batch_size"))
  nets = {
      "base": dict(kind="classifier", model=MODEL, weights=m.get_ref("base_weights"),
                   epochs=m.get_ref("base_epochs"), seed=m.get_ref("seed")),
      "plain": dict(finetune),
      "oe": dict(finetune, objective="outlier_exposure", weight=0.5, **outlier_stream),
      "um": dict(finetune, objective="unleashing_mask"),
      "umap": dict(finetune, objective="unleashing_mask", prune=True,
                   learning_rate=m.get_ref("umap_lr")),
      "oe_um": dict(finetune, init_from="um", objective="outlier_exposure", weight=0.5,
                    **outlier_stream),
      "conf": dict(finetune, objective="confidence_branch"),
      "gan": dict(finetune, objective="gan_outliers"),
  }
  c.nets = ml_collections.ConfigDict(nets)
  rows = {}
  for net in nets:
    for name, row in DETECTORS.items():
      rows[f"{net}_{name}"] = dict(row, net=net)
  rows["conf_confidence"] = dict(type="confidence", net="conf")
  c.detectors = ml_collections.ConfigDict(rows)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  ours, rest = _split_args(arg)
  c = openood_cifar10.get_config(rest)
  outliers = datasets.expand(ours.get("outliers", DEFAULT_OUTLIERS), c.data.get_ref("root"))
  add_methods(c, weights=ours.get("weights", ""), outliers=outliers)
  return c
