r"""Offline benchmark of the training-time OOD methods on a CIFAR-10 ResNet-20 (SPEC 4.4).

  python -m benchmarks.offline_objectives --data_dir=../shared/data \
      --weights_dir=../shared/weights/cifar10_resnet [--finetune_epochs=10]

Runs the real commands' code (`experiments.run.train`, then
`experiments.run.evaluate`) on `experiments/configs/objectives_cifar10.py`:
base = the published ResNet-20 (as loaded); plain (cross-entropy), OE (outliers: the
`intel_scenes` photos), UM, UMAP, OE from UM, the confidence branch and the GAN outliers, each
fine-tuned from base on one schedule (`--finetune_epochs`, lr 0.001 cosine; UMAP's scores lr
0.1). ID train = the 10,170 CIFAR-10 training images of `--data_dir` (5,170 exact + 5,000
JPEG), ID test = `cifar10_test_exact`; test OOD = iSUN, MNIST, Fashion-MNIST, DTD (far) and
the CIFAR-100 part (near); `--big_ood_limit` keeps the first N images of iSUN and MNIST (the
two big sets) to bound the CPU time. Every net goes through MSP, ODIN (T 1000, eps 0.0014),
Energy and class-conditional Mahalanobis (pre-logits), the confidence net also through its
confidence score. Nothing is tuned on the test sets. The workdir resumes: re-running skips
finished nets. Writes the `offline_objectives` section of RESULTS.md, the full results
(results.json / .md / .csv) in the workdir and the GAN's sample grid to benchmarks/logs/.

  python -m benchmarks.offline_objectives --quick --out_dir=/tmp/bq   # smoke run, seconds

--quick: tiny random sets (and outliers) in <out_dir>/data unless --data_dir is given, no
weights file (base: a random ResNet-20 trained 1 epoch), the nets base and plain only
(--nets to choose others), 1 fine-tuning epoch; the workdir is <out_dir>/offline_objectives,
the section goes to <out_dir>/RESULTS.md and the log JSON to <out_dir>, never to
benchmarks/RESULTS.md or benchmarks/logs/.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
from absl import app, flags, logging

from benchmarks import common as common_bench
from benchmarks.common import machine, write_section
from experiments import run
from experiments.configs import objectives_cifar10

_DATA = flags.DEFINE_string("data_dir", None, "Folder with the .npz data sets.")
_WEIGHTS = flags.DEFINE_string("weights_dir", None, "Folder with resnet20-12fca82f.th.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/dlsr_bench_objectives", "Work directory.")
_RESULTS = flags.DEFINE_string("results_md", os.path.join(os.path.dirname(__file__), "RESULTS.md"),
                               "Markdown file whose offline_objectives section is rewritten.")
_EPOCHS = flags.DEFINE_integer("finetune_epochs", 10, "Fine-tuning epochs of every method "
                               "(the OE recipe: 10).")
_BIG_LIMIT = flags.DEFINE_integer("big_ood_limit", 2000, "First N images of iSUN and MNIST "
                                  "(0 = all).")
_NETS = flags.DEFINE_list("nets", [], "Train / evaluate only these nets (and their init_from "
                          "ancestors); empty = all.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Rewrite the RESULTS.md section from "
                                  "benchmarks/logs/offline_objectives.json (same flags).")
_LIMIT = flags.DEFINE_integer("limit", 0, "First N images of every set (0 = all; smoke runs).")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke run in seconds (see the module docstring); "
                           "needs --out_dir.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "--quick: where everything is written.")

WEIGHTS = "resnet20-12fca82f.th"
ID_TRAIN, ID_TRAIN_JPG, ID_TEST = "cifar10_train_exact", "cifar10_train_jpg", "cifar10_test_exact"
OUTLIERS = "intel_scenes"
FAR = {"isun": "isun", "mnist": "mnist_test", "fashionmnist": "fashionmnist_test", "dtd": "dtd"}
NEAR = {"cifar100": "cifar100_test_exact"}
BIG = ("isun", "mnist")
NET_TITLES = {"base": "base (published ResNet-20)", "plain": "plain CE fine-tune",
              "oe": "OE", "um": "UM", "umap": "UMAP", "oe_um": "UM -> OE",
              "conf": "confidence branch", "gan": "GAN outliers"}
DETECTOR_TITLES = {"msp": "MSP", "odin": "ODIN", "energy": "Energy",
                   "mahalanobis": "Mahalanobis", "confidence": "Confidence"}


def _npz(name: str) -> str:
  path = os.path.join(os.path.abspath(_DATA.value), name + ".npz")
  if not os.path.exists(path):
    raise FileNotFoundError(f"benchmark data file {path} is missing")
  return path


def stage_data(workdir: str) -> dict[str, str]:
  """Writes the 10,170-image training set and the limited big OOD sets; {set: source}."""
  out_dir = os.path.join(workdir, "data")
  os.makedirs(out_dir, exist_ok=True)
  train = os.path.join(out_dir, "cifar10_train_10170.npz")
  if not os.path.exists(train):
    with np.load(_npz(ID_TRAIN)) as a, np.load(_npz(ID_TRAIN_JPG)) as b:
      np.savez(train + ".tmp.npz", images=np.concatenate([a["images"], b["images"]]),
               labels=np.concatenate([a["labels"], b["labels"]]))
    os.replace(train + ".tmp.npz", train)
  sources = {"train": f"npz:{train}", "id": f"npz:{_npz(ID_TEST)}"}
  for name, file in {**FAR, **NEAR}.items():
    path = _npz(file)
    if name in BIG and _BIG_LIMIT.value:
      path = os.path.join(out_dir, f"{file}_first{_BIG_LIMIT.value}.npz")
      if not os.path.exists(path):
        with np.load(_npz(file)) as f:
          np.savez(path + ".tmp.npz", images=f["images"][:_BIG_LIMIT.value],
                   labels=f["labels"][:_BIG_LIMIT.value])
        os.replace(path + ".tmp.npz", path)
    sources[name] = f"npz:{path}"
  return sources


def config(sources: dict[str, str]):
  weights = ("" if _QUICK.value else
             f"weights={os.path.join(os.path.abspath(_WEIGHTS.value), WEIGHTS)},")
  c = objectives_cifar10.get_config(f"{weights}outliers=npz:{_npz(OUTLIERS)}")
  if _QUICK.value:
    c.methods.base_epochs = 1   # no weights file: base is a random ResNet-20, 1 epoch
  c.data.train, c.data.test = sources["train"], sources["id"]
  c.data.ood = {n: sources[n] for n in [*FAR, *NEAR]}
  c.data.groups = {"far": ",".join(FAR), "near": ",".join(NEAR)}
  c.data.limit = _LIMIT.value
  c.methods.finetune_epochs = _EPOCHS.value
  c.eval.plots = False
  if _NETS.value:
    keep = set(_NETS.value)
    unknown = sorted(keep - set(c.nets))
    if unknown:
      raise ValueError(f"--nets {unknown}: configured nets are {sorted(c.nets)}")
    for n in list(keep):        # ancestors too
      while c.nets[n].get("init_from"):
        n = c.nets[n].init_from
        keep.add(n)
    c.nets = {n: b for n, b in c.nets.items() if n in keep}
    c.detectors = {r: b for r, b in c.detectors.items() if b["net"] in keep}
  return c


def table(results: dict, nets: list[str]) -> str:
  """One row per (net, detector): ID accuracy, AUROC per set, far / near, FPR95 both ways."""
  sets = [*FAR, *NEAR]
  lines = ["| net | ID acc. | detector | " + " | ".join(sets) + " | **far avg** | near "
           "| FPR95 ID+ far | FPR95 ID+ near | FPR95 OOD+ far | FPR95 OOD+ near |",
           "|---|---:|---|" + "---:|" * (len(sets) + 6)]
  for net in nets:
    acc = results["accuracy"].get(net)
    acc = "-" if acc is None else f"{100 * acc:.2f}"
    order = list(DETECTOR_TITLES)
    mine = sorted(((k, m) for k, m in results["rows"].items() if m["net"] == net),
                  key=lambda km: order.index(km[1]["detector"]))
    for key, meta in mine:
      m = results["metrics"][key]["-"]
      f = lambda s, k: f"{100 * m[s][k]:.2f}"
      lines.append(
          f"| {NET_TITLES.get(net, net)} | {acc} | {DETECTOR_TITLES.get(meta['detector'])} | "
          + " | ".join(f(s, "auroc") for s in sets)
          + f" | **{f('group:far', 'auroc')}** | {f('group:near', 'auroc')} | "
          f"{f('group:far', 'fpr95_id_positive')} | {f('group:near', 'fpr95_id_positive')} | "
          f"{f('group:far', 'fpr95_ood_positive')} | {f('group:near', 'fpr95_ood_positive')} |")
  return "\n".join(lines)


def summary(results: dict, nets: list[str]) -> str:
  """Each net against its base (conf, gan: the plain fine-tune on the same schedule)."""
  init = {"oe_um": "um", "conf": "plain", "gan": "plain"}   # conf, gan: the same schedule
  lines = ["| net | vs | MSP FPR95 ID+ far | Energy FPR95 ID+ far | ODIN FPR95 ID+ far | "
           "MSP AUROC far | Energy AUROC far |", "|---|---|---:|---:|---:|---:|---:|"]

  def get(net, det, metric, group="group:far"):
    for key, meta in results["rows"].items():
      if meta["net"] == net and meta["detector"] == det:
        return 100 * results["metrics"][key]["-"][group][metric]
    return float("nan")

  for net in nets:
    if net == "base":
      continue
    ref = init.get(net, "base")
    cells = []
    for det, metric in (("msp", "fpr95_id_positive"), ("energy", "fpr95_id_positive"),
                        ("odin", "fpr95_id_positive"), ("msp", "auroc"), ("energy", "auroc")):
      a, b = get(ref, det, metric), get(net, det, metric)
      cells.append(f"{a:.2f} -> **{b:.2f}**")
    lines.append(f"| {NET_TITLES.get(net, net)} | {NET_TITLES.get(ref, ref)} | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines)


def quick_flags() -> None:
  """--quick: tiny settings, random data, everything under --out_dir."""
  out = _OUT_DIR.value
  common_bench.set_quick_flags(out, {
      "workdir": os.path.join(out or "", "offline_objectives"),
      "results_md": os.path.join(out or "", "RESULTS.md"), "finetune_epochs": 1,
      "big_ood_limit": 48, "nets": _NETS.value or ["plain"]})
  if _DATA.value is None:
    flags.FLAGS.data_dir = common_bench.synthetic_npz_dir(
        os.path.join(out, "data"),
        [ID_TRAIN, ID_TRAIN_JPG, ID_TEST, *FAR.values(), *NEAR.values(), OUTLIERS], n=96)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _QUICK.value:
    quick_flags()
  elif _DATA.value is None or _WEIGHTS.value is None:
    raise app.UsageError("--data_dir and --weights_dir are required (or --quick)")
  run.setup()
  wd = _WORKDIR.value
  os.makedirs(wd, exist_ok=True)
  t0 = time.time()
  sources = stage_data(wd)
  c = config(sources)
  logs = _OUT_DIR.value if _QUICK.value else os.path.join(os.path.dirname(__file__), "logs")
  log_path = os.path.join(logs, "offline_objectives.json")
  if _REPORT_ONLY.value:     # rewrite the section from the saved log of a finished run
    with open(log_path) as f:
      saved = json.load(f)
    results, runs, stages, date = (saved["results"], saved["train_runs"], saved["stages_s"],
                                   saved.get("date", time.strftime('%Y-%m-%d')))
  else:
    stages = {"stage data": time.time() - t0}
    t0 = time.time()
    run.train(c, wd)
    stages["train every net (experiments.train)"] = time.time() - t0
    with open(os.path.join(wd, "train_runs.json")) as f:
      runs = json.load(f)
    t0 = time.time()
    results = run.evaluate(c, wd)
    stages["evaluate every net (experiments.evaluate)"] = time.time() - t0
    date = time.strftime('%Y-%m-%d')
    grid = os.path.join(wd, "gan", "gan_samples.png")
    if os.path.exists(grid):
      shutil.copy(grid, os.path.join(logs, "offline_objectives_gan_samples.png"))
    with open(log_path, "w") as f:
      json.dump({"results": results, "train_runs": runs, "stages_s": stages, "date": date},
                f, indent=1, default=str)
  nets = list(c.nets)
  train_times = "\n".join(
      f"| {NET_TITLES.get(n, n)} | {i.get('objective') or 'as loaded'} | {i['epochs']} | "
      f"{r['time']} | {i['seconds']:.1f} |"
      for r in runs for n, i in r["nets"].items())
  rows_t = results["timing"]["rows"]
  eval_times = "\n".join(f"| {r} | {t['fit_s']:.1f} | {t['score_s']:.1f} |"
                         for r, t in rows_t.items())
  sizes = {}
  for n, src in sources.items():
    with np.load(src.split(":", 1)[1]) as f:
      sizes[n] = min(len(f["labels"]), _LIMIT.value or len(f["labels"]))
  m = c.methods
  body = f"""## Training-time OOD methods on a CIFAR-10 ResNet-20 (`benchmarks/offline_objectives.py`)

