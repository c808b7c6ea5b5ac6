r"""Offline benchmark on real images: ID CIFAR-10 vs iSUN, MNIST, Fashion-MNIST, DTD, CIFAR-100.

  python -m benchmarks.offline_cifar10 --data_dir=../shared/data --workdir=/tmp/bench_c10

Pretrained EfficientNet-Lite0 (offline weights) at 224x224 -> cached multi-layer
features -> DLSR (MSE, MFsim, LR) at several k, the feature baselines
(Mahalanobis, KNN), the AutoEncoder ablation (LFDN without time embedding,
trained the same way) and the single-last-layer ablation, all on the same
features. Writes the full report (results.json/.md/.csv, scores.npz, PNGs) to
<workdir>/report and a summary section into benchmarks/RESULTS.md.

`--data_dir` holds `<name>.npz` files with `images` (uint8 NHWC) and `labels`;
nothing in the library depends on it.
"""

from __future__ import annotations

import copy
import os
import platform
import time

import jax
import numpy as np
from absl import app, flags, logging

from dlsr_jax.evaluation import metrics, report
from experiments import evaluation, launch, pipeline
from experiments.configs import common

_DATA = flags.DEFINE_string("data_dir", None, "Folder with the .npz data sets.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/dlsr_bench_cifar10", "Work directory.")
_RESULTS = flags.DEFINE_string("results_md", os.path.join(os.path.dirname(__file__), "RESULTS.md"),
                               "Markdown file whose offline_cifar10 section is rewritten.")
