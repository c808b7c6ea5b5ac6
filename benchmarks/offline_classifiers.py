r"""Offline benchmark of the classifier-based detectors next to DLSR, on real CIFAR-10 data.

  python -m benchmarks.offline_classifiers --data_dir=../shared/data \
      --weights_dir=../shared/weights/cifar10_resnet

Networks: the published CIFAR-10 ResNet-20 and ResNet-56 (option A, ImageNet mean/std on
32x32 inputs), and a linear head trained on frozen EfficientNet-Lite0 features (the DLSR
setting, the same cached features as `benchmarks.offline_cifar10`) with the ID labels.
Detectors on each: MSP, ODIN, Energy, class-conditional Mahalanobis and KNN on the
penultimate features. On the Lite0 features also the label-free Mahalanobis and KNN, and
the DLSR rows read from the `offline_cifar10` run's report when it exists (same features,
same sets). ID = `cifar10_test_exact` (never the JPEG copy: it costs these nets ~10 points),
fit sets = `cifar10_train_exact` (5,170 images with labels). Writes a section of
`benchmarks/RESULTS.md`; every stage's wall time is measured.

ODIN on the head: its input is the feature vector, not pixels, so only the temperature part
applies (eps = 0; the row is named "ODIN (T only)").

  python -m benchmarks.offline_classifiers --quick --out_dir=/tmp/bq   # smoke run, seconds

--quick: tiny random sets in <out_dir>/data (unless --data_dir is given; shared with
`offline_cifar10 --quick`, whose feature cache in <out_dir>/offline_cifar10 it reuses),
a randomly initialised ResNet-20 only (no weights files), random Lite0 at 32x32, a 1-epoch
head, KNN k = 5; the section goes to <out_dir>/RESULTS.md, never benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import app, flags, logging

from dlsr_jax import detectors, features, models
from dlsr_jax.data import batching
from dlsr_jax.evaluation import metrics
from dlsr_jax.training import classifier as classifiers
from experiments import run as experiments_run
from experiments.configs import common
from benchmarks import common as common_bench
from benchmarks import offline_features
from benchmarks.common import machine, write_section

_DATA = flags.DEFINE_string("data_dir", None, "Folder with the .npz data sets.")
_WEIGHTS = flags.DEFINE_string("weights_dir", None, "Folder with resnet20-*.th, resnet56-*.th.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/dlsr_bench_classifiers", "Work directory.")
_FEATURES = flags.DEFINE_string("feature_workdir", "/tmp/dlsr_bench_cifar10",
                                "The offline_cifar10 workdir (its feature cache and report).")
_RESULTS = flags.DEFINE_string("results_md", os.path.join(os.path.dirname(__file__), "RESULTS.md"),
                               "Markdown file whose offline_classifiers section is rewritten.")
_T = flags.DEFINE_float("odin_temperature", 1000.0, "ODIN temperature (paper default).")
_EPS = flags.DEFINE_float("odin_eps", 0.0014, "ODIN input perturbation, [0, 1] pixel units.")
_KNN_K = flags.DEFINE_integer("knn_k", 50, "KNN neighbour rank (Sun et al.: 50).")
_HEAD_EPOCHS = flags.DEFINE_integer("head_epochs", 30, "Linear-head training epochs.")
_HEAD_LR = flags.DEFINE_float("head_lr", 0.1, "Linear-head peak learning rate (cosine).")
_LIMIT = flags.DEFINE_integer("limit", 0, "First N images of every set (0 = all; smoke runs).")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke run in seconds (see the module docstring); "
                           "needs --out_dir.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "--quick: where everything is written.")

ID_TRAIN, ID_TEST = "cifar10_train_exact", "cifar10_test_exact"
FAR = {"isun": "isun", "mnist": "mnist_test", "fashionmnist": "fashionmnist_test", "dtd": "dtd"}
NEAR = {"cifar100": "cifar100_test_exact"}
NETS = {"ResNet-20": ("cifar_resnet20", "resnet20-12fca82f.th"),
        "ResNet-56": ("cifar_resnet56", "resnet56-4bfd9763.th")}


def load_npz(data_dir: str, name: str) -> dict:
  path = os.path.join(data_dir, name + ".npz")
  if not os.path.exists(path):
    raise FileNotFoundError(f"benchmark data file {path} is missing")
  with np.load(path) as f:
    out = {"images": f["images"], "labels": f["labels"]}
  if _LIMIT.value:
    out = {k: v[:_LIMIT.value] for k, v in out.items()}
  return out


def detector_rows(net=None, shrinkage: float = 0.0) -> dict:
  """Row title -> detector, the same methods on every classifier (ODIN only with pixels).

  `shrinkage` of the class-conditional Mahalanobis: 0 on the ResNets' 64-d penultimate
  features; the linear head's penultimate array is the per-level z-scored Lite0 feature
  vector, singular by construction, so it gets the features baseline's 0.01.
  """
  rows = {"MSP": detectors.make("msp"), "Energy": detectors.make("energy")}
  if net is not None:
    rows["ODIN"] = detectors.make("odin", net=net, temperature=_T.value, eps=_EPS.value)
  rows["Mahalanobis (class-cond., pre_logits)"] = detectors.make(
      "mahalanobis", array="pre_logits", class_conditional=True, shrinkage=shrinkage)
  rows[f"KNN (pre_logits, k={_KNN_K.value})"] = detectors.make("knn", array="pre_logits",
                                                               k=_KNN_K.value)
  return rows


def odin_t_only(logits: np.ndarray) -> np.ndarray:
  """ODIN with eps = 0: -max softmax(logits / T)."""
  z = logits / _T.value
  z = z - z.max(axis=1, keepdims=True)
  p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
  return -p.max(axis=1)


def net_arrays(net, images: np.ndarray) -> dict:
  """logits [N, K] and pre_logits [N, D] of a net over uint8 images (or features for a head)."""
  fn = jax.jit(lambda p, x: net.apply(p, net.preprocess(x) if net.resolution else x))

  def one(x):
    logits, out = fn(net.params, x)
    return {"logits": logits, "pre_logits": out["pre_logits"]}
  return batching.map_padded(one, images, 256, full_batches=True)


def evaluate_rows(rows: dict, train: dict, sets: dict, key) -> dict:
  """{row: {"fit_s", "score_s", "auroc": {set}, "fpr95": {set}}} (OOD positive)."""
  out = {}
  for title, det in rows.items():
    t0 = time.time()
    state = det.fit({k: train[k] for k in det.fit_reads}, key)
    t1 = time.time()
    scores = {n: next(iter(det.score(state, {k: a[k] for k in det.reads}, key).values()))
              for n, a in sets.items()}
    out[title] = summarise(scores) | {"fit_s": t1 - t0, "score_s": time.time() - t1}
  return out


def summarise(scores: dict) -> dict:
  """AUROC and FPR95 (ID positive) of every OOD set against "id", and the group averages."""
  res = {"auroc": {}, "fpr95": {}}
  for n, s in scores.items():
    if n != "id":
      m = metrics.compute_all(scores["id"], s)
      res["auroc"][n], res["fpr95"][n] = m["auroc"], m["fpr95_id_positive"]
  for key in ("auroc", "fpr95"):
    res[key]["far"] = float(np.mean([res[key][f] for f in FAR]))
    res[key]["near"] = float(np.mean([res[key][f] for f in NEAR]))
  return res


def run_net(title: str, net, train: dict, sets: dict, stages: dict, head: bool) -> dict:
  t0 = time.time()
  arrays = {n: net_arrays(net, a["x"]) | a for n, a in sets.items()}
  train_arrays = net_arrays(net, train["x"]) | train
  stages[f"{title}: logits + pre_logits of every set"] = time.time() - t0
  acc = float(np.mean(arrays["id"]["logits"].argmax(1) == arrays["id"]["labels"]))
  rows = (detector_rows(None, shrinkage=0.01) if head   # ODIN's perturbation needs pixels
          else detector_rows(net))
  t0 = time.time()
  res = evaluate_rows(rows, train_arrays, arrays, jax.random.key(0))
  if head:
    res["ODIN (T only)"] = summarise({n: odin_t_only(a["logits"]) for n, a in arrays.items()})
  stages[f"{title}: detectors (fit + score)"] = time.time() - t0
  return {"accuracy": acc, "rows": res}


def lite0_features(stages: dict) -> tuple[dict, dict]:
  """Cached Lite0 features (the offline_cifar10 cache) of the train, test and OOD sets."""
  c = common.get_config()
  c.backbone, c.weights, c.resolution = "efficientnet_lite0", "imagenet", 224
  if _QUICK.value:
    c.weights, c.resolution = "none", 32
  c.data.limit = _LIMIT.value
  cache = features.FeatureCache(os.path.join(_FEATURES.value, "feature_cache"))
  bb = offline_features.load_backbone(c)
  src = lambda n: f"npz:{os.path.join(os.path.abspath(_DATA.value), n + '.npz')}"
  t0 = time.time()
  z = {n: offline_features.source_features(c, bb, src(f), cache)[0]
       for n, f in {"train": ID_TRAIN, "id": ID_TEST, **FAR, **NEAR}.items()}
  stages["Lite0 features (cache)"] = time.time() - t0
  return z.pop("train"), z


def dlsr_rows_from_report() -> dict:
  """DLSR rows (mean over seeds, k = 3) from the offline_cifar10 report, if it exists."""
  path = os.path.join(_FEATURES.value, "report", "efficientnet_lite0_exact", "results.json")
  if not os.path.exists(path) or _LIMIT.value:
    return {}
  m = json.load(open(path))["metrics"]
  out = {}
  for title, score in (("DLSR-MSE (k=3, 3 seeds)", "mse"), ("DLSR-MFsim (k=3, 3 seeds)", "mfsim")):
    r = m[score]["3"]
    res = {"auroc": {n: r[n]["auroc"] for n in [*FAR, *NEAR]},
           "fpr95": {n: r[n]["fpr95_id_positive"] for n in [*FAR, *NEAR]}}
    for key in ("auroc", "fpr95"):
      res[key]["far"] = float(np.mean([res[key][f] for f in FAR]))
      res[key]["near"] = float(np.mean([res[key][f] for f in NEAR]))
    out[title] = res
  return out


def run() -> dict:
  stages, out = {}, {}
  t0 = time.time()
  train_set = load_npz(_DATA.value, ID_TRAIN)
  sets = {"id": load_npz(_DATA.value, ID_TEST),
          **{k: load_npz(_DATA.value, v) for k, v in {**FAR, **NEAR}.items()}}
  stages["load images"] = time.time() - t0
  img = lambda d: {"x": d["images"], "images": d["images"], "labels": d["labels"]}
  for title, (name, fname) in NETS.items():
    if _QUICK.value and title != "ResNet-20":
      continue
    net = models.load(name, weights=None if _QUICK.value
                      else os.path.join(_WEIGHTS.value, fname))
    out[title] = run_net(title, net, img(train_set), {n: img(a) for n, a in sets.items()},
                         stages, head=False)
  z_train, z_sets = lite0_features(stages)
  head_nc = classifiers.net_config(model="linear_head", epochs=_HEAD_EPOCHS.value,
                                   learning_rate=_HEAD_LR.value,
                                   batch_size=min(128, len(train_set["labels"])))
  t0 = time.time()
  head = classifiers.train_classifier(
      classifiers.load_net(head_nc, num_features=z_train.shape[1]), z_train,
      train_set["labels"], head_nc, os.path.join(_WORKDIR.value, "lite0_linear_head"))
  stages["Lite0 linear head: train"] = time.time() - t0
  out["Lite0 + linear head"] = run_net(
      "Lite0 + linear head", head, {"x": z_train, "labels": train_set["labels"]},
      {n: {"x": z, "labels": sets[n]["labels"]} for n, z in z_sets.items()}, stages, head=True)
  t0 = time.time()
  feat = {"features": z_train}
  label_free = {"Mahalanobis (features)": detectors.make("mahalanobis", shrinkage=0.01),
                "KNN (features, k=50)": detectors.make("knn", k=50)}
  rows = evaluate_rows(label_free, feat, {n: {"features": z} for n, z in z_sets.items()},
                       jax.random.key(0))
  rows.update(dlsr_rows_from_report())
  out["Lite0 features, no labels"] = {"accuracy": None, "rows": rows}
  stages["Lite0 label-free detectors"] = time.time() - t0
  return {"nets": out, "stages_s": stages,
          "sizes": {n: len(a["labels"]) for n, a in {"train": train_set, **sets}.items()}}


def table(out: dict) -> str:
  sets = [*FAR, *NEAR]
  lines = ["| network | ID acc. | detector | " + " | ".join(sets)
           + " | **far avg** | near | FPR95 ID+ far | FPR95 ID+ near |",
           "|---|---:|---|" + "---:|" * (len(sets) + 4)]
  for net, r in out["nets"].items():
    acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}"
    for title, row in r["rows"].items():
      au, fp = row["auroc"], row["fpr95"]
      lines.append(f"| {net} | {acc} | {title} | " + " | ".join(f"{100 * au[s]:.2f}" for s in sets)
                   + f" | **{100 * au['far']:.2f}** | {100 * au['near']:.2f} | "
                   f"{100 * fp['far']:.2f} | {100 * fp['near']:.2f} |")
  return "\n".join(lines)


def quick_flags() -> None:
  """--quick: tiny settings, random data and nets, everything under --out_dir."""
  out = _OUT_DIR.value
  common_bench.set_quick_flags(out, {
      "workdir": os.path.join(out or "", "offline_classifiers"),
      "feature_workdir": os.path.join(out or "", "offline_cifar10"),
      "results_md": os.path.join(out or "", "RESULTS.md"), "head_epochs": 1, "knn_k": 5})
  if _DATA.value is None:
    flags.FLAGS.data_dir = common_bench.synthetic_npz_dir(
        os.path.join(out, "data"), [ID_TRAIN, ID_TEST, *FAR.values(), *NEAR.values()], n=96)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _QUICK.value:
    quick_flags()
  elif _DATA.value is None or _WEIGHTS.value is None:
    raise app.UsageError("--data_dir and --weights_dir are required (or --quick)")
  experiments_run.setup()
  t0 = time.time()
  out = run()
  total = time.time() - t0
  stages = "\n".join(f"| {k} | {v:.1f} |" for k, v in out["stages_s"].items())
  body = f"""## Offline classifier detectors next to DLSR (`benchmarks/offline_classifiers.py`)