Measured {date} on {machine()}.
Command: `python -m benchmarks.offline_objectives --data_dir=../shared/data --weights_dir=../shared/weights/cifar10_resnet --finetune_epochs={_EPOCHS.value} --big_ood_limit={_BIG_LIMIT.value}`
(the code of `experiments.train` + `experiments.evaluate` on `experiments/configs/objectives_cifar10.py`).

- ID train: 10,170 CIFAR-10 training images (5,170 exact + 5,000 JPEG q75), ID test {ID_TEST} (pixel-exact). Test OOD: far iSUN, MNIST, Fashion-MNIST, DTD; near the CIFAR-100 part{f"; iSUN and MNIST limited to their first {_BIG_LIMIT.value:,} images" if _BIG_LIMIT.value else ""}. Outliers for OE: `{OUTLIERS}` (4,012 scene photos, not a test set).
- base = the published ResNet-20 (`{WEIGHTS}`, BSD-2) as loaded. Every other net is **fine-tuned from base** (OE from UM: from the UM net) for **{m.finetune_epochs} epochs** at batch 128 ({10170 // 128} steps an epoch): SGD Nesterov 0.9, lr {m.finetune_lr:g} cosine, wd 5e-4, crop + flip; OE 256 outlier images a step, weight 0.5; UM / UMAP: b from a copy with 3.5 % of each layer's weights dropped (eval mode, the training set), UMAP keeps 80 % of each layer's weights, its scores trained at lr {m.umap_lr:g}; confidence branch lambda0 0.1, beta 0.3, hints on half the batch; GAN: DCGAN (nz 100, 64 filters) with Adam 2e-4 (0.5, 0.999), beta 0.1. "plain" is the cross-entropy fine-tune on the same schedule: the baseline of the confidence branch and the GAN. The OE recipe is 10 epochs{"" if m.finetune_epochs == 10 else f"; {m.finetune_epochs} here to fit the CPU time"}.
- Detectors: MSP, ODIN (T 1000, eps 0.0014: the ICLR defaults, not tuned), Energy (T 1), class-conditional Mahalanobis on the pre-logits (fit on the ID training set), and the confidence score on the confidence-branch net. Nothing was tuned on these test sets. One seed (0).
- AUROC (%) OOD positive; FPR95 ID+ = OOD accepted at 95 % of ID kept (OpenOOD); FPR95 OOD+ = ID rejected at 95 % of OOD caught. Per-set FPR95 and AUPR: `benchmarks/logs/offline_objectives.json`.

### Each method against its base (far average; confidence branch and GAN against the plain fine-tune on their schedule)

{summary(results, nets)}

### Every net through every detector

{table(results, nets)}

GAN samples after training (`benchmarks/logs/offline_objectives_gan_samples.png`).

### Time per stage (seconds)

| net | objective | epochs | recorded at (end of the call) | train / restore s |
|---|---|---:|---|---:|
{train_times}

| detector row | fit s (the first row of a net also pays its forward pass over the 10,170 training images) | score s (ID test + every OOD set) |
|---|---:|---:|
{eval_times}

Stages: {", ".join(f"{k} {v:.0f} s" for k, v in stages.items())}. Set sizes: {sizes}.
"""
  write_section(_RESULTS.value, "offline_objectives", body)
  print(body)
  logging.info("done")


if __name__ == "__main__":
  app.run(main)