_EPOCHS = flags.DEFINE_integer("epochs", 40, "LFDN training epochs.")
_WIDTH = flags.DEFINE_integer("width", 512, "LFDN width W (E = W / 2).")
_BLOCKS = flags.DEFINE_integer("blocks", 4, "LFDN residual blocks N.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "LFDN training batch size (paper: 128).")
_KS = flags.DEFINE_list("ks", ["1", "2", "3", "5", "10"], "Noise levels k.")
_HEADLINE_K = flags.DEFINE_integer("headline_k", 3, "k of the DLSR rows in the main table.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Use only the first N images of every set (0 = all).")
_NORM = flags.DEFINE_enum("normalisation", "native", ["native", "imagenet", "inception"],
                          "Backbone input normalisation (native: (x - 127) / 128 for Lite0). "
                          "Not native: results go to a section of their own.")
_SWEEP_EPOCHS = flags.DEFINE_list("sweep_epochs", ["5", "10", "20", "40", "80"],
                                  "Training lengths of the DLSR-vs-epochs table (empty: skip).")
_SWEEP_SIZES = flags.DEFINE_list("sweep_sizes", ["512x4", "1024x8"],
                                 "LFDN sizes WxN of the DLSR-vs-epochs table.")
flags.mark_flags_as_required(["data_dir"])

ID_TRAIN, ID_TEST = "cifar10_train_exact", "cifar10_test_exact"
FAR = {"isun": "isun", "mnist": "mnist_test", "fashionmnist": "fashionmnist_test", "dtd": "dtd"}
NEAR = {"cifar100": "cifar100_test_exact"}
SECTION = "offline_cifar10"   # + "_<normalisation>" when not native


def make_config(data_dir: str):
  c = common.get_config()
  npz = lambda name: f"npz:{os.path.join(os.path.abspath(data_dir), name + '.npz')}"
  for name in [ID_TRAIN, ID_TEST, *FAR.values(), *NEAR.values()]:
    path = os.path.join(data_dir, name + ".npz")
    if not os.path.exists(path):
      raise FileNotFoundError(f"benchmark data file {path} is missing")
  c.backbone, c.weights, c.resolution = "efficientnet_lite0", "imagenet", 224
  c.normalisation = _NORM.value
  c.data.train, c.data.test = npz(ID_TRAIN), npz(ID_TEST)
  for k, v in {**FAR, **NEAR}.items():
    c.data.ood[k] = npz(v)
  c.data.groups.far = ",".join(FAR)
  c.data.groups.near = ",".join(NEAR)
  c.data.limit = _LIMIT.value
  c.model.width, c.model.embed_dim, c.model.num_blocks = _WIDTH.value, _WIDTH.value // 2, _BLOCKS.value
  c.train.num_epochs = _EPOCHS.value
  c.train.batch_size = _BATCH.value
  c.train.log_every_steps = 200
  c.train.checkpoint_every_epochs = 20
  c.eval.ks = tuple(int(k) for k in _KS.value)
  c.eval.batch_size = 512
  c.eval.k_strategy = "per_k"   # sum(k) network evaluations instead of K * max(k)
  return c


def ablation_configs(c, workdir: str) -> dict:
  """name -> (config, workdir) for the DLSR model and the two ablations."""
  shared_cache = os.path.join(workdir, "feature_cache")
  c.cache_dir = shared_cache
  ae = copy.deepcopy(c)
  ae.model.use_time_embedding = False
  last = copy.deepcopy(c)
  last.layers = (4,)   # the deepest level only (stride 32, 320 channels for Lite0)
  return {"dlsr": (c, os.path.join(workdir, "dlsr")), "ae": (ae, os.path.join(workdir, "ae")),
          "last": (last, os.path.join(workdir, "last"))}


def run(data_dir: str, workdir: str) -> tuple[dict, dict]:
  c = make_config(data_dir)
  models = ablation_configs(c, workdir)
  stages = {}
  t0 = time.time()
  backbone, sets, feat_timing = evaluation.load_feature_sets(c, models["dlsr"][1], with_train=True)
  stages["features (backbone, all sets)"] = time.time() - t0
  z_train = sets.pop("train")
  for name, (cfg, wd) in models.items():
    t0 = time.time()
    pipeline.run_train(cfg, wd)
    stages[f"train LFDN ({name})"] = time.time() - t0
  scores, timing = {}, {"features": feat_timing}
  for name, (cfg, wd) in models.items():
    t0 = time.time()
    if name == "last":
      _, cfg_sets, _ = evaluation.load_feature_sets(cfg, wd, backbone=backbone)
      bounds = pipeline.feature_boundaries(cfg, backbone)
    else:
      cfg_sets, bounds = sets, pipeline.feature_boundaries(cfg, backbone)
    s, timing[f"scoring_{name}"] = evaluation.dlsr_scores(cfg, wd, cfg_sets, bounds,
                                                          with_lr=(name == "dlsr"))
    prefix = "" if name == "dlsr" else f"{name}_"
    scores = evaluation.merge_scores(
        scores, {n: {prefix + t: v for t, v in d.items()} for n, d in s.items()})
    stages[f"score ({name}, {len(c.eval.ks)} k values)"] = time.time() - t0
  t0 = time.time()
  base, timing["baselines"] = evaluation.baseline_scores(c, z_train, sets)
  scores = evaluation.merge_scores(scores, base)
  stages["baselines (fit + score)"] = time.time() - t0
  sweep = []
  if _SWEEP_EPOCHS.value:
    t0 = time.time()
    sweep = epoch_sweep(c, workdir, sets, pipeline.feature_boundaries(c, backbone), z_train)
    stages["DLSR-vs-epochs sweep (train + score)"] = time.time() - t0
  settings = pipeline.settings_summary(c, backbone, pipeline.feature_boundaries(c, backbone))
  settings["data"] = (f"ID train {ID_TRAIN} ({z_train.shape[0]}), ID test {ID_TEST} "
                      f"({sets['id'].shape[0]}); far {list(FAR.values())}; near {list(NEAR.values())}")
  results = evaluation.assemble_results(c, scores, settings, timing)
  results["stages_s"] = {k: round(v, 1) for k, v in stages.items()}
  results["epoch_sweep"] = sweep
  evaluation.write_outputs(results, scores, os.path.join(workdir, "report"))
  return results, {n: s.shape[0] for n, s in sets.items()}


def epoch_sweep(c, workdir: str, sets: dict, bounds, z_train) -> list[dict]:
  """DLSR far/near AUROC at k = headline_k after each of `--sweep_epochs`, per LFDN size.

  Each size trains once: a longer run resumes from the shorter one's checkpoint,
  which gives the same state as training that long from scratch (constant lr,
  per-epoch shuffles).
  """
  epochs = sorted(int(e) for e in _SWEEP_EPOCHS.value)
  k = _HEADLINE_K.value
  rows = []
  for size in _SWEEP_SIZES.value:
    w, n = (int(v) for v in size.lower().split("x"))
    cfg = copy.deepcopy(c)
    cfg.model.width, cfg.model.embed_dim, cfg.model.num_blocks = w, w // 2, n
    cfg.eval.ks = (k,)
    wd = os.path.join(workdir, f"sweep_W{w}_N{n}")
    for e in epochs:
      cfg.train.num_epochs = e
      t0 = time.time()
      pipeline.write_config(cfg, wd)
      pipeline.train_on_features(cfg, wd, z_train)   # the cached features; no backbone
      t_train = time.time() - t0
      s, _ = evaluation.dlsr_scores(cfg, wd, sets, bounds, with_lr=False)
      steps = e * (z_train.shape[0] // cfg.train.batch_size)
      row = {"size": f"W={w} N={n}", "epochs": e, "steps": steps, "train_s": t_train}
      for score in ("mse", "mfsim"):
        au = {name: metrics.auroc(s["id"][score][0], s[name][score][0]) for name in sets
              if name != "id"}
        row[score] = (100 * np.mean([au[f] for f in FAR]), 100 * np.mean([au[f] for f in NEAR]))
      logging.info("sweep %s", row)
      rows.append(row)
  return rows


def sweep_table(rows: list[dict]) -> str:
  lines = ["| LFDN | epochs | steps | MFsim far | MSE far | MFsim near | MSE near "
           "| train s (increment) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['size']} | {r['epochs']} | {r['steps']} | {r['mfsim'][0]:.2f} | "
                 f"{r['mse'][0]:.2f} | {r['mfsim'][1]:.2f} | {r['mse'][1]:.2f} | "
                 f"{r['train_s']:.0f} |")
  return "\n".join(lines)


def main_table(results: dict, headline_k: int) -> str:
  """Rows: methods; columns: AUROC per OOD set, far/near averages, FPR95 (ID+) far average."""
  m = results["metrics"]
  k = str(headline_k)
  rows = [("DLSR-MSE", "mse", k), ("DLSR-MFsim", "mfsim", k), ("DLSR-LR (MSE)", "lr_mse", k),
          ("DLSR-LR (MFsim)", "lr_mfsim", k), ("AutoEncoder-MSE", "ae_mse", k),
          ("AutoEncoder-MFsim", "ae_mfsim", k), ("Last layer only-MSE", "last_mse", k),
          ("Last layer only-MFsim", "last_mfsim", k), ("Mahalanobis", "mahalanobis", "-"),
          ("KNN (cosine, k=50)", "knn", "-")]
  sets = list(FAR) + list(NEAR)
  head = ("| method | " + " | ".join(sets) + " | **far avg** | near (CIFAR-100) | "
          "FPR95 ID+ far avg |")
  lines = [head, "|---|" + "---:|" * (len(sets) + 3)]
  for title, score, kk in rows:
    if score not in m:
      continue
    r = m[score][kk]
    cells = [f"{100 * r[s]['auroc']:.2f}" for s in sets]
    cells += [f"**{100 * r['group:far']['auroc']:.2f}**", f"{100 * r['group:near']['auroc']:.2f}",
              f"{100 * r['group:far']['fpr95_id_positive']:.2f}"]
    lines.append(f"| {title} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def k_table(results: dict) -> str:
  m = results["metrics"]
  ks = [str(k) for k in results["ks"]]
  lines = ["| far-average AUROC | " + " | ".join(f"k={k}" for k in ks) + " |",
           "|---|" + "---:|" * len(ks)]
  for score in ("mse", "mfsim", "lr_mse", "lr_mfsim", "ae_mse", "ae_mfsim", "last_mse",
                "last_mfsim"):
    if score in m:
      lines.append(f"| {report.SCORE_TITLES.get(score, score)} | "
                   + " | ".join(f"{100 * m[score][k]['group:far']['auroc']:.2f}" for k in ks) + " |")
  return "\n".join(lines)


def machine() -> str:
  cpu = "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  import flax, optax, numpy
  return (f"{cpu}, {os.cpu_count()} cores, {jax.devices()[0].platform} "
          f"({jax.device_count()} device); Python {platform.python_version()}, "
          f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}, "
          f"numpy {numpy.__version__}")


def write_section(path: str, name: str, body: str) -> None:
  """Replaces (or appends) the `name` section of a shared Markdown file."""
  begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
  text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
  block = f"{begin}\n{body.rstrip()}\n{end}"
  if begin in text and end in text:
    text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
  else:
    text = text.rstrip() + "\n\n" + block + "\n"
  with open(path, "w") as f:
    f.write(text)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  launch.setup()
  t0 = time.time()
  results, sizes = run(_DATA.value, _WORKDIR.value)
  total = time.time() - t0
  s = results["settings"]
  stage_lines = "\n".join(f"| {k} | {v:.1f} |" for k, v in results["stages_s"].items())
  feat = results["timing"]["features"]
  rates = ", ".join(f"{n} {v['features_images_per_s']:.1f}" for n, v in feat.items()
                    if "features_images_per_s" in v) or "none (all sets were already cached)"
  sc = results["timing"]["scoring_dlsr"]
  norm_flag = "" if _NORM.value == "native" else f" --normalisation={_NORM.value}"
  title = "" if _NORM.value == "native" else f", ablation: Lite0 with {_NORM.value} input normalisation"
  body = f"""## Offline CIFAR-10 benchmark (`benchmarks/offline_cifar10.py`){title}

Measured {time.strftime('%Y-%m-%d')} on {machine()}.
Command: `python -m benchmarks.offline_cifar10 --data_dir=../shared/data --epochs={_EPOCHS.value} --width={_WIDTH.value} --blocks={_BLOCKS.value}{norm_flag}`

- Backbone: {s['backbone']} (ImageNet weights `{s['weights']}`), input {s['resolution']}x{s['resolution']}, input normalisation {s['normalisation']}, all 5 levels, GAP + per-layer z-score, C = {s['feature_dim']}.
- LFDN: {s['lfdn']}; training: {s['train']}; DDIM {s['ddim']}; LR orientation `{s['lr_orientation']}`.
- Data ({', '.join(f'{n} {v}' for n, v in sizes.items())} images): {s['data']}. All images are 32x32 uint8 from `../shared/data` (see its SOURCES.md; DTD is 10 of 47 classes, Fashion-MNIST a prefix).
- Baselines on the same cached features: Mahalanobis (single Gaussian, shrinkage 0.01), KNN (cosine, k = 50), fitted on the ID train features.

### AUROC (%) at k = {_HEADLINE_K.value} (far = iSUN, MNIST, Fashion-MNIST, DTD; near = CIFAR-100)

{main_table(results, _HEADLINE_K.value)}

### Far-average AUROC (%) against k

{k_table(results)}

### Wall time of each stage (seconds; total {total:.0f} s)

| stage | seconds |
|---|---:|
{stage_lines}

Feature extraction images/s (uncached sets): {rates}. DLSR scoring: {sc['images_per_s']:.0f} images/s
for {sc['num_k']} k values at once ({sc['num_images']} images, compile {sc['compile_s']:.1f} s excluded).
Full per-set tables with AUPR-In/Out and both FPR95 conventions: `<workdir>/report/results.md`.
"""
  if results["epoch_sweep"]:
    body += f"""
### DLSR against LFDN size and training length (AUROC %, k = {_HEADLINE_K.value})

Each size is trained once and scored after each length (a longer run resumes from the
shorter one's checkpoint, the same state as training that long from scratch).

{sweep_table(results["epoch_sweep"])}
"""
  section = SECTION if _NORM.value == "native" else f"{SECTION}_{_NORM.value}"
  write_section(_RESULTS.value, section, body)
  print(body)
  logging.info("benchmark done in %.0f s", total)


if __name__ == "__main__":
  app.run(main)