Measured {time.strftime('%Y-%m-%d')} on {machine()}.
Command: `python -m benchmarks.offline_classifiers --data_dir=../shared/data --weights_dir=../shared/weights/cifar10_resnet`

- ID test {ID_TEST} ({out['sizes']['id']} pixel-exact images), fit set {ID_TRAIN} ({out['sizes']['train']} images with labels: class means, covariance, KNN bank); far OOD iSUN, MNIST, Fashion-MNIST, DTD; near CIFAR-100. Sizes: {out['sizes']}.
- ResNet-20 / ResNet-56: the published CIFAR-10 weights (`../shared/weights/cifar10_resnet`, BSD-2), ImageNet mean/std at 32x32, eval mode. ODIN T = {_T.value:g}, eps = {_EPS.value:g} (the ICLR defaults; not tuned here, no validation OOD set used).
- Lite0 + linear head: a linear classifier on the cached Lite0 features (224x224 input, 5 levels, C = 512; the offline_cifar10 cache) trained {_HEAD_EPOCHS.value} epochs with SGD Nesterov 0.9, lr {_HEAD_LR.value:g} cosine, wd 5e-4, batch 128 on the {out['sizes']['train']} labelled exact training images. Its ODIN row is temperature scaling only (eps = 0): the head's input is a feature vector, not pixels.
- Lite0 features, no labels: Mahalanobis (single Gaussian, shrinkage 0.01) and KNN (k = 50) on the same features, and the DLSR rows of the offline_cifar10 run (mean of 3 seeds, k = 3, 5,170 exact training images) when that report exists.
- AUROC (%) OOD positive; FPR95 ID+ = OOD accepted at 95 % ID kept. One run (no training seed except the head's, seed 0).

{table(out)}

### Wall time of each stage (seconds; total {total:.0f} s)

| stage | seconds |
|---|---:|
{stages}
"""
  write_section(_RESULTS.value, "offline_classifiers", body)
  print(body)
  logging.info("done in %.0f s", total)


if __name__ == "__main__":
  app.run(main)
